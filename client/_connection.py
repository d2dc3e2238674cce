"""How the SDK connects: targets, TLS, retries, keepalive, deadlines, waiting for a server.

- Targets: "host:port", any gRPC target ("dns:///name:port", "ipv4:..."), or a comma list of
  "host:port" replicas, which becomes one `ipv4:`/`ipv6:` target balanced `round_robin`.
- `RPCS` lists every RPC with its default deadline and whether it is retried: every call of
  ours is idempotent (Compile is content-addressed, the rest read), so the service config
  retries them on UNAVAILABLE: a replica that drains or dies is skipped.
- Calls wait for a server to be ready, up to `connect_timeout` (within their deadline), so a
  call made while the server restarts goes through once it is back.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from neural_attn.errors import (
    ERROR_KIND_KEY,
    InvalidInputError,
    NeuralAttnError,
    ServerUnavailableError,
    error_for_status,
)

SERVICE = "neural_attn.v1.AttentionService"


@dataclass(frozen=True)
class Rpc:
    """How the SDK calls one RPC of the service."""

    deadline: float  # seconds when the caller sets no timeout
    # Retried on UNAVAILABLE (a replica that drains or dies is skipped): the call is idempotent.
    # gRPC retries a stream only before its first response, a client stream only while its
    # messages fit the retry buffer.
    retried: bool


# Every RPC of AttentionService (tests/server/test_client_connection.py fails when one is
# missing): generous deadlines for work that scales with the model and the sequence, short for
# a question about the server. Every call is idempotent: Compile is content-addressed (same
# request, same model_id), the others only read.
RPCS: Mapping[str, Rpc] = {
    "Compile": Rpc(600.0, retried=True),
    "ExportWeights": Rpc(600.0, retried=True),
    "ExtractAttention": Rpc(3600.0, retried=True),
    "Analyze": Rpc(3600.0, retried=True),
    "GetServerInfo": Rpc(30.0, retried=True),
    "AnalyzeHeads": Rpc(3600.0, retried=True),
    "HeadSimilarity": Rpc(3600.0, retried=True),
    "AblateHeads": Rpc(3600.0, retried=True),
    "ProfileHeads": Rpc(3600.0, retried=True),
    "CompareCheckpoints": Rpc(3600.0, retried=True),
}
DEFAULT_DEADLINES: Mapping[str, float] = {name: rpc.deadline for name, rpc in RPCS.items()}
DEFAULT_DEADLINE = 600.0  # a call kind the table does not name (a newer server's)
DEFAULT_CONNECT_TIMEOUT = 20.0

SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [
                {"service": SERVICE, "method": name} for name, rpc in RPCS.items() if rpc.retried
            ],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    # Retries stop while most calls fail, so an outage is not multiplied by five.
    "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
}

TLS_ENV = {
    "tls_ca": "NEURAL_ATTN_TLS_CA",
    "tls_cert": "NEURAL_ATTN_CLIENT_CERT",
    "tls_key": "NEURAL_ATTN_CLIENT_KEY",
}


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        # Requests carrying weights files are large; keep up to 16 MiB of one for its retries.
        ("grpc.per_rpc_retry_buffer_size", 16 * 1024 * 1024),
        ("grpc.retry_buffer_size", 64 * 1024 * 1024),
        # Keepalive during calls only: a long stream through a NAT or proxy stays open.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # A server that restarts is found again within a second, not after minutes of back-off
        # (the default grows to 120 s); a refused connect costs the server nothing. A connect
        # attempt itself still gets the default 20 s (grpc.min_reconnect_backoff_ms).
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1_000),
        ("grpc.dns_min_time_between_resolutions_ms", 5_000),
        ("grpc.primary_user_agent", "neural-attn-client"),
    ]


def _split(entry: str) -> tuple[str, str]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidInputError(f"`{entry}` in the server list is not host:port")
    return host.strip("[]"), port


def _address(entry: str) -> tuple[int, str]:
    """(4 or 6, "ip:port") for one "host:port" of a comma list; names are resolved now."""
    host, port = _split(entry)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ServerUnavailableError(f"cannot resolve `{host}`: {exc}") from None
        infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first
        ip = ipaddress.ip_address(infos[0][4][0])
    if ip.version == 6:
        return 6, f"[{ip}]:{port}"
    return 4, f"{ip}:{port}"


def normalize_target(target: str) -> str:
    """A gRPC target for "host:port", a gRPC target URI, or a comma list of "host:port"."""
    target = target.strip()
    if "," not in target or target.startswith(("ipv4:", "ipv6:")):
        return target
    entries = [e.strip() for e in target.split(",") if e.strip()]
    if any("://" in e for e in entries):
        raise InvalidInputError(
            "a comma list of servers takes host:port entries; for a name with several "
            "addresses give one dns:///name:port target"
        )
    addresses = [_address(e) for e in entries]
    versions = {v for v, _ in addresses}
    if len(versions) > 1:
        raise InvalidInputError("a comma list of servers must be all IPv4 or all IPv6")
    return f"ipv{versions.pop()}:" + ",".join(a for _, a in addresses)


def _pem(value: str | os.PathLike[str] | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {value}: {exc.strerror or exc}") from None


def channel_credentials(
    *,
    credentials: grpc.ChannelCredentials | None = None,
    tls: bool | None = None,
    tls_ca: str | os.PathLike[str] | bytes | None = None,
    tls_cert: str | os.PathLike[str] | bytes | None = None,
    tls_key: str | os.PathLike[str] | bytes | None = None,
    environ: Mapping[str, str] | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials from arguments or NEURAL_ATTN_TLS*; None for a plaintext channel.

    `tls`: True for TLS (the system roots unless `tls_ca`), False for plaintext whatever the
    environment says, None to decide from the other options and the environment. `tls_ca`: PEM
    CA that signed the server; `tls_cert`/`tls_key`: this client's certificate for mutual TLS.
    Paths or PEM bytes.
    """
    if credentials is not None:
        return credentials
    if tls is False:
        return None  # plaintext, whatever the environment says
    env = os.environ if environ is None else environ
    ca = tls_ca if tls_ca is not None else env.get(TLS_ENV["tls_ca"]) or None
    cert = tls_cert if tls_cert is not None else env.get(TLS_ENV["tls_cert"]) or None
    key = tls_key if tls_key is not None else env.get(TLS_ENV["tls_key"]) or None
    if tls is None:
        tls = env.get("NEURAL_ATTN_TLS", "").lower() in ("1", "true", "yes", "on")
    if not (tls or ca or cert or key):
        return None
    if (cert is None) != (key is None):
        raise InvalidInputError("a client certificate needs both tls_cert and tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca, "the TLS CA") if ca else None,
        private_key=_pem(key, "the TLS key") if key else None,
        certificate_chain=_pem(cert, "the TLS certificate") if cert else None,
    )


