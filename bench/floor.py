"""A do-nothing ext_proc server that exchanges the EPP's messages: the floor of ``make bench-overhead``.

It answers every request as the EPP answers it on the unified-pool gateway, message for message,
and does nothing else: no JSON parsing, no scheduling, no metrics, no logging. Request headers
(when the body follows) get no answer until the body has come; at the body's end the answer to the
headers routes the request to the one ``--destination`` (header, dynamic metadata and a cleared
route cache, as the EPP's pick does), then the body goes back in chunks of at most 62,000 bytes;
response headers are answered with "skip the body" and the stream ends (where Envoy shows the EPP
the response full duplex, the response body chunks go back unchanged and the stream ends with the
last). What this server costs per
request, next to what the EPP costs, is what the gRPC transport alone costs a Python (``grpc.aio``)
processor on this machine, and what is left is the EPP's own work.

``python -m bench.floor --destination HOST:PORT [--event-loop uvloop|asyncio]`` prints its gRPC port
on one line once it serves. ``make bench-overhead`` starts it with the gRPC runtime settings the
``epp`` command sets (``epp.launch``), so that both sides pay the same transport.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence

import grpc
import uvloop
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
    ExternalProcessorServicer,
    add_ExternalProcessorServicer_to_server,
)
from epp.contract import DESTINATION_HEADER
from epp.extproc.messages import (
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_HEADERS_SKIP_BODY,
    CONTINUE_RESPONSE_TRAILERS,
    destination_metadata,
    header_option,
    request_body_chunks,
    response_body_chunk,
    route_request_headers,
)


class FloorServicer(ExternalProcessorServicer):  # type: ignore[misc]
    """Every request to ``destination``, with the EPP's messages and none of its work."""

    def __init__(self, destination: str) -> None:
        self._route: ProcessingResponse = route_request_headers(
            [header_option(DESTINATION_HEADER, destination)], destination_metadata(destination)
        )

    async def Process(
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        read, write, route = context.read, context.write, self._route
        parts: list[bytes] = []
        duplex_response = False
        while True:
            request = await read()
            if request is grpc.aio.EOF:
                return
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                mode = request.protocol_config.response_body_mode
                duplex_response = mode == ProcessingMode.FULL_DUPLEX_STREAMED
                if request.request_headers.end_of_stream:
                    await write(route)
            elif kind == "request_body":
                message = request.request_body
                parts.append(message.body)
                if message.end_of_stream:
                    await write(route)
                    for chunk in request_body_chunks(b"".join(parts)):
                        await write(chunk)
                    parts = []
            elif kind == "request_trailers":
                await write(CONTINUE_REQUEST_TRAILERS)
            elif kind == "response_headers":
                if not duplex_response or request.response_headers.end_of_stream:
                    await write(CONTINUE_RESPONSE_HEADERS_SKIP_BODY)
                    return
                await write(CONTINUE_RESPONSE_HEADERS)
            elif kind == "response_body":
                message = request.response_body
                if duplex_response:
                    await write(response_body_chunk(message.body, message.end_of_stream))
                else:
                    await write(CONTINUE_RESPONSE_BODY)
                if message.end_of_stream:
                    return
            elif kind == "response_trailers":
                await write(CONTINUE_RESPONSE_TRAILERS)
                return


async def serve(destination: str, host: str = "127.0.0.1") -> None:
    server = grpc.aio.server()
    add_ExternalProcessorServicer_to_server(FloorServicer(destination), server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--destination", required=True, help="host:port every request is routed to")
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    run = uvloop.run if args.event_loop == "uvloop" else asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.destination))
    return 0


if __name__ == "__main__":
    sys.exit(main())
