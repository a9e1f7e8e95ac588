"""The front door's early look at a body's ``model``: right on every chunking, never fooled by a
``model`` inside a string or a nested object, and giving up (for the full parse) where it should."""

from __future__ import annotations

import json

import pytest
from epp.extproc.model_scan import MAX_KEPT, ModelScanner


def scan(body: bytes, size: int) -> tuple[str | None, bool]:
    scanner = ModelScanner()
    for start in range(0, len(body), size):
        scanner.feed(body[start:start + size])
        if scanner.done:
            break
    return scanner.model, scanner.done


DOCUMENTS = [
    {"model": "google/gemma-2b-it", "prompt": "hi"},
    {"messages": [{"role": "user", "content": 'say "model": "x" \\ \\" {[' }], "model": "phi"},
    {"a": {"model": "inner"}, "b": [{"model": "deeper"}], "model": "outer"},
    {"prompt": "\\" * 7 + '"', "model": "é/ü"},
    {"x": [1, 2, {"model": "nested only"}]},
    {"model": 7, "y": "model"},
]


@pytest.mark.parametrize("document", DOCUMENTS, ids=range(len(DOCUMENTS)))
@pytest.mark.parametrize("ascii_only", [True, False], ids=["ascii", "utf8"])
def test_the_top_level_model_is_found_whatever_the_chunk_boundaries(document: dict[str, object],
                                                                    ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    expected = document.get("model") if isinstance(document.get("model"), str) else None
    for size in range(1, len(body) + 1):
        assert scan(body, size)[0] == expected, size


def test_a_body_that_is_no_object_or_has_no_model_is_given_up() -> None:
    assert scan(b"[1, 2, 3]", 2) == (None, True)
    assert scan(b'{"prompt": "x"}', 3) == (None, True)


def test_a_model_name_too_long_to_follow_is_left_to_the_full_parse() -> None:
    body = json.dumps({"model": "x" * (MAX_KEPT + 1)}).encode()
    assert scan(body, 100) == (None, True)


def test_an_unfinished_body_is_not_done() -> None:
    assert scan(b'{"prompt": "a long prompt still arriv', 5) == (None, False)
