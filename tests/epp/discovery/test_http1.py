"""The scraper's HTTP/1.1 reader: answers with a length, chunked, or ended by the close, in pieces."""

from __future__ import annotations

import pytest
from epp.discovery.http1 import ResponseError, ResponseReader, request_bytes

PAGE = b'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'


def feed_in_pieces(reader: ResponseReader, data: bytes, size: int):  # type: ignore[no-untyped-def]
    """Feed ``data`` ``size`` bytes at a time; the answer once complete (None before the end)."""
    answer = None
    for start in range(0, len(data), size):
        assert answer is None, "an answer came before its last byte"
        answer = reader.feed(data[start : start + size])
    return answer


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_an_answer_with_a_content_length_is_complete_at_its_last_byte(size: int) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE)
    answer = feed_in_pieces(ResponseReader(), data, size)
    assert answer is not None
    assert (answer.status, answer.body, answer.keep_alive) == (200, PAGE, True)


@pytest.mark.parametrize("size", [1, 5, 4096])
def test_a_chunked_answer_is_joined_whatever_pieces_it_arrives_in(size: int) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (10, PAGE[:10])
        + b"%x;ext=1\r\n%s\r\n" % (len(PAGE) - 10, PAGE[10:])
        + b"0\r\n\r\n"
    )
    answer = feed_in_pieces(ResponseReader(), data, size)
    assert answer is not None
    assert answer.body == PAGE


def test_an_answer_without_a_length_ends_with_the_connection() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + PAGE) is None
    answer = reader.eof()
    assert (answer.body, answer.keep_alive) == (PAGE, False)


def test_connection_close_is_honoured_and_an_error_status_is_reported_as_such() -> None:
    data = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
    answer = ResponseReader().feed(data)
    assert answer is not None
    assert (answer.status, answer.keep_alive) == (503, False)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", "more bytes than Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n", "body larger than"),
    ],
)
def test_what_is_not_http_is_refused_naming_why(data: bytes, reason: str) -> None:
    with pytest.raises(ResponseError, match=reason):
        ResponseReader().feed(data)


def test_a_close_in_the_middle_of_an_answer_is_an_error() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    with pytest.raises(ResponseError, match="closed before the end"):
        reader.eof()


def test_the_request_names_the_host_and_path() -> None:
    request = request_bytes("[fd00::1]:8000", "/metrics")
    assert request.startswith(b"GET /metrics HTTP/1.1\r\nHost: [fd00::1]:8000\r\n")
