"""`neural-attn-server`: run the gRPC service until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from neural_attn.server.config import ServerConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = ServerConfig()
    p = argparse.ArgumentParser(prog="neural-attn-server", description=__doc__)
    p.add_argument("--host", default=os.environ.get("NEURAL_ATTN_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(os.environ.get("NEURAL_ATTN_PORT", "50051")))
    p.add_argument(
        "--backend",
        choices=("tensorflow", "pytorch"),
        default=defaults.default_backend,
        help="backend when a request names none",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=os.environ.get("NEURAL_ATTN_DEVICE", defaults.device),
    )
    p.add_argument("--max-workers", type=int, default=defaults.max_workers)
    p.add_argument("--max-cached-models", type=int, default=defaults.max_cached_models)
    p.add_argument("--max-sequence-length", type=int, default=defaults.max_sequence_length)
    p.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes)
    p.add_argument(
        "--weights-dir",
        default=os.environ.get("NEURAL_ATTN_WEIGHTS_DIR"),
        help="directory whose files requests may name as weights (default: none)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("NEURAL_ATTN_TOKEN"),
        help="require 'authorization: Bearer TOKEN' (default: $NEURAL_ATTN_TOKEN)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        from neural_attn.server.app import create_server
    except ImportError as exc:
        print(
            f"neural-attn-server needs the server extras: pip install 'neural-attn[server]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 2
    config = ServerConfig(
        default_backend=args.backend,
        device=args.device,
        max_workers=args.max_workers,
        max_cached_models=args.max_cached_models,
        max_sequence_length=args.max_sequence_length,
        max_message_bytes=args.max_message_bytes,
        auth_token=args.token or None,
        weights_dir=args.weights_dir,
    )
    server, port = create_server(host=args.host, port=args.port, config=config)
    server.start()
    logging.getLogger("neural_attn.server").info(
        "serving neural_attn.v1.AttentionService on %s:%d", args.host, port
    )
    signal.signal(signal.SIGTERM, lambda *_: server.stop(grace=5))
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=2).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
