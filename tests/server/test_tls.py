"""TLS and mutual TLS on the real command, with a CA and certificates this test makes."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from serverproc import SMALL

from neural_attn.client import AttentionClient
from neural_attn.errors import ServerUnavailableError

pytestmark = pytest.mark.slow
x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

CLIENT_BIN = Path(sys.executable).with_name("neural-attn-client")


def _name(common: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(subject, key, issuer, issuer_key, *, ca=False, san=None, usage=None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> str:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, a stranger's."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(_name("test CA"), ca_key, _name("test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _issue(
        _name("localhost"), server_key, ca.subject, ca_key, san=san,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )  # fmt: skip
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        _name("a client"), client_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _issue(_name("other CA"), other_key, _name("other CA"), other_key, ca=True)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _issue(
        _name("stranger"), stranger_key, other_ca.subject, other_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )  # fmt: skip
    return {
        "ca": _write(d / "ca.pem", cert=ca),
        "server_cert": _write(d / "server.pem", cert=server),
        "server_key": _write(d / "server.key", key=server_key),
        "client_cert": _write(d / "client.pem", cert=client),
        "client_key": _write(d / "client.key", key=client_key),
        "stranger_cert": _write(d / "stranger.pem", cert=stranger),
        "stranger_key": _write(d / "stranger.key", key=stranger_key),
    }


def _tls_args(pki, *extra: str) -> tuple[str, ...]:
    return (
        "--host", "127.0.0.1", "--port", "0",
        "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], *extra,
    )  # fmt: skip


def _creds(pki, *, cert: str | None = None, key: str | None = None):
    return grpc.ssl_channel_credentials(
        Path(pki["ca"]).read_bytes(),
        Path(key).read_bytes() if key else None,
        Path(cert).read_bytes() if cert else None,
    )


def test_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(start_server, pki):
    server = start_server(*_tls_args(pki)).wait_serving(credentials=_creds(pki))
    assert "(TLS, no token)" in server.log()
    with AttentionClient(server.target, tls_ca=pki["ca"], timeout=120) as client:
        assert client.compile(SMALL, backend="pytorch").attention_layers
    with AttentionClient(server.target, timeout=10, connect_timeout=2) as plain:
        with pytest.raises(ServerUnavailableError, match="TLS settings"):
            plain.compile(SMALL, backend="pytorch")
    # A client that does not trust the CA (the system roots) does not connect either.
    with AttentionClient(server.target, tls=True, timeout=10, connect_timeout=2) as wrong:
        with pytest.raises(ServerUnavailableError):
            wrong.compile(SMALL, backend="pytorch")
    # `credentials=` takes any grpc.ChannelCredentials.
    with AttentionClient(server.target, credentials=_creds(pki), timeout=60) as client:
        assert client.compile(SMALL, backend="pytorch").cached


def test_mutual_tls_needs_a_client_certificate_its_ca_signed(start_server, pki):
    args = _tls_args(pki, "--tls-client-ca", pki["ca"])
    mtls = _creds(pki, cert=pki["client_cert"], key=pki["client_key"])
    server = start_server(*args).wait_serving(credentials=mtls)
    assert "(mutual TLS, no token)" in server.log()
    with AttentionClient(
        server.target,
        tls_ca=pki["ca"],
        tls_cert=pki["client_cert"],
        tls_key=Path(pki["client_key"]).read_bytes(),  # paths or PEM bytes
        timeout=120,
    ) as client:
        assert client.compile(SMALL, backend="pytorch").attention_layers
    for cert, key in ((None, None), (pki["stranger_cert"], pki["stranger_key"])):
        with AttentionClient(
            server.target, tls_ca=pki["ca"], tls_cert=cert, tls_key=key, timeout=10,
            connect_timeout=2,
        ) as client:  # fmt: skip
            with pytest.raises(ServerUnavailableError):
                client.compile(SMALL, backend="pytorch")


def test_the_cli_speaks_mutual_tls_by_flags_and_by_environment(start_server, pki, tmp_path):
    args = _tls_args(pki, "--tls-client-ca", pki["ca"])
    mtls = _creds(pki, cert=pki["client_cert"], key=pki["client_key"])
    server = start_server(*args).wait_serving(credentials=mtls)
    model = tmp_path / "small.neural"
    model.write_text(SMALL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURAL_ATTN_")}
    by_flags = subprocess.run(
        [str(CLIENT_BIN), "visualize", str(model), "--backend", "pytorch",
         "--server", server.target, "--tls-ca", pki["ca"],
         "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"]],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert by_flags.returncode == 0, by_flags.stderr
    assert "transformer_encoder_1" in by_flags.stdout
    by_env = subprocess.run(
        [str(CLIENT_BIN), "visualize", str(model), "--backend", "pytorch"],
        capture_output=True, text=True, timeout=300,
        env={**env, "NEURAL_ATTN_SERVER": server.target, "NEURAL_ATTN_TLS_CA": pki["ca"],
             "NEURAL_ATTN_CLIENT_CERT": pki["client_cert"],
             "NEURAL_ATTN_CLIENT_KEY": pki["client_key"],
             # the server's variables in the same environment do not confuse the client
             "NEURAL_ATTN_TLS_CERT": pki["server_cert"],
             "NEURAL_ATTN_TLS_KEY": pki["server_key"]},
    )  # fmt: skip
    assert by_env.returncode == 0, by_env.stderr
    assert "transformer_encoder_1" in by_env.stdout
    no_cert = subprocess.run(
        [str(CLIENT_BIN), "visualize", str(model), "--backend", "pytorch",
         "--server", server.target, "--tls-ca", pki["ca"]],
        capture_output=True, text=True, timeout=300,
        env={**env, "NEURAL_ATTN_CONNECT_TIMEOUT": "2"},
    )  # fmt: skip
    assert no_cert.returncode == 1
    assert "no neural-attn server answered" in no_cert.stderr
