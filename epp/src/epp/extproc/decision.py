"""What a servicer's ``decide`` answers about a request: route it, answer it now, or let it pass.

- :class:`Route`: set these headers (and dynamic metadata) and clear the route cache; the request
  goes on to a backend and the stream follows its response.
- :class:`Answer`: an ImmediateResponse; Envoy answers the client itself and the exchange ends.
- :data:`PASS`: continue unchanged; the proxy's own routes decide.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse
from google.protobuf.struct_pb2 import Struct

from epp.extproc.messages import CONTINUE_REQUEST_HEADERS, route_request_headers


@dataclass(frozen=True, slots=True)
class Route:
    headers: tuple[HeaderValueOption, ...]
    metadata: Struct | None = None
    # Request headers to remove (the front door's key headers).
    remove: tuple[str, ...] = ()

    def response(self) -> ProcessingResponse:
        return route_request_headers(self.headers, self.metadata, self.remove)


@dataclass(frozen=True, slots=True)
class Answer:
    """``response`` holds an ``immediate_response``."""

    response: ProcessingResponse


@dataclass(frozen=True, slots=True)
class Pass:
    def response(self) -> ProcessingResponse:
        return CONTINUE_REQUEST_HEADERS


PASS = Pass()

Decision = Route | Answer | Pass
