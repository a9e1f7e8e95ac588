"""HTTP routes of the simulator: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics.

Every response, errors included, carries ``x-inference-pod`` (this instance) and
``x-inference-model`` (the model that served the request; the first served model otherwise).
Until the startup delay has elapsed every route answers 503.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from epp.contract import POD_HEADER, SERVED_MODEL_HEADER

from vllmsim.engine import Sequence
from vllmsim.metrics import CONTENT_TYPE
from vllmsim.protocol import (
    DONE,
    GenerationRequest,
    Kind,
    PromptUsage,
    RequestError,
    ResponseWriter,
    dumps,
    error_response,
    parse_body,
    parse_generation,
    word,
)
from vllmsim.state import SimState

_SERVED_MODEL: web.RequestKey[str] = web.RequestKey("served_model", str)
_SIM: web.AppKey[SimState] = web.AppKey("simulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(sim: SimState) -> web.Application:
    app = web.Application(middlewares=[_errors_and_readiness], client_max_size=8 * 1024 * 1024)
    app[_SIM] = sim
    app.on_response_prepare.append(_identity_headers)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    return app


async def _identity_headers(request: web.Request, response: web.StreamResponse) -> None:
    sim = request.app[_SIM]
    response.headers[POD_HEADER] = sim.pod_name
    response.headers[SERVED_MODEL_HEADER] = request.get(_SERVED_MODEL, sim.config.models[0])


@web.middleware
async def _errors_and_readiness(request: web.Request, handler: Handler) -> web.StreamResponse:
    if "x-request-id" in request.headers:
        request.app[_SIM].proxied.append((request.method, request.raw_path))
    if not request.app[_SIM].ready:
        return error_response(503, "The server is starting up")
    try:
        return await handler(request)
    except RequestError as exc:
        return exc.response()
    except web.HTTPException as exc:  # unknown route, wrong method: OpenAI-style JSON too
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[_SIM].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _permission(model: str, created: int) -> dict[str, Any]:
    """vLLM's ``ModelPermission`` card, as it lists one per model."""
    return {
        "id": f"modelperm-{model}", "object": "model_permission", "created": created,
        "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
        "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
        "organization": "*", "group": None, "is_blocking": False,
    }  # fmt: skip


async def _models(request: web.Request) -> web.Response:
    sim = request.app[_SIM]
    config = sim.config
    cards: list[dict[str, Any]] = []
    for name, parent in [*((m, None) for m in config.models), *config.loras.items()]:
        cards.append(
            {
                "id": name,
                "object": "model",
                "created": sim.started_at,
                "owned_by": "vllm",
                "root": name,
                "parent": parent,
                "max_model_len": config.context_limit,
                "permission": [_permission(name, sim.started_at)],
            }
        )
    return web.json_response({"object": "list", "data": cards}, dumps=dumps)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completion")


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _generate(request: web.Request, kind: Kind) -> web.StreamResponse:
    sim = request.app[_SIM]
    sim.received_headers.append({k.lower(): v for k, v in request.headers.items()})
    body = parse_body(await request.read())
    gen = parse_generation(kind, body, sim.config)
    request[_SERVED_MODEL] = gen.model
    if sim.config.failure_rate and sim.rng.random() < sim.config.failure_rate:
        status = sim.config.failure_kind
        reason = "Too many requests" if status == 429 else "Service unavailable"
        return error_response(status, f"{reason} (failure injected by the simulator)")

    engine = sim.engine
    writer = ResponseWriter(gen, details=sim.config.enable_prompt_tokens_details)
    seq = engine.new_sequence(writer.id, gen.model, gen.prompt, gen.max_tokens)
    total = seq.prompt_tokens + gen.max_tokens
    if total > sim.config.context_limit:
        raise RequestError(
            400,
            f"This model's maximum context length is {sim.config.context_limit} tokens. However, you "
            f"requested {total} tokens ({seq.prompt_tokens} in the prompt, {gen.max_tokens} in the "
            "completion). Please reduce the length of the prompt or completion.",
        )

    timing = _Timing(arrived=time.monotonic())
    # vLLM answers a stream with its status line and headers at once (Starlette's StreamingResponse
    # starts before its first chunk), while the request still waits for a slot and its prefill;
    # the first token follows in the body. A whole answer's headers come with its body.
    stream = await _start_stream(request) if gen.stream else None
    try:
        async with engine.serve(seq):
            timing.admitted = True
            sim.metrics.admitted(seq)
            if stream is not None:
                return await _stream(stream, gen, seq, writer, sim, timing)
            words: list[str] = []
            async for _ in engine.tokens(seq, streaming=False):
                timing.first_token_seen()
                words.append(word(seq.generated - 1, seq.prompt_tokens))
            body_out = writer.whole("".join(words), prompt_usage(seq), seq.generated)
            return web.json_response(body_out, dumps=dumps)
    finally:
        if timing.admitted:
            ttft = None if timing.first_token is None else timing.first_token - timing.arrived
            sim.metrics.finished(seq, ttft, time.monotonic() - timing.arrived)


def prompt_usage(seq: Sequence) -> PromptUsage:
    return PromptUsage(seq.prompt_tokens, seq.cached_tokens, seq.created_cache_tokens)


@dataclass(slots=True)
class _Timing:
    arrived: float
    admitted: bool = False
    first_token: float | None = None

    def first_token_seen(self) -> bool:
        """Record the first token's time; True only on the first call."""
        if self.first_token is not None:
            return False
        self.first_token = time.monotonic()
        return True


async def _start_stream(request: web.Request) -> web.StreamResponse:
    """A stream's response, its headers sent now (a StreamResponse does not hold them back)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


async def _stream(
    response: web.StreamResponse,
    gen: GenerationRequest,
    seq: Sequence,
    writer: ResponseWriter,
    sim: SimState,
    timing: _Timing,
) -> web.StreamResponse:
    try:
        async for _ in sim.engine.tokens(seq, streaming=True):
            index = seq.generated - 1
            chunk = writer.token_chunk(word(index, seq.prompt_tokens), last=index == gen.max_tokens - 1)
            if timing.first_token_seen() and gen.kind == "chat":
                chunk = writer.role_chunk() + chunk
            await response.write(chunk)
        if gen.include_usage:
            await response.write(writer.usage_chunk(prompt_usage(seq), seq.generated))
        await response.write(DONE)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream; leaving the engine's context frees the slot
    return response
