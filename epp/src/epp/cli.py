"""The ``epp`` and ``bbr`` commands: flags → pydantic settings (``epp.settings``) → servers, until
SIGTERM/SIGINT.

Both log one JSON line ``{"message": "serving", "grpc_port": ..., "health_port": ...,
"metrics_port": ...}`` once bound (port 0 binds any free port), and on SIGTERM/SIGINT turn health
NOT_SERVING, let in-flight streams finish (up to ``--grace`` seconds) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import uvloop

from epp.answer_check import AnswerCheck
from epp.auth.check import KeyCheck
from epp.auth.keys import ApiKeyError
from epp.auth.store import KeyStore
from epp.auth.watch import KeyFile, KeyListStatus
from epp.contract import DEFAULT_PROFILE
from epp.datastore import Datastore, DatastoreEvent, EndpointRemoved
from epp.discovery import DiscoveryRunner, build_source
from epp.extproc import ExtProcServer
from epp.extproc.bbr import BodyBasedRouter
from epp.extproc.picker import EndpointPicker
from epp.extproc.stream import BodyBudget, buffered_budget
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.flowcontrol.queue import FlowController
from epp.health import Health
from epp.memory import Trimmer, freeze_startup_heap, malloc_trim, return_large_blocks
from epp.peers import PeerRun, read_key, start_peers
from epp.peers.directory import parse_peers
from epp.requestcontrol.cached_tokens import CachedTokensFeedback
from epp.requestcontrol.flow_control import FlowControlAdmission
from epp.scheduling import (
    ConfigError,
    EndpointPickerConfig,
    SaturationDetector,
    Scheduler,
    load_config,
    load_profile,
)
from epp.settings import (
    BbrSettings,
    EppSettings,
    ServerSettings,
    bbr_parser,
    epp_parser,
    parse_bbr_args,
    parse_epp_args,
)
from epp.telemetry import Telemetry, configure_logging

_log = logging.getLogger("epp.cli")

__all__ = [
    "BbrSettings",
    "EppSettings",
    "ServerSettings",
    "ServingPorts",
    "bbr_main",
    "bbr_parser",
    "epp_main",
    "epp_parser",
    "parse_bbr_args",
    "parse_epp_args",
    "serve_bbr",
    "serve_epp",
]


def _scheduler_config(settings: EppSettings) -> EndpointPickerConfig:
    if settings.config_file is not None:
        return load_config(settings.config_file)
    return load_profile(settings.profile or DEFAULT_PROFILE)


class _EppHealth:
    """Ready once the datastore is (its first sync done and, unless the pool is empty, an endpoint
    routable), then latched; NOT_SERVING everywhere, liveness included, once discovery has died.
    Readiness follows the datastore's events: no polling."""

    def __init__(self, datastore: Datastore, health: Health, runner: DiscoveryRunner) -> None:
        self._datastore = datastore
        self._health = health
        self._runner = runner
        self._ready = asyncio.Event()
        if datastore.ready:
            self._ready.set()
        datastore.subscribe(self._on_event)

    def _on_event(self, event: DatastoreEvent) -> None:
        if not self._ready.is_set() and self._datastore.ready:
            self._ready.set()

    async def _become_ready(self) -> None:
        await self._ready.wait()
        await self._health.set_ready(True)
        models = self._datastore.served_models()
        _log.info("ready", extra={"endpoints": len(self._datastore), "models": models})

    async def run(self) -> None:
        ready = asyncio.ensure_future(self._become_ready())
        try:
            await self._runner.failed.wait()
            _log.error("discovery died; health is NOT_SERVING", extra={"error": str(self._runner.failure)})
            await self._health.fail()
        finally:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready


@dataclass(frozen=True, slots=True)
class ServingPorts:
    """The ports a server bound (useful when the settings asked for port 0)."""

    grpc: int
    health: int
    metrics: int


