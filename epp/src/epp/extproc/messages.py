"""Builders for the ext_proc messages both servers send back to Envoy.

Header values go out in ``raw_value`` only: Envoy sends values in ``raw_value`` and rejects a
mutation that sets both ``value`` and ``raw_value``. Messages that never change are built once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyMutation,
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    HttpHeaders,
    ImmediateResponse,
    ProcessingResponse,
    StreamedBodyResponse,
    TrailersResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct, Value

from epp.contract import DESTINATION_HEADER, DESTINATION_METADATA_NAMESPACE

# Envoy's gRPC message limit is 64 KiB by default; upstream EPPs stream the body back in
# chunks of at most this size to leave room for the envelope.
MAX_BODY_CHUNK = 62_000

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Answers that carry nothing: "continue unchanged".
CONTINUE_REQUEST_HEADERS = ProcessingResponse(request_headers=HeadersResponse())
CONTINUE_RESPONSE_HEADERS = ProcessingResponse(response_headers=HeadersResponse())
CONTINUE_RESPONSE_BODY = ProcessingResponse(response_body=BodyResponse())
CONTINUE_REQUEST_TRAILERS = ProcessingResponse(request_trailers=TrailersResponse())
CONTINUE_RESPONSE_TRAILERS = ProcessingResponse(response_trailers=TrailersResponse())
# Mode overrides answering response headers (honoured when the filter allows mode overrides and the
# response body mode is not FULL_DUPLEX_STREAMED).
CONTINUE_RESPONSE_HEADERS_SKIP_BODY = ProcessingResponse(
    response_headers=HeadersResponse(),
    mode_override=ProcessingMode(
        response_body_mode=ProcessingMode.NONE, response_trailer_mode=ProcessingMode.SKIP
    ),
)
CONTINUE_RESPONSE_HEADERS_BUFFER_BODY = ProcessingResponse(
    response_headers=HeadersResponse(),
    mode_override=ProcessingMode(
        response_body_mode=ProcessingMode.BUFFERED, response_trailer_mode=ProcessingMode.SKIP
    ),
)
# Read a complete answer's body up to Envoy's buffer limit (for its usage), passing the rest unread.
CONTINUE_RESPONSE_HEADERS_BUFFER_PARTIAL_BODY = ProcessingResponse(
    response_headers=HeadersResponse(),
    mode_override=ProcessingMode(
        response_body_mode=ProcessingMode.BUFFERED_PARTIAL, response_trailer_mode=ProcessingMode.SKIP
    ),
)
EMPTY_RESPONSE_BODY_END = ProcessingResponse(
    response_body=BodyResponse(
        response=CommonResponse(
            body_mutation=BodyMutation(streamed_response=StreamedBodyResponse(body=b"", end_of_stream=True))
        )
    )
)


def header_option(name: str, value: str) -> HeaderValueOption:
    """Set (overwrite or add) header ``name`` to ``value``, written in ``raw_value`` only."""
    return HeaderValueOption(header=HeaderValue(key=name, raw_value=value.encode()), append_action=_OVERWRITE)


def headers_to_dict(headers: HttpHeaders) -> dict[str, str]:
    """Header map of an ext_proc message, names lower-cased, values from ``raw_value`` (or ``value``)."""
    result: dict[str, str] = {}
    for header in headers.headers.headers:
        raw = header.raw_value
        result[header.key.lower()] = raw.decode("utf-8", "replace") if raw else header.value
    return result


def route_request_headers(
    options: Iterable[HeaderValueOption], metadata: Struct | None = None, remove: Iterable[str] = ()
) -> ProcessingResponse:
    """The answer to request headers: set ``options``, remove the ``remove`` headers, clear the route
    cache, optional dynamic metadata."""
    response = ProcessingResponse()
    common = response.request_headers.response
    common.header_mutation.set_headers.extend(options)
    common.header_mutation.remove_headers.extend(remove)
    common.clear_route_cache = True
    if metadata is not None:
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def destination_metadata(addresses: str) -> Struct:
    """Dynamic metadata ``envoy.lb: {x-gateway-destination-endpoint: addresses}`` (one address, or
    ranked ones comma-separated)."""
    inner = Struct(fields={DESTINATION_HEADER: Value(string_value=addresses)})
    return Struct(fields={DESTINATION_METADATA_NAMESPACE: Value(struct_value=inner)})


def _streamed(body: bytes, end_of_stream: bool, *, request: bool) -> ProcessingResponse:
    # Built in place: a message passed to a constructor is copied, and a chunk is up to 62 KB.
    response = ProcessingResponse()
    body_response = response.request_body if request else response.response_body
    streamed = body_response.response.body_mutation.streamed_response
    streamed.body = body
    streamed.end_of_stream = end_of_stream
    return response


def request_body_chunks(body: bytes, *, end_of_stream: bool = True) -> Iterator[ProcessingResponse]:
    """The request body streamed back to Envoy in chunks of at most ``MAX_BODY_CHUNK`` bytes.

    The last chunk carries ``end_of_stream`` (unless trailers follow); an empty body is one empty chunk.
    """
    size = len(body)
    if size <= MAX_BODY_CHUNK:
        yield _streamed(body, end_of_stream, request=True)
        return
    view = memoryview(body)
    for start in range(0, size, MAX_BODY_CHUNK):
        stop = start + MAX_BODY_CHUNK
        yield _streamed(bytes(view[start:stop]), end_of_stream and stop >= size, request=True)


def response_body_chunk(body: bytes, end_of_stream: bool) -> ProcessingResponse:
    """One response body chunk echoed back unchanged (full-duplex response mode)."""
    if not body and end_of_stream:
        return EMPTY_RESPONSE_BODY_END
    return _streamed(body, end_of_stream, request=False)


def immediate(
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: Iterable[tuple[str, str]] = (),
) -> ProcessingResponse:
    """An ImmediateResponse: Envoy answers the client with ``status``, ``headers`` and ``body`` itself."""
    options = [header_option("content-type", content_type), *(header_option(k, v) for k, v in headers)]
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=status), headers=HeaderMutation(set_headers=options), body=body
        )
    )


def with_request_header(response: ProcessingResponse, *options: HeaderValueOption) -> ProcessingResponse:
    """A copy of the answer to request headers ``response`` (never a shared constant changed) that
    also sets ``options`` on the request."""
    copy = ProcessingResponse()
    copy.CopyFrom(response)
    copy.request_headers.response.header_mutation.set_headers.extend(options)
    return copy


def with_response_header(response: ProcessingResponse, name: str, value: str) -> ProcessingResponse:
    """A copy of ``response`` (an answer to response headers, or an ImmediateResponse) that also sets
    header ``name`` on what the client gets."""
    copy = ProcessingResponse()
    copy.CopyFrom(response)
    option = header_option(name, value)
    if copy.HasField("immediate_response"):
        copy.immediate_response.headers.set_headers.append(option)
    else:
        copy.response_headers.response.header_mutation.set_headers.append(option)
    return copy
