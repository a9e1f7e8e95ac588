"""What the EPP, the BBR, the one box, the benchmark and the Pulumi components must agree on.

One module, imported by all of them, instead of a copy of each name in every package: the headers
and metadata of the Endpoint Picker Protocol, the default ports, the shipped scheduling profiles,
the API-key front door's wiring, the OpenAI-style error body, and how an address is written.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Final, Literal, get_args

# --- The Endpoint Picker Protocol (Gateway API Inference Extension) --------------------------------
# The picked endpoint(s), ``host:port`` (comma-separated when a picker ranks fallbacks), in a
# request header and in the dynamic metadata namespace Envoy's ORIGINAL_DST/subset LB reads.
DESTINATION_HEADER: Final = "x-gateway-destination-endpoint"
DESTINATION_METADATA_NAMESPACE: Final = "envoy.lb"
# The proxy may restrict the pick to a subset of endpoints through this namespace and key.
SUBSET_HINT_NAMESPACE: Final = "envoy.lb.subset_hint"
SUBSET_HINT_KEY: Final = "x-gateway-destination-endpoint-subset"

# The gateway's own answer for a picked endpoint that did not answer carries this header: ``connect``
# where it refused the connection (nothing was sent), so the EPP that picked the endpoint sees the
# failure on the response path and takes the endpoint out of rotation (passive ejection,
# ``epp.discovery.ejection``); ``silent`` where it sent nothing for the upstream idle timeout and
# ``reset`` where its connection broke, neither of which the EPP counts as the endpoint answering.
UPSTREAM_FAILURE_HEADER: Final = "x-gateway-upstream-failure"
UPSTREAM_CONNECT_FAILURE: Final = "connect"
UPSTREAM_SILENT: Final = "silent"
UPSTREAM_RESET: Final = "reset"

# --- The Body-Based Router --------------------------------------------------------------------------
# The body's ``model`` and its base model (a LoRA adapter resolves to the model it adapts); the
# Gateway's HTTPRoutes match the base model header exactly.
MODEL_HEADER: Final = "x-gateway-model-name"
BASE_MODEL_HEADER: Final = "x-gateway-base-model-name"

# --- API keys at the front door ---------------------------------------------------------------------
# Where a client puts its key (the OpenAI SDK sends ``Authorization: Bearer``); both are removed
# before the request reaches a model server.
AUTHORIZATION_HEADER: Final = "authorization"
API_KEY_HEADER: Final = "x-api-key"
CLIENT_KEY_HEADERS: Final = (AUTHORIZATION_HEADER, API_KEY_HEADER)
# The front door names the caller's tenant (never the key) for what runs behind it, overwriting any
# value a client sent.
TENANT_HEADER: Final = "x-gateway-api-key-name"
# The Kubernetes Secret holding the key list, the file name in it and where the front door mounts it.
API_KEYS_SECRET_KEY: Final = "api-keys.yaml"
API_KEYS_MOUNT_DIR: Final = "/etc/llm-gateway/api-keys"

# --- Flow control (llm-d-router's request headers, and the Gateway API Inference Extension's) -----------
# Who a request belongs to, for fairness between tenants (behind a front door with keys, the key's
# name in TENANT_HEADER takes precedence), and the InferenceObjective it names (its priority).
FAIRNESS_HEADERS: Final = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
OBJECTIVE_HEADERS: Final = ("x-llm-d-inference-objective", "x-gateway-inference-objective")
# The priority of the caller's API key entry, set by the front door (a client's value is removed).
PRIORITY_HEADER: Final = "x-gateway-api-key-priority"

# --- Requests ------------------------------------------------------------------------------------------
# Every request carries one id from the front door to the pod and back to the client: the client's
# own, or one the gateway generates (the BBR, or the EPP where no BBR runs in front of it).
REQUEST_ID_HEADER: Final = "x-request-id"
# Set beside a made-up id, so that what follows the front door returns it on the answer (a client's own
# id it already knows, and Envoy's own generated ids Envoy returns itself in the one box).
REQUEST_ID_GENERATED_HEADER: Final = "x-gateway-request-id-generated"

# --- What model servers (and the simulator) say about themselves ------------------------------------
POD_HEADER: Final = "x-inference-pod"
SERVED_MODEL_HEADER: Final = "x-inference-model"

# --- Default ports ------------------------------------------------------------------------------------
EPP_GRPC_PORT: Final = 9002
EPP_HEALTH_PORT: Final = 9003
BBR_GRPC_PORT: Final = 9004
BBR_HEALTH_PORT: Final = 9005
METRICS_PORT: Final = 9090
EPP_PEER_PORT: Final = 9006
"""UDP: where a pool's EPP replicas hear each other's picks (``epp.peers``)."""

# --- The ``epp`` and ``bbr`` command lines -------------------------------------------------------------
def command_flag(field: str) -> str:
    """The flag of a settings field of the ``epp``/``bbr`` commands (``epp.settings``):
    ``api_keys_file`` -> ``--api-keys-file``. Readers of a rendered command line (the policy pack)
    name a flag through this, never by spelling it."""
    return "--" + field.replace("_", "-")


# --- Scheduling profiles shipped with the EPP ---------------------------------------------------------
ProfileName = Literal["default", "proxy-performance", "proxy-performance-by-backend"]
PROFILE_NAMES: Final[tuple[str, ...]] = get_args(ProfileName)
DEFAULT_PROFILE: Final = "default"

# --- The error body -----------------------------------------------------------------------------------
# The gateway's own refusals use one ``type`` per status, so a client can branch on it; errors that
# model servers produce pass through unchanged.
ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "api_error",
    502: "api_error",
    503: "service_unavailable",
    504: "timeout_error",
}


# What the gateway serves, and its answer to anything else (a JSON 404 in both routing modes).
API_PREFIX: Final = "/v1/"
NOT_FOUND_MESSAGE: Final = (
    "Not found: the gateway serves POST /v1/completions, POST /v1/chat/completions and GET /v1/models."
)

# A name from the request (a model, a path) quoted in an error is cut to this many characters, so
# the answer to a 1 MB model name is not a 1 MB body.
MAX_ECHOED_CHARS: Final = 200


def echoed(text: str) -> str:
    """``text`` as an error message may quote it: at most MAX_ECHOED_CHARS characters (then "...")."""
    if len(text) <= MAX_ECHOED_CHARS:
        return text
    return f"{text[:MAX_ECHOED_CHARS]}... ({len(text)} characters)"


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error")


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}``, the shape OpenAI clients surface."""
    error = {"message": message, "type": error_type(status), "param": param, "code": status}
    return json.dumps({"error": error}, separators=(",", ":")).encode()


# --- Addresses ------------------------------------------------------------------------------------------
def join_host_port(host: str, port: int) -> str:
    """``10.0.0.1:8000``, ``[fd00::1]:8000``: the form Envoy's ORIGINAL_DST and a URL both take."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """The inverse of :func:`join_host_port`; the host comes back without brackets.

    Raises ``ValueError`` naming the address when it has no port, a bad port, or an IPv6 host
    without brackets.
    """
    text = address.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"{address!r} is not [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{address!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{address!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{address!r}: an IPv6 host needs brackets, as in [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def url_host(host: str) -> str:
    """A host as it stands in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