async def serve_epp(
    settings: EppSettings, stop: asyncio.Event, bound: asyncio.Future[ServingPorts] | None = None
) -> None:
    """Run the EPP until ``stop`` is set; ``bound`` gets the ports once serving."""
    config = _scheduler_config(settings)
    scheduler = Scheduler.from_config(config, replicas=settings.replicas)
    detector = SaturationDetector.from_config(config)
    datastore = Datastore(pool_models=settings.pool_models)
    telemetry = Telemetry("epp", datastore, pool=settings.pool_name or "")

    def on_error(kind: str) -> None:
        telemetry.discovery_errors.labels(kind).inc()

    source = build_source(
        datastore,
        pool_name=settings.pool_name,
        pool_namespace=settings.pool_namespace,
        endpoints_file=settings.endpoints_file,
        endpoints=settings.endpoints,
        on_error=on_error,
    )
    health = Health()
    async with aiohttp.ClientSession() as session, DiscoveryRunner(
        datastore, source, session, settings.metrics_interval, settings.models_interval,
        metrics_timeout=settings.metrics_timeout, on_error=on_error, ejection=settings.ejection,
        on_eject=telemetry.ejected,
    ) as runner:
        telemetry.count_scrapes(lambda: runner.scraper.scrapes)
        flow_control = config.flow_control_config()
        admission: FlowControlAdmission | None = None
        if flow_control is not None:
            metrics = FlowControlMetrics(telemetry.registry, settings.pool_name or "default")
            admission = FlowControlAdmission(
                FlowController(flow_control, datastore, detector, metrics), settings.objectives
            )
        feedback_rate = settings.cached_tokens_feedback_rate
        feedback = (
            CachedTokensFeedback(feedback_rate, telemetry)
            if feedback_rate and scheduler.learn_from_cached_tokens() else None
        )
        picker = EndpointPicker(
            datastore,
            scheduler,
            telemetry,
            saturation=detector,
            # With the flow-control queue a saturated pool makes requests wait, not fail at once.
            shed_on_saturation=settings.shed_on_saturation and admission is None,
            plugins=None if admission is None else admission.plugins(),
            refresher=runner,
            outliers=runner.ejector,
            max_body_bytes=settings.max_body_bytes,
            routes=settings.routes,
            answer_check=AnswerCheck(rate, telemetry) if (rate := settings.answer_check_rate) else None,
            cached_tokens=feedback,
            follow_answers_up_to=settings.follow_answers_up_to,
        )

        def on_endpoint(event: DatastoreEvent) -> None:
            if isinstance(event, EndpointRemoved):
                scheduler.forget(event.endpoint.address)
                if admission is not None:
                    admission.controller.forget(event.endpoint.address)

        datastore.subscribe(on_endpoint)
        server = ExtProcServer(picker, health, bind=settings.bind, grpc_port=settings.grpc_port,
                               health_port=settings.health_port, credentials=settings.credentials("epp"),
                               budget=_body_budget(settings))
        peers = await _start_peers(settings, scheduler, datastore, telemetry, on_error)
        try:
            await _serve(server, telemetry, settings, stop, _EppHealth(datastore, health, runner).run, bound)
        finally:
            if peers is not None:
                await peers.close()
            if admission is not None:
                await admission.controller.close()


async def _start_peers(
    settings: EppSettings, scheduler: Scheduler, datastore: Datastore, telemetry: Telemetry,
    on_error: Callable[[str], None],
) -> PeerRun | None:
    """The replicas' pick sharing (``epp.peers``) when ``--peers`` is set; None otherwise."""
    if settings.peers is None or settings.peer_port is None or settings.peer_key_file is None:
        return None
    with _naming(EppSettings.flag("peer_key_file"), settings.peer_key_file, ValueError):
        key = read_key(settings.peer_key_file)
    run = await start_peers(
        scheduler.shared, key, lambda address: datastore.get(address) is not None, bind=settings.bind,
        port=settings.peer_port, peers=parse_peers(settings.peers), registry=telemetry.registry,
        on_error=lambda: on_error("peers"),
    )
    _log.info("sharing picks with peers", extra={"peer_port": run.port, "plugins": sorted(scheduler.shared)})
    return run


async def serve_bbr(
    settings: BbrSettings, stop: asyncio.Event, bound: asyncio.Future[ServingPorts] | None = None
) -> None:
    """Run the BBR until ``stop`` is set; ``bound`` gets the ports once serving."""
    telemetry = Telemetry("bbr")
    key_file = _key_file(settings, telemetry)
    keys = KeyCheck(key_file.store) if key_file is not None else None
    router = BodyBasedRouter(telemetry, served_models=settings.served_models, adapters=settings.adapters,
                             max_body_bytes=settings.max_body_bytes, keys=keys, routes=settings.routes)
    health = Health()
    server = ExtProcServer(router, health, bind=settings.bind, grpc_port=settings.grpc_port,
                           health_port=settings.health_port, credentials=settings.credentials("bbr"),
                           budget=_body_budget(settings))

    async def ready_then_watch_keys() -> None:
        await health.set_ready(True)
        if key_file is not None:
            await key_file.watch()

    await _serve(server, telemetry, settings, stop, ready_then_watch_keys, bound)


