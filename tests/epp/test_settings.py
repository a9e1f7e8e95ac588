"""The one spelling of the `epp` and `bbr` command lines: settings render their argv and parse it back,
and no other part of the project spells one of their flags by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from epp.contract import command_flag
from epp.discovery import EjectionPolicy
from epp.settings import BbrSettings, EppSettings, ServerSettings

from policy import rules

REPO = Path(__file__).resolve().parents[2]

EVERY_EPP_FLAG = EppSettings(
    pool_name="gemma-pool",
    pool_namespace="llm",
    config_file=Path("/config/epp.yaml"),
    grpc_port=19002,
    health_port=19003,
    metrics_port=19090,
    pool_models=("google/gemma-2b-it", "google/gemma-2b-it-lora"),
    metrics_interval=0.25,
    metrics_timeout=0.75,
    ejection=EjectionPolicy(
        consecutive_failures=4, consecutive_connect_failures=3, base_ejection=2.5, max_ejection=60.0
    ),
    models_interval=5.0,
    shed_on_saturation=True,
    objectives={"chat": 10, "batch": -1},
    answer_check_rate=0.5,
    cached_tokens_feedback_rate=0.25,
    follow_answers_up_to=32,
    replicas=3,
    peers="epp-peers.llm-gateway.svc.cluster.local:9006,10.0.0.9:9006",
    peer_port=9006,
    peer_key_file=Path("/etc/epp-peers/key"),
    bind="127.0.0.1",
    log_level="debug",
    event_loop="asyncio",
    grace=1.5,
    max_body_bytes=1024,
    max_buffered_bytes=1 << 26,
    api_endpoints=("completions", "chat/completions", "embeddings"),
    secure_serving=True,
    cert_path=Path("/etc/tls"),
)
EVERY_BBR_FLAG = BbrSettings(
    grpc_port=19004,
    health_port=19005,
    metrics_port=19091,
    served_models=("a", "b"),
    adapters={"a-sql": "a", "b-chat": "b"},
    api_keys_file=Path("/etc/keys/api-keys.yaml"),
    limit_share=3,
    bind="::",
    log_level="warning",
    event_loop="asyncio",
    grace=0.0,
    max_body_bytes=4096,
    max_buffered_bytes=1 << 27,
    api_endpoints=("chat/completions",),
    secure_serving=True,
    cert_path=Path("/etc/bbr-tls"),
)
NOT_FLAGS = {BbrSettings: {"rate_limit_window", "api_keys_poll_interval"}, EppSettings: set()}


@pytest.mark.parametrize(
    "settings",
    [
        EVERY_EPP_FLAG,
        EVERY_BBR_FLAG,
        EppSettings(endpoints="127.0.0.1:8000,[::1]:8001", profile="proxy-performance"),
        EppSettings(endpoints_file=Path("endpoints.yaml"), ejection=EjectionPolicy(max_ejection=5.0)),
        BbrSettings(),
    ],
    ids=["epp-every-flag", "bbr-every-flag", "epp-endpoints", "epp-file", "bbr-defaults"],
)
def test_settings_render_a_command_line_that_parses_back_to_the_same_settings(
    settings: ServerSettings,
) -> None:
    argv = settings.to_argv()
    assert type(settings).parse_args(argv) == settings
    assert type(settings).parse_args(argv).to_argv() == argv


@pytest.mark.parametrize(
    ("settings", "exclusive"),
    [(EVERY_EPP_FLAG, {"endpoints_file", "endpoints", "profile"}), (EVERY_BBR_FLAG, set())],
    ids=["epp", "bbr"],
)
def test_every_flag_is_exercised_and_every_field_has_a_flag_but_the_test_only_knobs(
    settings: ServerSettings, exclusive: set[str]
) -> None:
    # The EPP's other endpoint sources and its profile exclude the ones set here: the cases above.
    model = type(settings)
    written = {part for part in settings.to_argv() if part.startswith("--")}
    assert written == {flag.flag for flag in model.FLAGS if flag.field not in exclusive}
    flagged = {flag.field.split(".")[0] for flag in model.FLAGS}
    assert set(model.model_fields) - flagged == NOT_FLAGS[model]


def test_only_the_fields_that_were_set_are_written_in_the_flags_order() -> None:
    settings = EppSettings(pool_models=("m",), pool_name="p", grpc_port=9002)
    assert settings.to_argv() == ["--pool-name", "p", "--grpc-port", "9002", "--pool-models", "m"]


def test_a_setting_without_a_flag_cannot_be_written_as_a_command_line() -> None:
    with pytest.raises(ValueError, match="no flag of the bbr command sets rate_limit_window"):
        BbrSettings(rate_limit_window=1.0).to_argv()


def test_a_flag_is_its_field_in_kebab_case_unless_the_model_names_it() -> None:
    assert BbrSettings.flag("api_keys_file") == command_flag("api_keys_file") == "--api-keys-file"
    assert BbrSettings.flag("adapters") == "--adapter"
    assert EppSettings.flag("ejection.base_ejection") == "--ejection-seconds"
    with pytest.raises(KeyError):
        BbrSettings.flag("rate_limit_window")


def _known_flags() -> set[str]:
    """Every flag of both commands, as their parsers declare them."""
    found = set()
    for model in (EppSettings, BbrSettings):
        for action in model.parser()._actions:
            found.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
    return found


# Other programs' command lines that take a flag of the same name (not the epp's nor the bbr's).
OTHER_COMMANDS = {
    ("onebox/envoy/process.py", "--log-level"): "Envoy's own --log-level",
    ("bench/overhead.py", "--event-loop"): "bench.floor's own --event-loop",
}


def test_no_flag_of_the_epp_or_bbr_command_is_spelled_outside_epp() -> None:
    flags = _known_flags()
    assert {"--pool-name", "--served-models", "--api-keys-file", "--eject-after-failures"} <= flags
    spelled = []
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] in ("epp", "tests") or any(p.startswith(".") for p in relative.parts):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # A program declaring its own flag of the same name (`parser.add_argument("--log-level")`).
        declared = {
            id(arg)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            for arg in node.args
        }  # fmt: skip
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant) and node.value in flags and id(node) not in declared
                and (relative.as_posix(), node.value) not in OTHER_COMMANDS
            ):  # fmt: skip
                spelled.append(f"{relative}:{node.lineno}: {node.value}")
    assert spelled == []


def test_the_policy_pack_reads_the_key_flag_the_bbr_command_takes() -> None:
    assert BbrSettings.flag("api_keys_file") == rules.API_KEYS_FLAG


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--peers", "10.0.0.9:9006"], "--peers also needs --peer-port, --peer-key-file"),
        (["--peer-port", "9006", "--peer-key-file", "k"], "--peer-port, --peer-key-file also needs --peers"),
        (["--peers", "10.0.0.9", "--peer-port", "9006", "--peer-key-file", "k"],
         "'10.0.0.9' is not HOST:PORT"),
    ],
)
def test_sharing_picks_needs_the_peers_the_port_and_the_key_each_named_when_missing(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        EppSettings.parse_args(["--endpoints", "127.0.0.1:8000", *flags])
    assert message in capsys.readouterr().err
