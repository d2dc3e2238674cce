"""Drain check for `make compose-smoke`: SIGTERM a serving container under a slow reader.

Opens an ExtractAttention stream in small chunks, reads the first chunk, then runs the given
signal command (e.g. `docker-compose kill -s SIGTERM neural-attn`) and checks, while the stream
is still open:
  - health says NOT_SERVING (the orchestrator stops sending work),
  - a new call is refused UNAVAILABLE,
  - the open stream still completes: every chunk of every layer arrives, nothing is cut.
Prints one line per finding; exits non-zero on the first that fails.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc


def fail(message: str) -> int:
    print(f"drain: FAIL {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--server", required=True, help="host:port")
    ap.add_argument("--model", required=True, help="a .neural file")
    ap.add_argument("--signal-command", required=True, help="shell command that sends SIGTERM")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to see NOT_SERVING")
    args = ap.parse_args(argv)

    channel = grpc.insecure_channel(args.server)
    health = health_pb2_grpc.HealthStub(channel)
    stub = pb_grpc.AttentionServiceStub(channel)
    source = Path(args.model).read_text()
    request = pb.ExtractRequest(
        compile=pb.CompileRequest(
            source=source, filename=Path(args.model).name, backend=pb.PYTORCH
        ),
        max_chunk_bytes=1024,  # many chunks: the stream stays open while the reader is slow
    )
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    if status != health_pb2.HealthCheckResponse.SERVING:
        return fail(f"health before SIGTERM is {status}, not SERVING")

    stream = stub.ExtractAttention(request, timeout=300)
    first = next(stream)
    print(f"drain: stream open ({first.layer_name}: chunk 1 of {first.num_chunks})")
    subprocess.run(shlex.split(args.signal_command), check=True, stdout=subprocess.DEVNULL)
    print("drain: SIGTERM sent")

    deadline = time.monotonic() + args.timeout
    while True:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError as exc:
            return fail(f"health unreachable during the drain: {exc.code().name}")
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            print("drain: health says NOT_SERVING")
            break
        if time.monotonic() > deadline:
            return fail(f"health still {status} {args.timeout:.0f} s after SIGTERM")
        time.sleep(0.1)

    try:
        stub.GetServerInfo(pb.ServerInfoRequest(), timeout=5)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            return fail(f"a new call during the drain got {exc.code().name}, not UNAVAILABLE")
        print("drain: a new call is refused UNAVAILABLE")
    else:
        return fail("a new call during the drain was served")

    received: dict[str, int] = {first.layer_name: first.element_count}
    sizes = {first.layer_name: _size(first.shape)}
    try:
        for chunk in stream:
            time.sleep(0.001)  # a slow reader
            received[chunk.layer_name] = received.get(chunk.layer_name, 0) + chunk.element_count
            sizes[chunk.layer_name] = _size(chunk.shape)
    except grpc.RpcError as exc:
        return fail(f"the open stream was cut: {exc.code().name} {exc.details()}")
    short = {name: (received[name], sizes[name]) for name in sizes if received[name] != sizes[name]}
    if short:
        return fail(f"layers arrived incomplete: {short}")
    print(f"drain: the open stream completed ({len(sizes)} layers, all chunks)")
    channel.close()
    return 0


def _size(shape: object) -> int:
    n = 1
    for d in shape:  # type: ignore[attr-defined]
        n *= int(d)
    return n


if __name__ == "__main__":
    sys.exit(main())
