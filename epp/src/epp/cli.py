"""The ``epp`` and ``bbr`` commands: flags → pydantic settings → servers, until SIGTERM/SIGINT.

The settings models hold every default; the flags have none of their own (an absent flag is left
to the model), and their help shows the model's default.

Both log one JSON line ``{"message": "serving", "grpc_port": ..., "health_port": ...,
"metrics_port": ...}`` once bound (port 0 binds any free port), and on SIGTERM/SIGINT turn health
NOT_SERVING, let in-flight streams finish (up to ``--grace`` seconds) and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import grpc
import uvloop
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from epp.answer_check import DEFAULT_ANSWER_CHECK_RATE, AnswerCheck
from epp.auth.check import KeyCheck
from epp.auth.keys import ApiKeyError
from epp.auth.limits import DEFAULT_WINDOW
from epp.auth.store import KeyStore
from epp.auth.watch import DEFAULT_POLL_INTERVAL, KeyFile
from epp.contract import (
    BBR_GRPC_PORT,
    BBR_HEALTH_PORT,
    DEFAULT_PROFILE,
    EPP_GRPC_PORT,
    EPP_HEALTH_PORT,
    METRICS_PORT,
    PROFILE_NAMES,
)
from epp.datastore import Datastore, Endpoint
from epp.discovery import DiscoveryRunner, EjectionPolicy, build_source
from epp.extproc import BodyBasedRouter, EndpointPicker, ExtProcServer
from epp.extproc.stream import DEFAULT_MAX_BODY_BYTES
from epp.health import Health
from epp.scheduling import (
    ConfigError,
    EndpointPickerConfig,
    SaturationDetector,
    Scheduler,
    load_config,
    load_profile,
)
from epp.telemetry import Telemetry, configure_logging
from epp.tls import server_credentials

_log = logging.getLogger("epp.cli")

LogLevel = Literal["debug", "info", "warning", "error"]
# uvloop (libuv) runs the servers' event loop with measurably less CPU per request than asyncio's
# default loop (``make bench-overhead`` prints the ratio); ``asyncio`` is the fallback.
EventLoop = Literal["uvloop", "asyncio"]


class ServerSettings(BaseModel):
    """Ports and logging common to both commands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: str = "0.0.0.0"
    grpc_port: int = Field(ge=0, le=65535)
    health_port: int = Field(ge=0, le=65535)
    metrics_port: int = Field(default=METRICS_PORT, ge=0, le=65535)
    log_level: LogLevel = "info"
    event_loop: EventLoop = "uvloop"
    grace: float = Field(default=5.0, ge=0, description="seconds in-flight streams get on shutdown")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0, description="larger bodies get a 413")
    # ext_proc over TLS, as Google Cloud load balancers call it (HTTP2 backends); the certificate
    # from cert_path (tls.crt, tls.key), else self-signed at startup.
    secure_serving: bool = False
    cert_path: Path | None = None

    @model_validator(mode="after")
    def _cert_path_needs_secure_serving(self) -> ServerSettings:
        if self.cert_path is not None and not self.secure_serving:
            raise ValueError("--cert-path only applies with --secure-serving")
        return self

    def credentials(self, common_name: str) -> grpc.ServerCredentials | None:
        return server_credentials(self.cert_path, common_name) if self.secure_serving else None


