"""The async runner: sends a workload to one OpenAI-compatible URL and records what came back.

One pooled ``httpx.AsyncClient`` per run. Each request records every attempt (status, the model
named by the response, the ``x-inference-pod`` header), so routing accuracy is computed from what
the server said, never assumed. Retries are off by default; ``retries > 0`` reproduces the old
client-side workaround: send again when the response names another model or the status is 404.
With an API key every request carries ``Authorization: Bearer <key>`` (what OpenAI SDKs send); the
key is held by the client only, never printed or written to a report.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from epp.contract import MODEL_HEADER, POD_HEADER
from tqdm import tqdm

from bench.workloads import RequestSpec


@dataclass(slots=True)
class Attempt:
    """One HTTP exchange. ``status`` is None when no HTTP response arrived (connect error, timeout)."""

    status: int | None
    model: str | None = None
    pod: str | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        """A 2xx answer that arrived whole (a stream that broke off or sent an error is not)."""
        return self.status is not None and 200 <= self.status < 300 and self.error is None

    @property
    def outcome(self) -> str:
        """The status as a label: "200", "404", "200+error" (broken stream), "no answer"."""
        if self.status is None:
            return "no answer"
        return f"{self.status}+error" if self.error and 200 <= self.status < 300 else str(self.status)


@dataclass(slots=True)
class RequestResult:
    """One workload request, across all its attempts. Times are seconds; ``start`` is from the run's start."""

    index: int
    requested_model: str
    start: float
    attempts: list[Attempt] = field(default_factory=list)
    e2e: float | None = None
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    # usage.prompt_tokens_details.cached_tokens (vLLM with --enable-prompt-tokens-details, and the
    # simulator): the prompt tokens the pod found in its prefix cache; 0 when not reported.
    cached_tokens: int = 0

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def ok(self) -> bool:
        """The last attempt got a whole 2xx answer."""
        return self.final.answered

    @property
    def correct(self) -> bool:
        """The answer the client ended up with came from the requested model."""
        return self.ok and self.final.model == self.requested_model

    @property
    def misrouted(self) -> bool:
        """The first attempt reached a server that does not serve the requested model."""
        return wrong_model(self.attempts[0], self.requested_model)

    @property
    def first_attempt_correct(self) -> bool:
        first = self.attempts[0]
        return first.answered and first.model == self.requested_model


@dataclass(slots=True)
class RunResult:
    """Everything one run against one URL produced."""

    label: str
    url: str
    started_at: str
    duration: float
    stream: bool
    results: list[RequestResult]


def chat_url(url: str) -> str:
    """``http://host:port``, ``.../v1`` or the full path all mean the chat-completions endpoint."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def wrong_model(attempt: Attempt, requested: str) -> bool:
    """The attempt reached a server without ``requested``: a 404, or an answer from another model."""
    if attempt.status == 404:
        return True
    return attempt.answered and attempt.model != requested


def _error_message(payload: bytes) -> str:
    try:
        err = json.loads(payload).get("error", {})
        return str(err.get("message", payload[:200].decode(errors="replace")))
    except (ValueError, AttributeError):
        return payload[:200].decode(errors="replace")


def _prompt_usage(result: RequestResult, usage: dict[str, Any]) -> None:
    """The prompt's tokens and, where the server reports them, how many came from its prefix cache."""
    result.prompt_tokens = int(usage.get("prompt_tokens", 0))
    details = usage.get("prompt_tokens_details")
    result.cached_tokens = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0


