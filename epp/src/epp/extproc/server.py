"""The gRPC servers of one EPP or BBR: ext_proc on the gRPC port, health on the health port.

The health service is also served on the gRPC port, so a proxy can health-check the ext_proc
cluster itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health_pb2_grpc

from epp.contract import join_host_port
from epp.extproc.stream import BodyBudget, Handler, StreamDriver
from epp.health import Health

_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_concurrent_streams", 10_000),
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    # Without BDP probing a stream's flow-control window stays at the lookahead, opened further
    # only for a message the servicer is reading: a body chunk comes off the connection once the
    # stream has reserved room for it (``BodyBudget``). With it, the window grew towards 1 GiB and
    # gRPC took whole bodies in ahead of the reads, outside any budget (measured: 40 held 15 MB
    # bodies put ~530 MB in gRPC's buffers of a slowed BBR with a 64 MiB budget). 256 KB, not
    # gRPC's 64 KB: a 200 KB prompt then needs no window update (through Envoy, 200 KB bodies at
    # 64 KB ran at 0.56-0.89x the rate of BDP probing; at 256 KB, 0.97-1.14x).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 256 << 10),
]


@dataclass(frozen=True, slots=True)
class BoundPorts:
    grpc: int
    health: int


class ExtProcServer:
    """Serves ext_proc through ``handler`` (a :class:`~epp.extproc.stream.Handler`, or a ready
    :class:`~epp.extproc.stream.StreamDriver`) and ``health``; ``start`` binds (port 0 = any free
    port) and returns the ports."""

    def __init__(self, handler: Handler[Any] | StreamDriver[Any], health: Health, *, bind: str,
                 grpc_port: int, health_port: int, credentials: grpc.ServerCredentials | None = None,
                 budget: BodyBudget | None = None) -> None:
        """``credentials``: serve ext_proc over TLS (health stays plaintext, as kubelet probes need);
        ``budget``: the request body bytes all streams may hold at once."""
        self.servicer = handler if isinstance(handler, StreamDriver) else StreamDriver(handler, budget)
        self._credentials = credentials
        self.health = health
        self._bind = bind
        self._grpc_port = grpc_port
        self._health_port = health_port
        self._servers: list[grpc.aio.Server] = []

    async def start(self) -> BoundPorts:
        main = grpc.aio.server(options=_OPTIONS)
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(self.servicer, main)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, main)
        grpc_port = _listen(main, self._bind, self._grpc_port, self._credentials)
        health_server = grpc.aio.server(options=_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, health_server)
        health_port = _listen(health_server, self._bind, self._health_port)
        await self.health.start()
        await main.start()
        await health_server.start()
        self._servers = [main, health_server]
        return BoundPorts(grpc_port, health_port)

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight streams finish for up to ``grace`` seconds, then stop."""
        await self.health.shutdown()
        servers, self._servers = self._servers, []
        for server in servers:
            await server.stop(grace)


def _listen(
    server: grpc.aio.Server, bind: str, port: int, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Add a port (TLS with ``credentials``, else plaintext); the bound port, or OSError naming it."""
    address = join_host_port(bind, port)
    try:
        if credentials is None:
            bound = int(server.add_insecure_port(address))
        else:
            bound = int(server.add_secure_port(address, credentials))
    except RuntimeError:  # grpcio raises this (older releases returned 0) when the bind fails
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or not available here")
    return bound