class EppSettings(ServerSettings):
    grpc_port: int = Field(default=EPP_GRPC_PORT, ge=0, le=65535)
    health_port: int = Field(default=EPP_HEALTH_PORT, ge=0, le=65535)
    config_file: Path | None = None
    profile: str | None = None
    pool_name: str | None = None
    pool_namespace: str | None = None
    endpoints_file: Path | None = None
    endpoints: str | None = None
    metrics_interval: float = Field(default=0.05, gt=0)
    metrics_timeout: float = Field(default=0.5, gt=0)
    ejection: EjectionPolicy = Field(default_factory=EjectionPolicy)
    models_interval: float = Field(default=10.0, gt=0)
    shed_on_saturation: bool = False
    # Models this pool is configured to serve: with no ready pod for one of them (say, scaled to
    # zero) a request gets 503, not the 404 of a model the pool has never heard of.
    pool_models: tuple[str, ...] = ()
    # Share of routed answers whose model is checked against the request's (epp.answer_check).
    answer_check_rate: float = Field(default=DEFAULT_ANSWER_CHECK_RATE, ge=0, le=1)

    @model_validator(mode="after")
    def _one_source_and_one_config(self) -> EppSettings:
        if self.config_file is not None and self.profile is not None:
            raise ValueError("--config-file and --profile are mutually exclusive")
        sources = [s for s in (self.pool_name, self.endpoints_file, self.endpoints) if s]
        if len(sources) != 1:
            raise ValueError(
                "exactly one endpoint source is needed: --pool-name, --endpoints-file or --endpoints"
            )
        if self.pool_namespace and not self.pool_name:
            raise ValueError("--pool-namespace only applies with --pool-name")
        return self


class BbrSettings(ServerSettings):
    grpc_port: int = Field(default=BBR_GRPC_PORT, ge=0, le=65535)
    health_port: int = Field(default=BBR_HEALTH_PORT, ge=0, le=65535)
    served_models: tuple[str, ...] | None = None
    adapters: dict[str, str] = Field(default_factory=dict)
    # The key list (epp.auth.keys format), re-read when it changes; None: the gateway is open.
    api_keys_file: Path | None = None
    # The front door's replica count: this replica allows ceil(requestsPerMinute / N) per key.
    limit_share: int = Field(default=1, ge=1)
    # Not flags: the rate limit window and how often the key file is polled (tests shorten them).
    rate_limit_window: float = Field(default=DEFAULT_WINDOW, gt=0)
    api_keys_poll_interval: float = Field(default=DEFAULT_POLL_INTERVAL, gt=0)

    def known_models(self) -> set[str] | None:
        """The models a key's list may name: the served ones and the adapters (None: not known)."""
        if self.served_models is None:
            return None
        return set(self.served_models).union(self.adapters)


def _with_default(settings: type[BaseModel], field: str, text: str) -> str:
    """``text``, followed by the settings model's default for ``field`` when it has a telling one."""
    default = settings.model_fields[field].default
    if default is None or isinstance(default, bool) or default == ():
        return text
    return f"{text} (default: {default})"


def _parser(prog: str, description: str, settings: type[ServerSettings]) -> argparse.ArgumentParser:
    """A parser whose flags leave every default to ``settings``, with the flags both commands share."""
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)

    def flag(name: str, text: str, **options: Any) -> None:
        field = name.removeprefix("--").replace("-", "_")
        parser.add_argument(name, help=_with_default(settings, field, text), **options)

    flag("--grpc-port", "ext_proc gRPC port (0: any)", type=int)
    flag("--health-port", "gRPC health port", type=int)
    flag("--metrics-port", "Prometheus /metrics port", type=int)
    flag("--bind", "address to listen on")
    flag("--log-level", "log level", choices=["debug", "info", "warning", "error"])
    flag("--event-loop", "event loop: uvloop or asyncio's own", choices=["uvloop", "asyncio"])
    flag("--grace", "seconds in-flight streams get on shutdown", type=float)
    flag("--max-body-bytes", "refuse larger request bodies with a 413", type=int)
    flag("--secure-serving", "serve ext_proc over TLS (what Google Cloud load balancers expect)",
         action="store_true")
    flag("--cert-path", "folder with tls.crt and tls.key (default: a self-signed certificate)", type=Path)
    return parser