class Runner:
    """Sends request specs to one URL with a bounded pool of connections."""

    def __init__(
        self,
        url: str,
        *,
        stream: bool = False,
        retries: int = 0,
        timeout: float = 60.0,
        max_connections: int = 256,
        api_key: str | None = None,
        model_header: bool = False,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url
        self.endpoint = chat_url(url)
        self.stream = stream
        self.retries = retries
        # Name each request's model in a header (what a model-aware router would have read from the
        # body): the round-robin baseline routes on it to that model's pods.
        self.model_header = model_header
        headers = {"authorization": f"Bearer {api_key}"} if api_key else None
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, spec: RequestSpec, run_start: float) -> RequestResult:
        """Send one request (and its retries, if enabled) and time it from the first byte sent."""
        t0 = time.perf_counter()
        result = RequestResult(spec.index, spec.model, start=t0 - run_start)
        body = spec.body(self.stream)
        headers = {MODEL_HEADER: spec.model} if self.model_header else None
        while True:
            if self.stream:
                attempt = await self._stream_once(body, result, t0, headers)
            else:
                attempt = await self._once(body, result, headers)
            result.attempts.append(attempt)
            if len(result.attempts) > self.retries or not wrong_model(attempt, spec.model):
                break
            # A retried request's token timings are those of its last attempt.
            result.ttft, result.itl = None, []
        result.e2e = time.perf_counter() - t0
        return result

    async def _once(
        self, body: dict[str, object], result: RequestResult, headers: dict[str, str] | None = None
    ) -> Attempt:
        try:
            response = await self._client.post(self.endpoint, json=body, headers=headers)
        except httpx.HTTPError as exc:
            return Attempt(None, error=f"{type(exc).__name__}: {exc}")
        pod = response.headers.get(POD_HEADER)
        if response.status_code // 100 != 2:
            return Attempt(response.status_code, pod=pod, error=_error_message(response.content))
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return Attempt(response.status_code, pod=pod, error="response is not a JSON object")
        usage = payload.get("usage") or {}
        result.output_tokens = int(usage.get("completion_tokens", 0))
        _prompt_usage(result, usage)
        return Attempt(response.status_code, model=payload.get("model"), pod=pod)

    async def _stream_once(
        self, body: dict[str, object], result: RequestResult, t0: float, headers: dict[str, str] | None = None
    ) -> Attempt:
        try:
            async with self._client.stream("POST", self.endpoint, json=body, headers=headers) as response:
                pod = response.headers.get(POD_HEADER)
                if response.status_code // 100 != 2:
                    return Attempt(
                        response.status_code, pod=pod, error=_error_message(await response.aread())
                    )
                return await self._read_events(response, result, t0, pod)
        except httpx.HTTPError as exc:
            return Attempt(None, error=f"{type(exc).__name__}: {exc}")

    async def _read_events(
        self, response: httpx.Response, result: RequestResult, t0: float, pod: str | None
    ) -> Attempt:
        model: str | None = None
        last_token: float | None = None
        content_chunks = 0
        usage: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                return Attempt(
                    response.status_code, model=model, pod=pod, error=f"bad SSE chunk: {data[:80]}"
                )
            if "error" in chunk:
                return Attempt(
                    response.status_code, model=model, pod=pod, error=_error_message(data.encode())
                )
            model = model or chunk.get("model")
            usage = chunk.get("usage") or usage
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                now = time.perf_counter()
                if last_token is None:
                    result.ttft = now - t0
                else:
                    result.itl.append(now - last_token)
                last_token = now
                content_chunks += 1
        result.output_tokens = int(usage.get("completion_tokens", content_chunks))
        _prompt_usage(result, usage)
        return Attempt(response.status_code, model=model, pod=pod)


async def run(
    url: str,
    specs: list[RequestSpec],
    *,
    concurrency: int | None = None,
    arrivals: list[float] | None = None,
    stream: bool = False,
    retries: int = 0,
    request_timeout: float = 60.0,
    label: str = "target",
    progress: bool = True,
    api_key: str | None = None,
    model_header: bool = False,
) -> RunResult:
    """Send ``specs`` to ``url``: ``concurrency`` at a time, or each at its ``arrivals`` offset (seconds);
    with ``api_key``, each as ``Authorization: Bearer <key>``; with ``model_header``, each naming its
    model in ``x-gateway-model-name`` (for the per-model round-robin baseline)."""
    if (concurrency is None) == (arrivals is None):
        raise ValueError("give exactly one of concurrency or arrivals")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if arrivals is not None and len(arrivals) != len(specs):
        raise ValueError(f"{len(arrivals)} arrival times for {len(specs)} requests")
    results: list[RequestResult | None] = [None] * len(specs)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    bar = tqdm(total=len(specs), desc=label, unit="req", file=sys.stderr, disable=not progress, leave=False)
    connections = concurrency if concurrency is not None else 256
    async with Runner(
        url, stream=stream, retries=retries, timeout=request_timeout, max_connections=connections,
        api_key=api_key, model_header=model_header,
    ) as runner:
        run_start = time.perf_counter()

        async def one(position: int) -> None:
            results[position] = await runner.send(specs[position], run_start)
            bar.update(1)

        if concurrency is not None:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for position in range(len(specs)):
                queue.put_nowait(position)

            async def worker() -> None:
                while not queue.empty():
                    await one(queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
        else:
            assert arrivals is not None
            tasks = []
            for position, offset in enumerate(arrivals):
                delay = offset - (time.perf_counter() - run_start)
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(position)))
            await asyncio.gather(*tasks)
        duration = time.perf_counter() - run_start
    bar.close()
    done = [r for r in results if r is not None]
    return RunResult(label, url, started_at, duration, stream, done)
