"""A scripted Envoy for protocol tests: drives one ext_proc stream over a real gRPC channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue, Metadata
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)
from epp.datastore import Datastore, Endpoint
from epp.extproc import ExtProcServer, Handler, StreamDriver
from epp.health import Health
from epp.scheduling.types import LLMRequest, SchedulingResult
from google.protobuf.struct_pb2 import ListValue, Struct, Value

FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED


class LeastBusyScheduler:
    """A stand-in scheduler: the serving endpoint (within the subset) with the fewest in-flight requests."""

    def schedule(
        self, request: LLMRequest, candidates: Sequence[Endpoint], *, explain: bool = False
    ) -> SchedulingResult:
        serving = [e for e in candidates if e.serves(request.model)]
        if not serving:
            return SchedulingResult(endpoint=None, rejected_by="model")
        if request.subset is not None:
            serving = [e for e in serving if e.address in request.subset]
            if not serving:
                return SchedulingResult(endpoint=None, rejected_by="subset")
        best = min(serving, key=lambda e: e.in_flight)
        return SchedulingResult(endpoint=best, endpoints=(best,))


def pool(*endpoints: tuple[str, int, Sequence[str]], pool_models: Sequence[str] = ()) -> Datastore:
    """A synced datastore whose endpoints' models are known (``pool_models``: configured ones)."""
    datastore = Datastore(pool_models)
    for ip, port, models in endpoints:
        endpoint = datastore.upsert(Endpoint(name=f"pod-{port}", ip=ip, port=port))
        datastore.set_models(endpoint.address, frozenset(models), {})
    datastore.synced = True
    return datastore


@asynccontextmanager
async def serving(
    servicer: Handler[Any] | StreamDriver[Any],
) -> AsyncIterator[external_processor_pb2_grpc.ExternalProcessorStub]:
    server = ExtProcServer(servicer, Health(), bind="127.0.0.1", grpc_port=0, health_port=0)
    ports = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            yield external_processor_pb2_grpc.ExternalProcessorStub(channel)
    finally:
        await server.stop(0)


def header_map(headers: Mapping[str, str]) -> HeaderMap:
    return HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()])


def subset_hint(addresses: Sequence[str]) -> Metadata:
    values = ListValue(values=[Value(string_value=a) for a in addresses])
    inner = Struct(fields={"x-gateway-destination-endpoint-subset": Value(list_value=values)})
    return Metadata(filter_metadata={"envoy.lb.subset_hint": inner})


@dataclass
class Outcome:
    """What the processor answered for one request."""

    responses: list[ProcessingResponse] = field(default_factory=list)

    @property
    def immediate(self) -> ProcessingResponse | None:
        found = [r for r in self.responses if r.HasField("immediate_response")]
        return found[0] if found else None

    def error(self) -> tuple[int, dict[str, object]]:
        assert self.immediate is not None, f"expected an ImmediateResponse, got {self.responses}"
        response = self.immediate.immediate_response
        return response.status.code, json.loads(response.body)

    @property
    def set_headers(self) -> dict[str, str]:
        headers = self.responses[0].request_headers.response.header_mutation.set_headers
        for option in headers:
            assert option.header.value == "", "header mutations must use raw_value only"
        return {o.header.key: o.header.raw_value.decode() for o in headers}

    @property
    def body_chunks(self) -> list[tuple[bytes, bool]]:
        return [
            (r.request_body.response.body_mutation.streamed_response.body,
             r.request_body.response.body_mutation.streamed_response.end_of_stream)
            for r in self.responses if r.HasField("request_body")
        ]


