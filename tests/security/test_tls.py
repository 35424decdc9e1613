"""TLS and mTLS on the gRPC listener, with a throwaway CA.

In process (both backends are not needed: TLS is below the metadata store):
TLS works, a plaintext client or one that does not trust the CA fails; with
a client CA (mTLS) a client without a certificate, or with one from another
CA, fails and one with a certificate of that CA works — API keys are still
required on top. Through ``sessiond serve``: the flags and environment
variables, and the errors a misconfiguration gets.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessiond.client import AsyncClient, SessiondError, Unauthenticated, Unavailable
from sessiond.client.errors import InvalidArgument
from sessiond.server.cli import build_parser, serve
from sessiond.server.config import TlsConfig
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.services import free_port
from tests.helpers import clean_env, sessiond_cmd, spawn_server
from tests.security.certs import CertificateAuthority


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
async def tls_server(ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[RunningServer]:
    pem = ca.server()
    tls = TlsConfig(cert_chain=pem.cert, private_key=pem.key)
    async with run_server(tmp_path / "srv", f"sqlite:///{tmp_path / 'meta.db'}", tls=tls) as server:
        yield server


@pytest.fixture
async def mtls_server(ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[RunningServer]:
    pem = ca.server()
    tls = TlsConfig(cert_chain=pem.cert, private_key=pem.key, client_ca=ca.pem)
    async with run_server(tmp_path / "srv", f"sqlite:///{tmp_path / 'meta.db'}", tls=tls) as server:
        yield server


async def test_tls_works_with_the_ca(tls_server: RunningServer, ca: CertificateAuthority) -> None:
    _, token = await tls_server.new_tenant()
    async with AsyncClient(
        tls_server.target, token=token, tls=True, root_certificates=ca.pem, timeout=10
    ) as client:
        created = await client.create_session(labels={"over": "tls"})
        assert (await client.get_session(created.session_id)).labels["over"] == "tls"
        assert await client.health() == "SERVING"
    # TLS does not replace credentials.
    async with AsyncClient(
        tls_server.target, tls=True, root_certificates=ca.pem, timeout=10
    ) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.list_sessions()


async def test_plaintext_client_fails(tls_server: RunningServer) -> None:
    _, token = await tls_server.new_tenant()
    async with AsyncClient(tls_server.target, token=token, timeout=5) as client:
        with pytest.raises(Unavailable):
            await client.list_sessions()


async def test_client_that_does_not_trust_the_ca_fails(tls_server: RunningServer) -> None:
    other = CertificateAuthority("someone else")
    _, token = await tls_server.new_tenant()
    for roots in (other.pem, None):  # another CA; the system roots
        async with AsyncClient(
            tls_server.target, token=token, tls=True, root_certificates=roots, timeout=5
        ) as client:
            with pytest.raises(Unavailable):
                await client.list_sessions()


async def test_mtls_requires_a_client_certificate(
    mtls_server: RunningServer, ca: CertificateAuthority
) -> None:
    _, token = await mtls_server.new_tenant()
    async with AsyncClient(
        mtls_server.target, token=token, root_certificates=ca.pem, timeout=5
    ) as no_cert:
        with pytest.raises(Unavailable):
            await no_cert.list_sessions()
    stranger = CertificateAuthority("stranger").client()
    async with AsyncClient(
        mtls_server.target,
        token=token,
        root_certificates=ca.pem,
        client_cert=stranger.cert,
        client_key=stranger.key,
        timeout=5,
    ) as wrong_ca:
        with pytest.raises(Unavailable):
            await wrong_ca.list_sessions()


async def test_mtls_with_a_client_certificate_works(
    mtls_server: RunningServer, ca: CertificateAuthority
) -> None:
    _, token = await mtls_server.new_tenant()
    pem = ca.client()
    async with AsyncClient(
        mtls_server.target,
        token=token,
        root_certificates=ca.pem,
        client_cert=pem.cert,
        client_key=pem.key,
        timeout=10,
    ) as client:
        created = await client.create_session()
        assert [s.session_id for s in (await client.list_sessions()).sessions] == [
            created.session_id
        ]
    # A certificate is not a tenant credential: the API key is still needed.
    async with AsyncClient(
        mtls_server.target,
        root_certificates=ca.pem,
        client_cert=pem.cert,
        client_key=pem.key,
        timeout=10,
    ) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.list_sessions()


def test_client_cert_needs_its_key() -> None:
    with pytest.raises(ValueError, match="together"):
        AsyncClient("127.0.0.1:1", client_cert=b"x")


# -- sessiond serve ------------------------------------------------------------------


def tls_health(target: str, roots: bytes, cert: tuple[bytes, bytes] | None = None) -> str:
    creds = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=cert[1] if cert else None,
        certificate_chain=cert[0] if cert else None,
    )
    with grpc.secure_channel(target, creds) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError as exc:
            return f"error:{exc.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def wait_tls_serving(
    target: str, proc: subprocess.Popen[bytes], roots: bytes, cert: tuple[bytes, bytes]
) -> None:
    deadline = time.monotonic() + 30
    status = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"server exited with {proc.returncode}: {err[-2000:]}")
        status = tls_health(target, roots, cert)
        if status == "SERVING":
            return
        time.sleep(0.1)
    raise AssertionError(f"not SERVING over TLS: {status}")


def test_serve_with_mtls_from_environment(tmp_path: Path, ca: CertificateAuthority) -> None:
    server_cert, server_key = ca.server().write(tmp_path / "pki", "server")
    ca_file = tmp_path / "pki" / "ca.crt"
    ca_file.write_bytes(ca.pem)
    client = ca.client()
    target = f"127.0.0.1:{free_port()}"
    env = clean_env(
        SESSIOND_TLS_CERT=str(server_cert),
        SESSIOND_TLS_KEY=str(server_key),
        SESSIOND_TLS_CLIENT_CA=str(ca_file),
    )
    proc = spawn_server(["--listen", target, "--auth", "api-key"], cwd=tmp_path, env=env)
    try:
        wait_tls_serving(target, proc, ca.pem, (client.cert, client.key))
        assert tls_health(target, ca.pem).startswith("error:")  # no client certificate
        with grpc.insecure_channel(target) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
                raise AssertionError("plaintext health check succeeded")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _serve_fails(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        sessiond_cmd("serve", *args),
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def test_serve_tls_flag_errors_name_the_flag(
    tmp_path: Path, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SESSIOND_TLS_CERT", "SESSIOND_TLS_KEY", "SESSIOND_TLS_CLIENT_CA"):
        monkeypatch.delenv(name, raising=False)
    cert, key = ca.server().write(tmp_path / "pki", "server")
    cases = [
        (["--tls-cert", str(cert)], "--tls-key"),
        (["--tls-key", str(key)], "--tls-cert"),
        (["--tls-client-ca", str(cert)], "--tls-client-ca"),
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key)], "--tls-cert"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path)], "--tls-key"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "pki")], "--tls-key"),
        (
            ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", "/nonexistent"],
            "--tls-client-ca",
        ),
    ]
    (tmp_path / "not-pem").write_text("hello")
    cases.append((["--tls-cert", str(tmp_path / "not-pem"), "--tls-key", str(key)], "--tls-cert"))
    for args, flag in cases:
        parsed = build_parser().parse_args(["serve", "--listen", "127.0.0.1:1", *args])
        with pytest.raises(InvalidArgument) as err:
            serve._config(parsed)
        assert str(err.value).startswith(flag), (args, str(err.value))
    parsed = build_parser().parse_args(
        ["serve", "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(cert)]
    )
    tls = serve._config(parsed).tls
    assert tls is not None and tls.cert_chain == cert.read_bytes() and tls.client_ca
    # And as the user sees it: one line naming the flag, exit status 2.
    code, stderr = _serve_fails(
        tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(cert)
    )
    lines = [ln for ln in stderr.splitlines() if ln.startswith("sessiond: error:")]
    assert code == 2 and len(lines) == 1 and "--tls-key" in lines[0], stderr


def test_tls_does_not_lift_the_loopback_rule_for_auth_none(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    cert, key = ca.server().write(tmp_path / "pki", "server")
    code, stderr = _serve_fails(
        tmp_path,
        "--listen",
        f"0.0.0.0:{free_port()}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    assert code == 2 and "--auth api-key" in stderr


async def test_errors_are_sessiond_errors(tls_server: RunningServer) -> None:
    # A failed handshake surfaces as the project's error tree, not grpc's.
    async with AsyncClient(tls_server.target, timeout=5) as client:
        with pytest.raises(SessiondError):
            await client.health()
