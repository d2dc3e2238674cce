"""`create_server(...) -> (server, port)`: the production server, not yet started.

Tests bind port 0 in-process and the CLI's embedded mode reuses exactly this function.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from neural_attn.server.config import ServerConfig
from neural_attn.server.engine import Engine
from neural_attn.server.interceptor import ServiceInterceptor
from neural_attn.server.servicer import AttentionServicer
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AttentionService"].full_name


def create_server(
    *, host: str = "127.0.0.1", port: int = 0, config: ServerConfig | None = None
) -> tuple[grpc.Server, int]:
    """Build the gRPC server (AttentionService, health, reflection) bound to host:port.

    Port 0 picks a free port; the bound port is returned. Call `server.start()` to serve.
    """
    config = config or ServerConfig()
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # ExportWeights replies hold whole weights files; attention streams stay in chunks.
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="neural-attn"
        ),
        interceptors=[ServiceInterceptor(config.auth_token)],
        options=options,
    )
    pb_grpc.add_AttentionServiceServicer_to_server(AttentionServicer(Engine(config)), server)

    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    return server, bound