def epp_parser() -> argparse.ArgumentParser:
    parser = _parser("epp", "Model-aware Endpoint Picker (ext_proc).", EppSettings)

    def flag(name: str, text: str, *, group: Any = parser, **options: Any) -> None:
        field = name.removeprefix("--").replace("-", "_")
        group.add_argument(name, help=_with_default(EppSettings, field, text), **options)

    config = parser.add_mutually_exclusive_group()
    flag("--config-file", "EndpointPickerConfig YAML", group=config, type=Path)
    flag("--profile", f"a shipped profile: {', '.join(PROFILE_NAMES)} (default: {DEFAULT_PROFILE})",
         group=config)
    flag("--pool-name", "watch this InferencePool and its pods (Kubernetes)")
    flag("--pool-namespace", "the InferencePool's namespace (default: this pod's)")
    flag("--endpoints-file", "static endpoints YAML, re-read on change", type=Path)
    flag("--endpoints", "static endpoints: IP:PORT[,IP:PORT...] (IPv6 as [::1]:8000)")
    flag("--metrics-interval", "seconds between scrapes", type=float)
    flag("--metrics-timeout", "seconds a scrape may take before it counts as failed", type=float)
    policy = EjectionPolicy()
    for name, field, text in _EJECTION_FLAGS:
        parser.add_argument(name, type=type(getattr(policy, field)), dest=f"ejection.{field}",
                            help=f"{text} (default: {getattr(policy, field)})")
    flag("--models-interval", "seconds between model probes", type=float)
    flag("--shed-on-saturation", "429 when the pool is saturated", action="store_true")
    flag("--pool-models", "NAME[,NAME...]: models the pool is configured to serve "
         "(503 rather than 404 while none of their pods is ready)")
    flag("--answer-check-rate", "share (0-1) of answers whose model is checked against the request's; "
         "0: off", type=float)
    return parser


_EJECTION_FLAGS = (
    ("--eject-after-failures", "consecutive_failures", "failed scrapes in a row that take an endpoint out "
     "of rotation"),
    ("--eject-after-refused", "consecutive_connect_failures", "requests in a row whose connection the "
     "endpoint refused that take it out of rotation"),
    ("--ejection-seconds", "base_ejection", "seconds an ejected endpoint stays out at least (doubled "
     "while it keeps failing)"),
    ("--max-ejection-seconds", "max_ejection", "seconds an ejected endpoint stays out at most"),
)


def bbr_parser() -> argparse.ArgumentParser:
    parser = _parser("bbr", "Body-Based Router (Envoy ext_proc).", BbrSettings)
    parser.add_argument("--served-models", help="NAME[,NAME...]: refuse other models (400/404) and answer "
                        "GET /v1/models")
    parser.add_argument("--adapter", action="append", metavar="ADAPTER=BASE",
                        help="a LoRA adapter and its base model (repeatable)")
    parser.add_argument("--api-keys-file", type=Path, help="the API key list (YAML/JSON), re-read on "
                        "change: every request then needs a key (default: the gateway is open)")
    parser.add_argument("--limit-share", type=int, metavar="N",
                        help=_with_default(BbrSettings, "limit_share", "the front door runs N replicas: this "
                                           "one allows ceil(requestsPerMinute / N) of each key's requests"))
    return parser


def parse_epp_args(argv: Sequence[str] | None = None) -> EppSettings:
    parser = epp_parser()
    values = vars(parser.parse_args(argv))
    pool_models = values.pop("pool_models", None)
    if pool_models is not None:
        values["pool_models"] = _model_names(parser, "--pool-models", pool_models)
    ejection = {key.split(".", 1)[1]: values.pop(key) for key in list(values) if key.startswith("ejection.")}
    if ejection:
        values["ejection"] = ejection
    try:
        return EppSettings.model_validate(values)
    except ValidationError as error:
        parser.error(_validation_message(error))


def parse_bbr_args(argv: Sequence[str] | None = None) -> BbrSettings:
    parser = bbr_parser()
    values = vars(parser.parse_args(argv))
    served = values.pop("served_models", None)
    adapters: dict[str, str] = {}
    for item in values.pop("adapter", []):
        adapter, sep, base = item.partition("=")
        if not sep or not adapter.strip() or not base.strip():
            parser.error(f"--adapter {item!r}: expected ADAPTER=BASE")
        adapters[adapter.strip()] = base.strip()
    if served is not None:
        values["served_models"] = _model_names(parser, "--served-models", served)
    values["adapters"] = adapters
    try:
        return BbrSettings.model_validate(values)
    except ValidationError as error:
        parser.error(_validation_message(error))


