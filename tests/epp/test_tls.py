"""Secure serving: what a Google Cloud load balancer needs to reach the EPP and BBR (HTTP/2 + TLS)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from epp.cli import BbrSettings, serve_bbr
from epp.tls import load_pair, self_signed, server_credentials
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import ValidationError

from tests.epp.gateway_support import serving


async def _health_server(credentials: grpc.ServerCredentials) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("readiness", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


async def _check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="readiness"), timeout=5
    )
    return int(reply.status)


async def test_a_tls_client_reaches_the_server_on_its_self_signed_certificate() -> None:
    key, cert = self_signed("epp")
    server, port = await _health_server(grpc.ssl_server_credentials([(key, cert)]))
    try:
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", tls,
                                           options=[("grpc.ssl_target_name_override", "epp")]) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plaintext:
            with pytest.raises(grpc.aio.AioRpcError):
                await _check(plaintext)
    finally:
        await server.stop(None)


async def test_a_mounted_certificate_is_served(tmp_path: Path) -> None:
    key, cert = self_signed("bbr")
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    server, port = await _health_server(server_credentials(tmp_path, "ignored"))
    try:
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", tls,
                                           options=[("grpc.ssl_target_name_override", "bbr")]) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)


def test_a_certificate_folder_without_its_key_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_bytes(self_signed("epp")[1])
    with pytest.raises(FileNotFoundError, match=r"tls\.key"):
        load_pair(tmp_path)


async def _ext_proc_health(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", "bbr")])
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor"), timeout=5
        )
    return int(reply.status)


async def test_a_secure_bbr_speaks_tls_on_its_ext_proc_port_and_plaintext_on_its_health_port(
    tmp_path: Path,
) -> None:
    key, cert = self_signed("bbr")
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    settings = BbrSettings(bind="127.0.0.1", grpc_port=0, health_port=0, metrics_port=0,
                           secure_serving=True, cert_path=tmp_path)
    async with serving(serve_bbr, settings) as ports:
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        assert await _ext_proc_health(ports.grpc, tls) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError):
            await _ext_proc_health(ports.grpc, None)
        assert await _ext_proc_health(ports.health, None) == health_pb2.HealthCheckResponse.SERVING


async def test_a_secure_bbr_without_a_certificate_makes_its_own() -> None:
    settings = BbrSettings(bind="127.0.0.1", grpc_port=0, health_port=0, metrics_port=0, secure_serving=True)
    async with serving(serve_bbr, settings) as ports:
        with pytest.raises(grpc.aio.AioRpcError):
            await _ext_proc_health(ports.grpc, None)  # not plaintext: TLS with a certificate of its own
        assert await _ext_proc_health(ports.health, None) == health_pb2.HealthCheckResponse.SERVING


def test_a_certificate_folder_without_secure_serving_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="--cert-path only applies with --secure-serving"):
        BbrSettings(grpc_port=0, health_port=0, cert_path=tmp_path)