class EnvoyStream:
    """One HTTP request as Envoy's ext_proc filter would present it (FULL_DUPLEX_STREAMED).

    ``protocol_config=False`` plays an Envoy older than 1.34 (or another proxy), which does not say
    which body modes it was configured with.
    """

    def __init__(
        self,
        stub: external_processor_pb2_grpc.ExternalProcessorStub,
        *,
        response_mode: int = FULL_DUPLEX,
        protocol_config: bool = True,
    ) -> None:
        # Messages go out through a request iterator, as a proxy's stream does: once the processor
        # has answered and closed the stream, what is left is dropped instead of failing the call.
        self._outbox: asyncio.Queue[ProcessingRequest | None] = asyncio.Queue()
        self.call = stub.Process(self._requests())
        self.response_mode = response_mode
        self.protocol_config = protocol_config

    async def send_request(
        self,
        body: bytes | None,
        *,
        method: str = "POST",
        path: str = "/v1/completions",
        headers: Mapping[str, str] | None = None,
        metadata: Metadata | None = None,
        chunk_size: int = 16_384,
        trailers: bool = False,
        content_length: bool = True,
    ) -> Outcome:
        """``content_length=False``: a chunked upload, whose length the headers do not tell."""
        all_headers = {":method": method, ":path": path, ":authority": "gateway", "x-request-id": "req-1"}
        if body is not None and content_length:
            all_headers["content-length"] = str(len(body))
            all_headers["content-type"] = "application/json"
        all_headers.update(headers or {})
        first = ProcessingRequest(
            request_headers=HttpHeaders(headers=header_map(all_headers), end_of_stream=body is None)
        )
        if self.protocol_config:
            first.protocol_config.CopyFrom(
                ProtocolConfiguration(request_body_mode=FULL_DUPLEX, response_body_mode=self.response_mode)
            )
        if metadata is not None:
            first.metadata_context.CopyFrom(metadata)
        await self.write(first)
        # Like Envoy, read while sending the body and stop sending once the processor has answered
        # (a refusal before the whole body is sent, e.g. a 413).
        answered = asyncio.ensure_future(self.call.read())
        if body is not None:
            pieces = [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]
            messages = [
                ProcessingRequest(request_body=HttpBody(body=piece, end_of_stream=index == len(pieces) - 1
                                                        and not trailers))
                for index, piece in enumerate(pieces)
            ]
            if trailers:
                messages.append(ProcessingRequest(request_trailers=HttpTrailers()))
            for message in messages:
                if not await self._write_unless_answered(message, answered):
                    break
        outcome = Outcome()
        first_answer = await answered
        outcome.responses.append(first_answer)
        if first_answer.HasField("immediate_response"):
            await self.expect_end()
            return outcome
        if body is None:
            return outcome
        echoed = 0
        while echoed < len(body) or (len(body) == 0 and not outcome.body_chunks):
            answer = await self.call.read()
            outcome.responses.append(answer)
            echoed += len(answer.request_body.response.body_mutation.streamed_response.body)
        if trailers:
            outcome.responses.append(await self.call.read())
        return outcome

    async def _requests(self) -> AsyncIterator[ProcessingRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    async def write(self, message: ProcessingRequest) -> None:
        """Send one message to the processor."""
        await self._outbox.put(message)

    async def done_writing(self) -> None:
        await self._outbox.put(None)

    async def _write_unless_answered(
        self, message: ProcessingRequest, answered: asyncio.Future[ProcessingResponse]
    ) -> bool:
        """Send ``message`` unless the processor has answered (``answered`` is done); False then, and
        nothing more is to be sent."""
        await asyncio.sleep(0)  # let an answer already on its way arrive first
        if answered.done():
            return False
        await self.write(message)
        return True

    async def send_response_headers(
        self, status: int, *, content_type: str = "application/json"
    ) -> ProcessingResponse:
        headers = {":status": str(status), "content-type": content_type}
        await self.write(ProcessingRequest(response_headers=HttpHeaders(headers=header_map(headers))))
        answer: ProcessingResponse = await self.call.read()
        return answer

    async def send_response(
        self, status: int, body: bytes, *, content_type: str = "application/json", chunk_size: int = 16_384
    ) -> list[ProcessingResponse]:
        answers = [await self.send_response_headers(status, content_type=content_type)]
        pieces = [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            await self.write(ProcessingRequest(response_body=HttpBody(body=piece, end_of_stream=last)))
            answers.append(await self.call.read())
        await self.done_writing()
        return answers

    async def expect_end(self, within: float = 5.0) -> None:
        """After an ImmediateResponse Envoy expects nothing more: the processor must end the stream.

        Envoy keeps the stream open until the processor closes it, so reading on catches any message a
        processor sends after its final answer (an echoed body chunk, a second answer).
        """
        async with asyncio.timeout(within):
            after = await self.call.read()
        if after is not grpc.aio.EOF:
            raise AssertionError(f"the processor sent a message after its ImmediateResponse: {after}")

    def cancel(self) -> None:
        self.call.cancel()