def read_token_file(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the token file {path}: {exc.strerror}") from None


class Readiness:
    """Waits, in the calling thread, until the channel is READY (or gives up).

    grpc's public `subscribe`/`channel_ready_future` run a polling thread that raises into
    stderr when the channel is closed under it, so this watches the core channel's state
    directly; a channel without one (an intercepted channel) is not gated: its calls still wait
    for readiness within their deadline.
    """

    _READY = 2  # grpc_connectivity_state READY

    def __init__(self, channel: grpc.Channel, target: str) -> None:
        self._core = getattr(channel, "_channel", None)
        if not all(
            hasattr(self._core, name)
            for name in ("check_connectivity_state", "watch_connectivity_state")
        ):
            self._core = None
        self._target = target

    def wait(self, timeout: float) -> None:
        """Return once the channel is ready; ServerUnavailableError after `timeout` s."""
        core = self._core
        if core is None:
            return
        state = core.check_connectivity_state(True)
        deadline = time.monotonic() + timeout
        while state != self._READY:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerUnavailableError(
                    f"no neural-attn server answered at {self._target} within {timeout:g} s: is "
                    "it running, is the address right, do the TLS settings match the server's?"
                )
            core.watch_connectivity_state(state, time.time() + min(left, 0.5))
            state = core.check_connectivity_state(True)

    def close(self) -> None:
        self._core = None


def translate(exc: grpc.RpcError) -> NeuralAttnError:
    """The exception of our tree for a failed call: by its status, and the error kind the
    server's interceptor put in the trailing metadata."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    kind = None
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_KIND_KEY:
            kind = value
    return error_for_status(code.name, details or code.name, kind)


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Calls made inside raise our exceptions (`translate`), never `grpc.RpcError`."""
    try:
        yield
    except grpc.RpcError as exc:
        raise translate(exc) from None


def open_channel(
    target: str, creds: grpc.ChannelCredentials | None, max_message_bytes: int
) -> grpc.Channel:
    """A channel to `target`: in clear without `creds`, else secured with them."""
    address = normalize_target(target)
    options = channel_options(max_message_bytes)
    if creds is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, creds, options=options)


def bearer_token(token: str | None) -> str | None:
    """The bearer token given, else $NEURAL_ATTN_TOKEN, else $NEURAL_ATTN_TOKEN_FILE's."""
    if token is None:
        token = os.environ.get("NEURAL_ATTN_TOKEN") or None
    if token is None and os.environ.get("NEURAL_ATTN_TOKEN_FILE"):
        token = read_token_file(os.environ["NEURAL_ATTN_TOKEN_FILE"])
    return token
