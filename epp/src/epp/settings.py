"""The ``epp`` and ``bbr`` commands' settings: one pydantic model each, with its flags, parser and argv.

The one spelling of both command lines. Each model holds every default and declares its flags
(``FLAGS``: the field each sets, its help); the flags have no default of their own (an absent flag
is left to the model) and their help shows the model's. Two ways through a model:

- ``EppSettings.parse_args(argv)``: a command line -> settings, or exit 2 naming the flag at fault;
- ``settings.to_argv()``: the flags of the fields that were set, in ``FLAGS`` order; every launcher
  (the stacks' Deployments, the one box, the benchmarks) spells its command line this way, and
  ``parse_args(settings.to_argv()) == settings``.

A flag is ``command_flag(field)`` (``api_keys_file`` -> ``--api-keys-file``) unless ``FLAGS`` names
it otherwise (``--adapter``, the ejection flags). Its kind follows the field's type: a ``bool`` is a
switch, a tuple of names is ``NAME[,NAME...]``, a ``dict`` is a repeated ``KEY=VALUE`` flag, a
``Literal`` has choices.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, Self, Union, get_args, get_origin

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from epp.answer_check import DEFAULT_ANSWER_CHECK_RATE
from epp.api_routes import API_ENDPOINTS, DEFAULT_API_ENDPOINTS, ApiEndpoint, ApiRoutes
from epp.auth.limits import DEFAULT_WINDOW
from epp.auth.watch import DEFAULT_POLL_INTERVAL
from epp.contract import (
    BBR_GRPC_PORT,
    BBR_HEALTH_PORT,
    DEFAULT_PROFILE,
    EPP_GRPC_PORT,
    EPP_HEALTH_PORT,
    METRICS_PORT,
    PROFILE_NAMES,
    command_flag,
)
from epp.discovery import EjectionPolicy, check_endpoint_source
from epp.extproc.stream import DEFAULT_MAX_BODY_BYTES
from epp.peers.directory import parse_peers
from epp.tls import server_credentials
from epp.validation import problems

LogLevel = Literal["debug", "info", "warning", "error"]
# uvloop (libuv) runs the servers' event loop with measurably less CPU per request than asyncio's
# default loop (``make bench-overhead`` prints the ratio); ``asyncio`` is the fallback.
EventLoop = Literal["uvloop", "asyncio"]
FlagKind = Literal["switch", "names", "pairs", "choice", "value"]


@dataclass(frozen=True, slots=True)
class Flag:
    """One flag of a command: the settings field it sets (dotted into a nested model) and its help."""

    field: str
    help: str
    name: str | None = None
    """The flag; default: ``command_flag`` of the field."""
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return self.name or command_flag(self.field)


def _field_type(model: type[BaseModel], dotted: str) -> tuple[type[BaseModel], str, Any]:
    """The model that holds ``dotted``'s last part, that part and its annotation (None stripped)."""
    *outer, last = dotted.split(".")
    for part in outer:
        nested = model.model_fields[part].annotation
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            raise TypeError(f"{dotted}: {part} is not a nested settings model")
        model = nested
    annotation = model.model_fields[last].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return model, last, annotation


def _kind(annotation: Any) -> FlagKind:
    origin = get_origin(annotation)
    if annotation is bool:
        return "switch"
    if origin is tuple:
        return "names"
    if origin is dict:
        return "pairs"
    if origin is Literal:
        return "choice"
    return "value"


def _default(model: type[BaseModel], dotted: str) -> Any:
    holder, last, _ = _field_type(model, dotted)
    return holder.model_fields[last].get_default(call_default_factory=True)


def _names(values: object) -> tuple[str, ...]:
    return tuple(n.strip() for n in str(values).split(",") if n.strip())


