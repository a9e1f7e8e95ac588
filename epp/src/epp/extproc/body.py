"""What the servers read from an OpenAI-style request body: the model and the prompt text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from epp.extproc.errors import RequestError, missing_model


@dataclass(frozen=True, slots=True)
class ParsedBody:
    model: str | None
    # Text used for prefix-cache hashing: `prompt`, or the chat messages' contents concatenated.
    prompt: str
    # The answer carries ``usage``: not streamed, or streamed with ``stream_options.include_usage``.
    usage_reported: bool = True
    # The answer is a stream of server-sent events (``"stream": true``).
    streamed: bool = False
    # The most tokens the answer may have (``max_completion_tokens``, else ``max_tokens``); None: not
    # given (or not a positive integer: the model server judges that).
    max_tokens: int | None = None


def parse_body(body: bytes) -> ParsedBody:
    """Parse once; a body that is not a JSON object is a 400 naming what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(
            400, f"The request body is not valid JSON: {error}.", None, "invalid_json"
        ) from None
    except RecursionError:
        raise RequestError(
            400, "The request body's JSON is nested too deeply to parse.", None, "invalid_json"
        ) from None
    if not isinstance(document, dict):
        raise RequestError(
            400,
            f"The request body must be a JSON object, got {type(document).__name__}.",
            None,
            "invalid_json",
        )
    model = document.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise RequestError(400, "The 'model' field must be a non-empty string.", "model", "no_model")
    return ParsedBody(
        model=model, prompt=_prompt_text(document), usage_reported=_usage_reported(document),
        streamed=document.get("stream") is True, max_tokens=_max_tokens(document),
    )


def _max_tokens(document: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = document.get(name)
        if type(value) is int and value > 0:
            return value
    return None


def _usage_reported(document: dict[str, Any]) -> bool:
    if document.get("stream") is not True:
        return True
    options = document.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def require_model(parsed: ParsedBody) -> str:
    if parsed.model is None:
        raise missing_model()
    return parsed.model


def _prompt_text(document: dict[str, Any]) -> str:
    prompt = document.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "".join(p for p in prompt if isinstance(p, str))
    messages = document.get("messages")
    if not isinstance(messages, list):
        return ""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for item in content:
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    parts.append(item["text"])
    return "".join(parts)
