"""gRPC health (grpc.health.v1) for the EPP and the BBR.

Services: ``liveness`` (serving while the process runs and can do its job), ``readiness`` and
``envoy.service.ext_proc.v3.ExternalProcessor`` (serving once the server can route: for the EPP,
after the first discovery sync and model discovery), and the overall "" service mirroring readiness.
``fail`` turns every one NOT_SERVING for good (the EPP's discovery died: it can no longer see its
pool, and a liveness probe must get it restarted).
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

LIVENESS = "liveness"
READINESS = "readiness"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
_READY_SERVICES = ("", READINESS, EXT_PROC_SERVICE)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Owns the health servicer and flips readiness."""

    def __init__(self) -> None:
        self.servicer = HealthServicer()
        self.ready = False
        self.failed = False

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, _SERVING)
        for service in _READY_SERVICES:
            await self.servicer.set(service, _NOT_SERVING)

    async def set_ready(self, ready: bool) -> None:
        if ready == self.ready or self.failed:
            return
        self.ready = ready
        for service in _READY_SERVICES:
            await self.servicer.set(service, _SERVING if ready else _NOT_SERVING)

    async def fail(self) -> None:
        """NOT_SERVING everywhere, liveness included; later ``set_ready`` calls change nothing."""
        self.failed = True
        self.ready = False
        for service in (LIVENESS, *_READY_SERVICES):
            await self.servicer.set(service, _NOT_SERVING)

    async def shutdown(self) -> None:
        """Everything NOT_SERVING; further changes are ignored."""
        self.ready = False
        await self.servicer.enter_graceful_shutdown()
