"""A tiny OpenAI-compatible server for benchmark tests: "pods" behind one round-robin URL.

Each pod serves one model. A request for a model the chosen pod does not serve gets a vLLM-style
404, or, with ``answer_any_model``, a 200 that names the pod's own model (a misbehaving backend).
Every request's ``Authorization`` header is recorded; with ``api_key`` any other is a 401.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeOpenAI:
    pods: list[tuple[str, str]]  # (pod name, model)
    answer_any_model: bool = False
    tokens: int = 3
    break_stream: bool = False  # send an error event after the first token
    api_key: str | None = None  # required as "Authorization: Bearer <key>" when set
    calls: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # the requests' JSON bodies, in order
    authorizations: list[str | None] = field(default_factory=list)
    url: str = ""

    def _next_pod(self) -> tuple[str, str]:
        pod = self.pods[len(self.calls) % len(self.pods)]
        self.calls.append(pod[0])
        return pod

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.authorizations.append(request.headers.get("Authorization"))
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            error = {"message": "bad key", "type": "authentication_error", "param": None, "code": 401}
            return web.json_response({"error": error}, status=401, headers={"WWW-Authenticate": "Bearer"})
        pod, served = self._next_pod()
        headers = {"x-inference-pod": pod}
        if body["model"] != served and not self.answer_any_model:
            error = {
                "message": f"The model `{body['model']}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
            return web.json_response({"error": error}, status=404, headers=headers)
        usage = {"prompt_tokens": 5, "completion_tokens": self.tokens, "total_tokens": 5 + self.tokens}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "ok " * self.tokens}
            payload = {
                "id": "x",
                "object": "chat.completion",
                "model": served,
                "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
            }
            return web.json_response(payload, headers=headers)
        response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(self.tokens):
            chunk = {"model": served, "choices": [{"index": 0, "delta": {"content": "ok "}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if self.break_stream:
                broken = {"error": {"message": "engine died", "type": "internal_error", "code": 500}}
                await response.write(f"data: {json.dumps(broken)}\n\n".encode())
                return response
        await response.write(
            f"data: {json.dumps({'model': served, 'choices': [], 'usage': usage})}\n\n".encode()
        )
        await response.write(b"data: [DONE]\n\n")
        return response


@asynccontextmanager
async def serving(fake: FakeOpenAI) -> AsyncIterator[FakeOpenAI]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