class ServerSettings(BaseModel):
    """Ports and logging common to both commands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    COMMAND: ClassVar[str]
    """The console script (``epp``, ``bbr``)."""
    DESCRIPTION: ClassVar[str]
    FLAGS: ClassVar[tuple[Flag, ...]]
    """Every flag, in the order ``to_argv`` writes them (and ``--help`` lists them)."""

    bind: str = "0.0.0.0"
    grpc_port: int = Field(ge=0, le=65535)
    health_port: int = Field(ge=0, le=65535)
    metrics_port: int = Field(default=METRICS_PORT, ge=0, le=65535)
    log_level: LogLevel = "info"
    event_loop: EventLoop = "uvloop"
    grace: float = Field(default=5.0, ge=0, description="seconds in-flight streams get on shutdown")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0, description="larger bodies get a 413")
    # What all streams may buffer at once (beyond it, 503 + Retry-After); None: half the container's
    # memory limit (cgroup), or 1 GiB where there is none.
    max_buffered_bytes: int | None = Field(default=None, gt=0)
    # The OpenAI endpoints forwarded to model servers (epp.api_routes): those the pods serve.
    api_endpoints: tuple[ApiEndpoint, ...] = Field(default=DEFAULT_API_ENDPOINTS, min_length=1)
    # ext_proc over TLS, as Google Cloud load balancers call it (HTTP2 backends); the certificate
    # from cert_path (tls.crt, tls.key), else self-signed at startup.
    secure_serving: bool = False
    cert_path: Path | None = None

    @property
    def routes(self) -> ApiRoutes:
        return ApiRoutes(self.api_endpoints)

    @model_validator(mode="after")
    def _endpoints_once(self) -> Self:
        self.routes  # noqa: B018 - ApiRoutes refuses a repeated endpoint
        return self

    @model_validator(mode="after")
    def _cert_path_needs_secure_serving(self) -> Self:
        if self.cert_path is not None and not self.secure_serving:
            raise ValueError(
                f"{command_flag('cert_path')} only applies with {command_flag('secure_serving')}"
            )
        return self

    def credentials(self, common_name: str) -> grpc.ServerCredentials | None:
        return server_credentials(self.cert_path, common_name) if self.secure_serving else None

    # -- the command line ---------------------------------------------------------------------
    @classmethod
    def flag(cls, field: str) -> str:
        """The flag that sets ``field`` (``KeyError`` if none does)."""
        for flag in cls.FLAGS:
            if flag.field == field:
                return flag.flag
        raise KeyError(f"no flag of the {cls.COMMAND} command sets {field!r}")

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The command's parser: every flag of ``FLAGS``, none with a default of its own."""
        parser = argparse.ArgumentParser(
            prog=cls.COMMAND, description=cls.DESCRIPTION, argument_default=argparse.SUPPRESS
        )
        for flag in cls.FLAGS:
            _, _, annotation = _field_type(cls, flag.field)
            default = _default(cls, flag.field)
            text = flag.help
            if default is not None and not isinstance(default, bool) and default not in ((), {}):
                text = f"{text} (default: {default})"
            options: dict[str, Any] = {"dest": flag.field, "help": text}
            kind = _kind(annotation)
            if kind == "switch":
                options["action"] = "store_true"
            elif kind == "names":
                options["metavar"] = flag.metavar or "NAME[,NAME...]"
            elif kind == "pairs":
                options |= {"action": "append", "metavar": flag.metavar or "KEY=VALUE"}
            elif kind == "choice":
                options["choices"] = get_args(annotation)
            else:
                metavar = flag.metavar or flag.flag.removeprefix("--").replace("-", "_").upper()
                options |= {"type": annotation, "metavar": metavar}
            parser.add_argument(flag.flag, **options)
        return parser

    @classmethod
    def parse_args(cls, argv: Sequence[str] | None = None) -> Self:
        """Settings from a command line (``sys.argv[1:]`` when None); exit 2 naming the flag at fault."""
        parser = cls.parser()
        given = vars(parser.parse_args(argv))
        data: dict[str, Any] = {}
        for flag in cls.FLAGS:
            if flag.field not in given:
                continue
            raw = given[flag.field]
            kind = _kind(_field_type(cls, flag.field)[2])
            value: Any = raw
            if kind == "names":
                value = _names(raw)
                if not value:
                    parser.error(f"{flag.flag}: give at least one model name")
            elif kind == "pairs":
                value = {}
                for item in raw:
                    key, sep, rest = item.partition("=")
                    if not sep or not key.strip() or not rest.strip():
                        parser.error(f"{flag.flag} {item!r}: expected {flag.metavar or 'KEY=VALUE'}")
                    value[key.strip()] = rest.strip()
            *outer, last = flag.field.split(".")
            holder = data
            for part in outer:
                holder = holder.setdefault(part, {})
            holder[last] = value
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            cls._refuse(parser, error)

    @classmethod
    def _refuse(cls, parser: argparse.ArgumentParser, error: ValidationError) -> NoReturn:
        """Exit 2 with each problem under the flag that sets its field."""
        flags = {flag.field: flag.flag for flag in cls.FLAGS}
        parts = []
        for problem in problems(error):
            where = ".".join(str(part) for part in problem.loc)
            flag = flags.get(where, command_flag(where)) if where else ""
            parts.append(f"{flag}: {problem.message}" if flag else problem.message)
        parser.error("; ".join(parts))

    def to_argv(self) -> list[str]:
        """The flags of the fields that were set (a None, an empty list or a False writes nothing)."""
        unflagged = self.model_fields_set - {flag.field.split(".")[0] for flag in self.FLAGS}
        if unflagged:
            raise ValueError(f"no flag of the {self.COMMAND} command sets {', '.join(sorted(unflagged))}")
        argv: list[str] = []
        for flag in self.FLAGS:
            holder: BaseModel | None = self
            *outer, last = flag.field.split(".")
            for part in outer:
                nested_set = holder is not None and part in holder.model_fields_set
                holder = getattr(holder, part) if nested_set else None
            if holder is None or last not in holder.model_fields_set:
                continue
            value = getattr(holder, last)
            if value is None or value is False or value in ((), {}):
                continue
            if value is True:
                argv.append(flag.flag)
            elif isinstance(value, tuple):
                argv += [flag.flag, ",".join(value)]
            elif isinstance(value, dict):
                for key, item in value.items():
                    argv += [flag.flag, f"{key}={item}"]
            else:
                argv += [flag.flag, str(value)]
        return argv


