"""Only the API's own methods and paths pass the BBR and the EPP (``epp.api_routes``), decided on the
request headers, over a real gRPC channel; and the one box's Envoy answers what it refuses itself
with the very same bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from epp.api_routes import DEFAULT_ROUTES, ApiRoutes
from epp.api_screen import RouteError, screen_route
from epp.extproc import Handler, refusal_response
from epp.extproc.bbr import BodyBasedRouter
from epp.extproc.picker import EndpointPicker
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, LeastBusyScheduler, Outcome, pool, serving
from tests.onebox.test_bootstrap import per_model

GEMMA = "google/gemma-2b-it"


def front_door(routes: ApiRoutes | None = None) -> BodyBasedRouter:
    return BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA], routes=routes)


def picker() -> EndpointPicker:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]))
    return EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore))


SERVICERS: dict[str, Callable[[], Handler[Any]]] = {"bbr": front_door, "epp": picker}


def body(model: str = GEMMA) -> bytes:
    return json.dumps({"model": model, "prompt": "hi", "max_tokens": 2}).encode()


def allow(outcome: Outcome) -> str | None:
    response = outcome.immediate.immediate_response  # type: ignore[union-attr]
    headers = {o.header.key: o.header.raw_value.decode() for o in response.headers.set_headers}
    return headers.get("allow")


@pytest.mark.parametrize("servicer", SERVICERS)
@pytest.mark.parametrize("path", [
    "/v1/../metrics", "/v1/%2e%2e/metrics", "/v1/chat/completions;x=1", "/v1/chat/completions/",
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/embeddings", "/v1/responses", "/metrics",
    "/other", "/v1",
])  # fmt: skip
async def test_a_path_outside_the_api_is_a_404_on_its_headers_whatever_the_body(
    servicer: str, path: str
) -> None:
    async with serving(SERVICERS[servicer]()) as stub:
        outcome = await EnvoyStream(stub).send_request(body(), path=path)
    code, document = outcome.error()
    assert (code, document["error"]["type"]) == (404, "not_found_error")  # type: ignore[index]
    assert document["error"]["message"] == DEFAULT_ROUTES.not_found_message  # type: ignore[index]
    assert len(outcome.responses) == 1  # answered on the headers, no body read


@pytest.mark.parametrize("servicer", SERVICERS)
async def test_a_served_path_under_another_method_is_a_405_naming_the_methods_it_takes(servicer: str) -> None:
    async with serving(SERVICERS[servicer]()) as stub:
        outcomes = {
            (method, path): await EnvoyStream(stub).send_request(body(), method=method, path=path)
            for method, path in [("PUT", "/v1/chat/completions"), ("DELETE", "/v1/completions"),
                                 ("TRACE", "/v1/completions"), ("GET", "/v1/chat/completions"),
                                 ("POST", "/v1/models"), ("PATCH", f"/v1/models/{GEMMA}")]
        }  # fmt: skip
    for (method, path), outcome in outcomes.items():
        code, document = outcome.error()
        assert (code, document["error"]["type"]) == (405, "invalid_request_error"), (method, path)  # type: ignore[index]
        assert allow(outcome) == ("POST" if "models" not in path else "GET, HEAD")


@pytest.mark.parametrize("servicer", SERVICERS)
async def test_get_v1_models_with_a_body_naming_a_model_is_answered_not_routed(servicer: str) -> None:
    async with serving(SERVICERS[servicer]()) as stub:
        listing = await EnvoyStream(stub).send_request(body(), method="GET", path="/v1/models")
        one = await EnvoyStream(stub).send_request(body(), method="GET", path=f"/v1/models/{GEMMA}")
        missing = await EnvoyStream(stub).send_request(body(), method="GET", path="/v1/models/secret")
    response = listing.immediate.immediate_response  # type: ignore[union-attr]
    assert response.status.code == 200
    assert [m["id"] for m in json.loads(response.body)["data"]] == [GEMMA]
    assert one.immediate.immediate_response.status.code == 200  # type: ignore[union-attr]
    assert missing.error()[0] == 404


@pytest.mark.parametrize("servicer", SERVICERS)
@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, identity", "x-anything"])
async def test_a_body_with_a_content_encoding_other_than_identity_is_a_415(
    servicer: str, coding: str
) -> None:
    async with serving(SERVICERS[servicer]()) as stub:
        refused = await EnvoyStream(stub).send_request(body(), headers={"content-encoding": coding})
        plain = await EnvoyStream(stub).send_request(body(), headers={"content-encoding": "Identity"})
    code, document = refused.error()
    assert (code, document["error"]["type"]) == (415, "invalid_request_error")  # type: ignore[index]
    assert plain.immediate is None


async def test_an_endpoint_the_pods_serve_is_forwarded_once_configured() -> None:
    routes = ApiRoutes(("chat/completions", "embeddings"))
    async with serving(front_door(routes)) as stub:
        embeddings = await EnvoyStream(stub).send_request(body(), path="/v1/embeddings")
        completions = await EnvoyStream(stub).send_request(body(), path="/v1/completions")
    assert embeddings.immediate is None
    assert embeddings.set_headers["x-gateway-base-model-name"] == GEMMA
    assert completions.error()[0] == 404


def test_the_envoy_routes_answer_405_and_404_with_the_bbrs_very_bytes() -> None:
    routes = {r["name"]: r for r in per_model()["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]}
    for name, error in [
        ("method-not-allowed:/v1/chat/completions", screened("PUT", "/v1/chat/completions")),
        ("method-not-allowed:/v1/models/", screened("POST", f"/v1/models/{GEMMA}")),
        ("not-found", screened("GET", "/v1/load_lora_adapter")),
    ]:
        response = refusal_response(error).immediate_response
        direct = routes[name]["direct_response"]
        assert direct["status"] == response.status.code
        assert direct["body"]["inline_string"].encode() == response.body


def screened(method: str, path: str) -> RouteError:
    with pytest.raises(RouteError) as refused:
        screen_route(DEFAULT_ROUTES, method, path, {})
    return refused.value


def test_the_allow_list_refuses_a_repeated_or_unknown_endpoint() -> None:
    with pytest.raises(ValueError, match="repeat"):
        ApiRoutes(("completions", "completions"))
    with pytest.raises(ValueError, match="at least one"):
        ApiRoutes(())
