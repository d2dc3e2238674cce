"""A gRPC server in its own process for the benchmarks; prints "PORT n", stops when stdin closes.

    python bench/_serve.py neural [cpu|cuda]       # the production server (create_server), its
                                                   # process set up as neural-attn-server's
    python bench/_serve.py bare TOTAL_BYTES CHUNK  # a bare server-streaming method of bytes

The bare server is the floor of the wire: grpc's generic handlers, identity (bytes)
serializers, and TOTAL_BYTES of distinct, pre-made chunks of CHUNK bytes, streamed as they are.
"""

from __future__ import annotations

import os
import sys
from concurrent import futures

BARE_METHOD = "/bench.Bare/Stream"


def _neural(device: str):
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig
    from neural_attn.server.memory import keep_freed_memory

    keep_freed_memory()  # as neural-attn-server's main does

    return create_server(host="127.0.0.1", port=0, config=ServerConfig(device=device))


def _bare(total: int, chunk: int):
    import grpc

    from neural_attn.server.config import ServerConfig

    # Distinct chunks made once, before serving: the stream only hands them to gRPC.
    chunks = [os.urandom(min(chunk, total - start)) for start in range(0, total, chunk)]

    def stream(request: bytes, context: grpc.ServicerContext):
        yield from chunks

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=None, response_serializer=None
            )
        },
    )
    config = ServerConfig()  # the same pool size and message limits as the real server
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers),
        handlers=[handler],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
        ],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    return server, port


def main() -> None:
    kind = sys.argv[1]
    if kind == "neural":
        server, port = _neural(sys.argv[2] if len(sys.argv) > 2 else "cpu")
    elif kind == "bare":
        server, port = _bare(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
    server.start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin (or exits)
    server.stop(None)


if __name__ == "__main__":
    main()