# Flags both commands take, in two groups around each command's own: ports first, then the rest.
_PORT_FLAGS = (
    Flag("grpc_port", "ext_proc gRPC port (0: any)"),
    Flag("health_port", "gRPC health port"),
    Flag("metrics_port", "Prometheus /metrics port"),
)
_SERVER_FLAGS = (
    Flag("bind", "address to listen on"),
    Flag("log_level", "log level"),
    Flag("event_loop", "event loop: uvloop or asyncio's own"),
    Flag("grace", "seconds in-flight streams get on shutdown"),
    Flag("max_body_bytes", "refuse larger request bodies with a 413"),
    Flag("api_endpoints", f"the OpenAI endpoints the pods serve, of {', '.join(API_ENDPOINTS)}; any other "
         "path gets a 404", metavar="ENDPOINT[,ENDPOINT...]"),
    Flag("max_buffered_bytes", "request body bytes all streams may hold at once; beyond it new bodies get "
         "a 503 with Retry-After (default: half the container's memory limit, else 1 GiB)"),
    Flag("secure_serving", "serve ext_proc over TLS (what Google Cloud load balancers expect)"),
    Flag("cert_path", "folder with tls.crt and tls.key (default: a self-signed certificate)"),
)


class EppSettings(ServerSettings):
    COMMAND: ClassVar[str] = "epp"
    DESCRIPTION: ClassVar[str] = "Model-aware Endpoint Picker (ext_proc)."
    FLAGS: ClassVar[tuple[Flag, ...]] = (
        Flag("pool_name", "watch this InferencePool and its pods (Kubernetes)"),
        Flag("pool_namespace", "the InferencePool's namespace (default: this pod's)"),
        Flag("endpoints_file", "static endpoints YAML, re-read on change"),
        Flag("endpoints", "static endpoints: IP:PORT[,IP:PORT...] (IPv6 as [::1]:8000)"),
        Flag("config_file", "EndpointPickerConfig YAML"),
        Flag("profile", f"a shipped profile: {', '.join(PROFILE_NAMES)} (default: {DEFAULT_PROFILE})"),
        *_PORT_FLAGS,
        Flag("pool_models", "models the pool is configured to serve (503 rather than 404 while none of "
             "their pods is ready)"),
        Flag("metrics_interval", "seconds between scrapes"),
        Flag("metrics_timeout", "seconds a scrape may take before it counts as failed"),
        Flag("ejection.consecutive_failures", "failed scrapes in a row that take an endpoint out of "
             "rotation", name="--eject-after-failures"),
        Flag("ejection.consecutive_connect_failures", "requests in a row whose connection the endpoint "
             "refused that take it out of rotation", name="--eject-after-refused"),
        Flag("ejection.base_ejection", "seconds an ejected endpoint stays out at least (doubled while it "
             "keeps failing)", name="--ejection-seconds"),
        Flag("ejection.max_ejection", "seconds an ejected endpoint stays out at most",
             name="--max-ejection-seconds"),
        Flag("models_interval", "seconds between model probes"),
        Flag("shed_on_saturation", "429 when the pool is saturated"),
        Flag("objectives", "an InferenceObjective and its priority, for the flow-control queue (repeatable)",
             name="--objective", metavar="NAME=PRIORITY"),
        Flag("answer_check_rate", "share (0-1) of answers whose model is checked against the request's; "
             "0: off"),
        Flag("cached_tokens_feedback_rate", "share (0-1) of predicted prefix-cache hits whose answer's "
             "usage.prompt_tokens_details.cached_tokens corrects the prefix index (pods run vLLM with "
             "--enable-prompt-tokens-details); 0: off"),
        Flag("follow_answers_up_to", "follow (chat) completion streams of at most this many tokens "
             "(max_completion_tokens or max_tokens) to their last byte, so a pod's load drops as soon as "
             "one ends rather than at its next scrape (an answer not streamed ends at its headers, "
             "followed or not); 0: off", metavar="TOKENS"),
        Flag("replicas", "how many EPP replicas serve this pool: with several, a prefix new to this "
             "one goes to its home pod, where another may have sent it", metavar="N"),
        Flag("peers", "the other replicas' peer ports, HOST:PORT[,HOST:PORT...]; a name (a headless "
             "Service) is resolved again every 10 s: each replica sends the others its picks, so all "
             "learn the same prefix placements", metavar="HOST:PORT"),
        Flag("peer_port", "UDP port this replica hears its peers on"),
        Flag("peer_key_file", "file with the key the replicas seal their picks with (at least 16 bytes; "
             "every replica the same)"),
        *_SERVER_FLAGS,
    )  # fmt: skip

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
    # InferenceObjective name -> its spec.priority: the priority of a request naming it.
    objectives: dict[str, int] = Field(default_factory=dict)
    # Share of routed answers whose model is checked against the request's (epp.answer_check).
    answer_check_rate: float = Field(default=DEFAULT_ANSWER_CHECK_RATE, ge=0, le=1)
    # Share of predicted prefix-cache hits whose answer's cached tokens settle the prediction
    # (epp.requestcontrol.cached_tokens); 0: the prefix index is never corrected.
    cached_tokens_feedback_rate: float = Field(default=0.0, ge=0, le=1)
    # Streams followed to their end for the pods' loads (epp.requestcontrol.answer_ends): those of at
    # most this many tokens; 0: none (an answer not streamed ends at its headers anyway).
    follow_answers_up_to: int = Field(default=0, ge=0)
    # The EPP replicas serving the pool (epp.scheduling.framework.Handle.replicas).
    replicas: int = Field(default=1, ge=1)
    # The other replicas (epp.peers): where to send this one's picks, where to hear theirs, the key.
    peers: str | None = None
    peer_port: int | None = Field(default=None, ge=0, le=65535)
    peer_key_file: Path | None = None

    @field_validator("peers")
    @classmethod
    def _peers_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_peers(value)  # ValueError naming the entry
        return value

    @model_validator(mode="after")
    def _peers_need_port_and_key(self) -> Self:
        given = {name: getattr(self, name) is not None for name in ("peers", "peer_port", "peer_key_file")}
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(command_flag(name) for name, set_ in given.items() if not set_)
            present = ", ".join(command_flag(name) for name, set_ in given.items() if set_)
            raise ValueError(f"{present} also needs {missing}")
        return self

    @model_validator(mode="after")
    def _one_source_and_one_config(self) -> Self:
        if self.config_file is not None and self.profile is not None:
            raise ValueError(
                f"{command_flag('config_file')} and {command_flag('profile')} are mutually exclusive"
            )
        check_endpoint_source(
            pool_name=self.pool_name,
            pool_namespace=self.pool_namespace,
            endpoints_file=self.endpoints_file,
            endpoints=self.endpoints,
        )
        return self


