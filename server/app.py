"""`create_server(...) -> (server, port)`: the production server, not yet started.

Tests bind port 0 in-process and the CLI's embedded mode reuses exactly this function.
`build_server` returns the same server with what running it needs (health, metrics, drain).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from neural_attn.server.config import ServerConfig
from neural_attn.server.engine import Engine
from neural_attn.server.interceptor import ServiceInterceptor
from neural_attn.server.observability import Call, Metrics
from neural_attn.server.servicer import AttentionServicer
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AttentionService"].full_name

log = logging.getLogger("neural_attn.server")
LIGHT_WORKERS = 4  # pool threads kept for calls that never count against max_workers


@dataclass
class ServingApp:
    """A built server and the parts a runner needs: health, metrics, the calls in flight."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    interceptor: ServiceInterceptor
    tls: bool
    servicer: AttentionServicer

    def warm(self) -> None:
        """Do before serving what the first calls would otherwise wait for: the backends'
        imports (GetServerInfo's answer), so a server that says SERVING answers at once."""
        self.servicer.server_info()

    @property
    def metrics(self) -> Metrics:
        return self.interceptor.metrics

    def drain(self, grace: float, give_up: Callable[[], bool] | None = None) -> list[Call]:
        """Stop taking calls, let those in flight finish for `grace` s, then stop.

        Health turns NOT_SERVING and new calls get UNAVAILABLE at once. Returns the calls still
        running at the deadline (or when `give_up()` says so), which `server.stop` then
        cancels; empty: a clean drain.
        """
        self.interceptor.draining.set()
        self.metrics.draining.set(1)
        self.health.enter_graceful_shutdown()
        started = time.monotonic()
        if self.interceptor.calls.wait_idle(grace, give_up):
            # Handlers are done, but their last messages and statuses may still be on their way:
            # a grace lets them reach the readers (stop returns as soon as they have).
            left = grace - (time.monotonic() - started)
            self.server.stop(max(left, 1.0)).wait()
            return []
        cut = self.interceptor.calls.snapshot()
        self.server.stop(None).wait()  # cancels the calls still running
        return cut


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with `tls_client_ca`) credentials from the config's PEM files, or None."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key (--tls-client-ca adds mTLS)")
    client_ca = _read(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key, "--tls-key"), _read(config.tls_cert, "--tls-cert"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _options(config: ServerConfig) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # ExportWeights replies hold whole weights files; attention streams stay in chunks.
        ("grpc.max_send_message_length", config.max_message_bytes),
        # The SDK pings every 60 s during long streams; allow it rather than answer GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if config.max_connection_age_ms > 0:
        # Clients re-resolve and rebalance; no max_connection_age_grace: streams finish.
        options.append(("grpc.max_connection_age_ms", config.max_connection_age_ms))
    return options


def build_server(
    *, host: str = "127.0.0.1", port: int = 0, config: ServerConfig | None = None
) -> ServingApp:
    """Build the gRPC server (AttentionService, health, reflection) bound to host:port.

    Port 0 picks a free port. TLS when the config names a certificate and key; mutual TLS
    when it also names a client CA.
    """
    config = config or ServerConfig()
    credentials = server_credentials(config)
    metrics = Metrics()
    interceptor = ServiceInterceptor(
        config.auth_token,
        metrics=metrics,
        capacity=config.max_workers,
        stream_idle_s=config.stream_idle_ms / 1000,
    )
    server = grpc.server(
        # Threads beyond the capacity: health, reflection, GetServerInfo and the refusals of
        # calls over it always find one.
        futures.ThreadPoolExecutor(
            max_workers=config.max_workers + LIGHT_WORKERS, thread_name_prefix="neural-attn"
        ),
        interceptors=[interceptor],
        options=_options(config),
    )
    engine = Engine(config)
    engine.cache = metrics.watch_cache(engine.cache)
    servicer = AttentionServicer(engine)
    pb_grpc.add_AttentionServiceServicer_to_server(servicer, server)

    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"could not bind {address}")
    return ServingApp(
        server, bound, health_servicer, interceptor, credentials is not None, servicer
    )


def create_server(
    *, host: str = "127.0.0.1", port: int = 0, config: ServerConfig | None = None
) -> tuple[grpc.Server, int]:
    """Build the gRPC server bound to host:port; returns it (not started) and the bound port.

    Port 0 picks a free port. Call `server.start()` to serve.
    """
    app = build_server(host=host, port=port, config=config)
    return app.server, app.port
