"""The OpenAI wire format as vLLM speaks it: request parsing, response bodies, SSE chunks, errors."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from vllmsim.config import SimConfig

Kind = Literal["completion", "chat"]

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}

# Output text: token k of a response is _WORDS[(k + prompt_tokens) % len(_WORDS)].
_WORDS = (
    "the", "model", "answers", "with", "simulated", "tokens", "that", "arrive", "one", "at", "a",
    "time", "from", "a", "pod", "serving", "this", "request", "behind", "the", "gateway", "while",
    "other", "requests", "wait", "in", "the", "queue", "for", "a", "free", "slot",
)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """vLLM's OpenAI-style error object: ``{"error": {"message", "type", "param", "code"}}``."""
    err_type = _ERROR_TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError")
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(error_body(status, message, param), status=status, dumps=dumps)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class RequestError(Exception):
    """A request the simulator refuses; becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.param)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated /v1/completions or /v1/chat/completions request."""

    kind: Kind
    model: str
    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"Malformed JSON request body: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError(400, f"The request body must be a JSON object, not {type(body).__name__}")
    return body


def parse_generation(kind: Kind, body: dict[str, Any], config: SimConfig) -> GenerationRequest:
    """Validate a request body; unknown models are a 404 naming the model, bad fields a 400."""
    model = body.get("model", config.models[0])  # vLLM falls back to its first served name
    if not isinstance(model, str):
        raise RequestError(400, "'model' must be a string", "model")
    if config.base_of(model) is None:
        raise RequestError(404, f"The model `{model}` does not exist.", "model")

    prompt = _chat_prompt(body) if kind == "chat" else _completion_prompt(body)

    key = "max_tokens"
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        key = "max_completion_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        max_tokens = 16
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(400, f"'{key}' must be a positive integer, got {max_tokens!r}", key)

    n = body.get("n", 1)
    if n != 1:
        raise RequestError(400, f"The simulator generates one choice per request; 'n' is {n!r}", "n")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"'stream' must be a boolean, got {stream!r}", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise RequestError(400, "'stream_options' must be an object", "stream_options")
        if not stream:
            raise RequestError(
                400, "'stream_options' is only allowed when 'stream' is true", "stream_options"
            )
        include_usage = bool(options.get("include_usage", False))
    return GenerationRequest(kind, model, prompt, max_tokens, stream, include_usage)


def _completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(400, "'prompt' must be a string (or a list of exactly one string)", "prompt")
    return prompt


def _chat_prompt(body: dict[str, Any]) -> str:
    """Render messages with a fixed chat template, so equal conversation prefixes share blocks."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    parts: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"messages[{index}] must be an object with a string 'role'", "messages")
        parts.append(f"<|{message['role']}|>\n{_content_text(message.get('content'), index)}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


def _content_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
            if not isinstance(text, str):
                message = f"messages[{index}].content parts must be {{'type': 'text', 'text': str}}"
                raise RequestError(400, message, "messages")
            texts.append(text)
        return "".join(texts)
    raise RequestError(400, f"messages[{index}].content must be a string or a list of parts", "messages")


def word(index: int, prompt_tokens: int) -> str:
    return _WORDS[(index + prompt_tokens) % len(_WORDS)] + " "


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """What an answer's usage says of its prompt."""

    prompt_tokens: int
    cached_tokens: int
    created_cache_tokens: int


def usage(
    kind: Kind, prompt: PromptUsage, completion_tokens: int, *, details: bool, streamed: bool
) -> dict[str, Any]:
    """``usage`` as vLLM 0.32 writes it. A whole answer lists every field, unset ones as null; a
    stream's usage event leaves the null ones out. ``prompt_tokens_details`` is only filled with
    ``--enable-prompt-tokens-details``: chat answers also give ``created_cache_tokens`` (the prompt
    tokens, in full blocks, newly written to the cache), completions answers do not."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt.prompt_tokens,
        "total_tokens": prompt.prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    prompt_details: dict[str, Any] | None = None
    if details:
        prompt_details = {"cached_tokens": prompt.cached_tokens}
        created = prompt.created_cache_tokens if kind == "chat" else None
        if not streamed:
            prompt_details.update(created_cache_tokens=created, multimodal_tokens=None)
        elif created is not None:
            prompt_details["created_cache_tokens"] = created
    if not streamed:
        out.update(prompt_tokens_details=prompt_details, completion_tokens_details=None)
    elif prompt_details is not None:
        out["prompt_tokens_details"] = prompt_details
    return out


class ResponseWriter:
    """Builds the bodies of one generation response (whole or as SSE chunks)."""

    def __init__(self, request: GenerationRequest, *, details: bool = False) -> None:
        """``details``: fill ``usage.prompt_tokens_details`` (``--enable-prompt-tokens-details``)."""
        self.request = request
        self.details = details
        self.created = int(time.time())
        if request.kind == "chat":
            self.id = f"chatcmpl-{uuid.uuid4().hex}"
            self._object = "chat.completion"
        else:
            self.id = f"cmpl-{uuid.uuid4().hex}"
            self._object = "text_completion"
        head = {"id": self.id, "object": self._chunk_object, "created": self.created, "model": request.model}
        # Token chunks differ only in their text: pre-render everything around it once.
        prefix = dumps(head)[:-1]
        if request.kind == "chat":
            self._token_prefix = f'data: {prefix},"choices":[{{"index":0,"delta":{{"content":'.encode()
        else:
            self._token_prefix = f'data: {prefix},"choices":[{{"index":0,"text":'.encode()
        self._head = head

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.request.kind == "chat" else "text_completion"

    def whole(self, text: str, prompt: PromptUsage, completion_tokens: int) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.request.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason="length", stop_reason=None)
        return {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.request.model,
            "choices": [choice],
            "usage": usage(
                self.request.kind, prompt, completion_tokens, details=self.details, streamed=False
            ),
        }

    def role_chunk(self) -> bytes:
        """The first chat chunk, announcing the assistant role (as vLLM sends it)."""
        chunk = {
            **self._head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        return f"data: {dumps(chunk)}\n\n".encode()

    def token_chunk(self, text: str, last: bool) -> bytes:
        finish = '"length"' if last else "null"
        if self.request.kind == "chat":
            tail = f'}},"logprobs":null,"finish_reason":{finish}}}]}}\n\n'
        else:
            tail = f',"logprobs":null,"finish_reason":{finish},"stop_reason":null}}]}}\n\n'
        return self._token_prefix + json.dumps(text).encode() + tail.encode()

    def usage_chunk(self, prompt: PromptUsage, completion_tokens: int) -> bytes:
        summary = usage(self.request.kind, prompt, completion_tokens, details=self.details, streamed=True)
        chunk = {**self._head, "choices": [], "usage": summary}
        return f"data: {dumps(chunk)}\n\n".encode()


DONE = b"data: [DONE]\n\n"