class BbrSettings(ServerSettings):
    COMMAND: ClassVar[str] = "bbr"
    DESCRIPTION: ClassVar[str] = "Body-Based Router (Envoy ext_proc)."
    FLAGS: ClassVar[tuple[Flag, ...]] = (
        *_PORT_FLAGS,
        Flag("served_models", "refuse other models (400/404) and answer GET /v1/models"),
        Flag("adapters", "a LoRA adapter and its base model (repeatable)", name="--adapter",
             metavar="ADAPTER=BASE"),
        Flag("api_keys_file", "the API key list (YAML/JSON), re-read on change: every request then needs "
             "a key (default: the gateway is open)"),
        Flag("limit_share", "the front door runs N replicas: this one allows ceil(requestsPerMinute / N) "
             "of each key's requests", metavar="N"),
        *_SERVER_FLAGS,
    )  # fmt: skip

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


def parse_epp_args(argv: Sequence[str] | None = None) -> EppSettings:
    return EppSettings.parse_args(argv)


def parse_bbr_args(argv: Sequence[str] | None = None) -> BbrSettings:
    return BbrSettings.parse_args(argv)


def epp_parser() -> argparse.ArgumentParser:
    return EppSettings.parser()


def bbr_parser() -> argparse.ArgumentParser:
    return BbrSettings.parser()