def _model_names(parser: argparse.ArgumentParser, flag: str, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        parser.error(f"{flag}: give at least one model name")
    return names


def _validation_message(error: ValidationError) -> str:
    parts = []
    flags = {f"ejection.{field}": name.removeprefix("--") for name, field, _ in _EJECTION_FLAGS}
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        where = flags.get(where, where)
        flag = f"--{where.replace('_', '-')}: " if where else ""
        parts.append(f"{flag}{item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _scheduler_config(settings: EppSettings) -> EndpointPickerConfig:
    if settings.config_file is not None:
        return load_config(settings.config_file)
    return load_profile(settings.profile or DEFAULT_PROFILE)


class _EppHealth:
    """Ready once the first discovery sync is done and the first models are known (then latched);
    NOT_SERVING everywhere, liveness included, once discovery has died."""

    def __init__(self, datastore: Datastore, health: Health, runner: DiscoveryRunner) -> None:
        self._datastore = datastore
        self._health = health
        self._runner = runner

    def ready(self) -> bool:
        datastore = self._datastore
        return datastore.synced and (len(datastore) == 0 or bool(datastore.view.endpoints))

    async def _become_ready(self) -> None:
        # Polled: the datastore notifies membership changes, not sync or model discovery.
        while not self.ready():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
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
    scheduler = Scheduler.from_config(config)
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
        picker = EndpointPicker(
            datastore,
            scheduler,
            telemetry,
            saturation=detector,
            shed_on_saturation=settings.shed_on_saturation,
            refresher=runner,
            outliers=runner.ejector,
            max_body_bytes=settings.max_body_bytes,
            answer_check=AnswerCheck(rate, telemetry) if (rate := settings.answer_check_rate) else None,
        )

        def on_endpoint(address: str, endpoint: Endpoint | None) -> None:
            if endpoint is None:
                scheduler.forget(address)

        datastore.subscribe(on_endpoint)
        server = ExtProcServer(picker, health, bind=settings.bind, grpc_port=settings.grpc_port,
                               health_port=settings.health_port, credentials=settings.credentials("epp"))
        await _serve(server, telemetry, settings, stop, _EppHealth(datastore, health, runner).run, bound)


async def serve_bbr(
    settings: BbrSettings, stop: asyncio.Event, bound: asyncio.Future[ServingPorts] | None = None
) -> None:
    """Run the BBR until ``stop`` is set; ``bound`` gets the ports once serving."""
    telemetry = Telemetry("bbr")
    key_file = _key_file(settings, telemetry)
    keys = KeyCheck(key_file.store) if key_file is not None else None
    router = BodyBasedRouter(telemetry, served_models=settings.served_models, adapters=settings.adapters,
                             max_body_bytes=settings.max_body_bytes, keys=keys)
    health = Health()
    server = ExtProcServer(router, health, bind=settings.bind, grpc_port=settings.grpc_port,
                           health_port=settings.health_port, credentials=settings.credentials("bbr"))

    async def ready_then_watch_keys() -> None:
        await health.set_ready(True)
        if key_file is not None:
            await key_file.watch()

    await _serve(server, telemetry, settings, stop, ready_then_watch_keys, bound)


def _key_file(settings: BbrSettings, telemetry: Telemetry) -> KeyFile | None:
    """The key list, loaded now: a missing or invalid file stops the BBR (``ValueError``/``OSError``)."""
    path = settings.api_keys_file
    if path is None:
        return None
    store = KeyStore(share=settings.limit_share, window=settings.rate_limit_window)

    def on_reload(ok: bool) -> None:
        telemetry.key_reloads.labels("ok" if ok else "error").inc()

    try:
        key_file = KeyFile(path, store, served_models=settings.known_models(),
                           interval=settings.api_keys_poll_interval, on_reload=on_reload)
    except ApiKeyError as error:
        raise ValueError(f"--api-keys-file {path}: {error}") from None
    except OSError as error:
        raise OSError(f"--api-keys-file {path}: {error.strerror or error}") from None
    _log.info("API keys loaded", extra={"path": str(path), "keys": len(store), "limit_share": store.share})
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


def _run(serve: Callable[[Settings, asyncio.Event], Awaitable[None]], settings: Settings) -> int:
    configure_logging(settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

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