@contextlib.contextmanager
def _naming(flag: str, path: Path, invalid: type[Exception]) -> Iterator[None]:
    """A file a flag names that cannot be read (``OSError``) or is ``invalid`` (as ``ValueError``):
    the error names the flag and the path, never the file's contents."""
    try:
        yield
    except invalid as error:
        raise ValueError(f"{flag} {path}: {error}") from None
    except OSError as error:
        raise OSError(f"{flag} {path}: {error.strerror or error}") from None


def _key_file(settings: BbrSettings, telemetry: Telemetry) -> KeyFile | None:
    """The key list, loaded now: a missing or invalid file stops the BBR (``ValueError``/``OSError``)."""
    path = settings.api_keys_file
    if path is None:
        return None
    store = KeyStore(share=settings.limit_share, window=settings.rate_limit_window)

    def on_reload(status: KeyListStatus) -> None:
        telemetry.key_reloads.labels("error" if status.degraded else "ok").inc()
        telemetry.key_list_degraded.set(1 if status.degraded else 0)
        telemetry.key_list_keys.set(status.keys)

    with _naming(BbrSettings.flag("api_keys_file"), path, ApiKeyError):
        key_file = KeyFile(path, store, served_models=settings.known_models(),
                           interval=settings.api_keys_poll_interval, on_reload=on_reload)
    _log.info("API keys loaded", extra={"path": str(path), "keys": len(store), "limit_share": store.share})
    telemetry.key_list_keys.set(len(store))
    return key_file


async def _serve(
    server: ExtProcServer,
    telemetry: Telemetry,
    settings: ServerSettings,
    stop: asyncio.Event,
    readiness: Callable[[], Coroutine[Any, Any, None]],
    bound: asyncio.Future[ServingPorts] | None,
) -> None:
    """Bind (OSError naming the address on failure), serve and run ``readiness``, stop on ``stop``."""
    ports = await server.start()
    try:
        metrics_port = telemetry.serve(settings.bind, settings.metrics_port)
    except OSError:
        await server.stop(0)
        raise
    _log.info(
        "serving", extra={"grpc_port": ports.grpc, "health_port": ports.health, "metrics_port": metrics_port}
    )
    ready = asyncio.ensure_future(readiness())
    if bound is not None and not bound.done():
        bound.set_result(ServingPorts(ports.grpc, ports.health, metrics_port))
    try:
        await stop.wait()
    finally:
        _log.info("shutting down", extra={"grace_seconds": settings.grace})
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
        await server.stop(settings.grace)
        telemetry.close()


Settings = TypeVar("Settings", bound=ServerSettings)


def _body_budget(settings: ServerSettings) -> BodyBudget:
    """The server's body budget; the allocator's free memory goes back to the system after a burst."""
    return BodyBudget(buffered_budget(settings.max_buffered_bytes), on_release=Trimmer(malloc_trim()))


def _freeze_once_serving(bound: asyncio.Future[ServingPorts]) -> None:
    """Once the server serves, what start-up built is out of the cyclic collector's walks."""
    if not bound.cancelled() and bound.exception() is None:
        frozen = freeze_startup_heap()
        _log.debug("start-up heap frozen", extra={"objects": frozen})


Serve = Callable[[Settings, asyncio.Event, asyncio.Future[ServingPorts]], Awaitable[None]]


def _run(serve: Serve[Settings], settings: Settings) -> int:
    configure_logging(settings.log_level)
    return_large_blocks()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        bound: asyncio.Future[ServingPorts] = loop.create_future()
        bound.add_done_callback(_freeze_once_serving)
        await serve(settings, stop, bound)

    try:
        if settings.event_loop == "uvloop":
            uvloop.run(main())
        else:
            asyncio.run(main())
    except (ConfigError, ValueError, OSError) as error:
        _log.error("cannot start", extra={"error": str(error)})
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def epp_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``epp``."""
    return _run(serve_epp, parse_epp_args(argv))


def bbr_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``bbr``."""
    return _run(serve_bbr, parse_bbr_args(argv))
