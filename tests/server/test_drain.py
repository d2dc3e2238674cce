"""SIGTERM drains: health NOT_SERVING at once, new calls UNAVAILABLE, streams finish in grace."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from serverproc import health_status

from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

# 1 MiB of attention per layer, sent in 64 chunks: a reader that sleeps between chunks keeps the
# stream open well past the SIGTERM, as long as its channel's window stays small. With BDP probing
# on, grpc grows a loopback window past the 2 MiB stream, the handler finishes before the SIGTERM
# and the drain stops the server at once (new connections refused rather than "draining").
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]
MID = """
network Mid {
  input: (256, 16)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=16) * 2
}
"""
# 16 MiB per layer: a reader that stops reading holds the pass (flow control) past any grace.
# The small window again, so that "any" does not depend on how far grpc grew it.
BIG = """
network Big {
  input: (1024, 8)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=8) * 3
}
"""


def _compile(stub: pb_grpc.AttentionServiceStub, source: str) -> str:
    reply = stub.Compile(pb.CompileRequest(source=source, backend=pb.PYTORCH), timeout=120)
    return str(reply.model_id)


def _wait_for(predicate, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - started


def test_sigterm_with_a_slow_reader_drains_and_exits_0(start_server):
    server = start_server("--port", "0", "--grace", "60").wait_serving()
    channel = grpc.insecure_channel(server.target, options=SMALL_WINDOW)
    stub = pb_grpc.AttentionServiceStub(channel)
    model_id = _compile(stub, MID)
    stream = stub.ExtractAttention(
        pb.ExtractRequest(model_id=model_id, max_chunk_bytes=16384), timeout=120
    )
    received = len(next(stream).content)

    server.terminate()
    with grpc.insecure_channel(server.target) as probe:
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        took = _wait_for(lambda: health_status(probe, timeout=5) == not_serving)
        assert took < 2.0, f"health said NOT_SERVING only after {took:.1f} s"
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.AttentionServiceStub(probe).GetServerInfo(pb.ServerInfoRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "draining" in (refused.value.details() or "")
    assert server.proc.poll() is None, "the server left before the stream was read"

    chunks = 1
    for chunk in stream:  # the slow reader: about 2.5 s for the rest of the stream
        received += len(chunk.content)
        chunks += 1
        time.sleep(0.02)
    assert received == 2 * 4 * 256 * 256 * 4
    assert chunks > 100  # the stream really was read slowly, chunk by chunk
    assert server.wait(30) == 0
    log = server.log()
    assert "drained: every call finished" in log
    assert "rpc=ExtractAttention code=OK" in log and "rpc=GetServerInfo code=UNAVAILABLE" in log
    channel.close()


def test_streams_cut_at_the_grace_deadline_are_logged_and_the_exit_says_so(start_server):
    server = start_server("--port", "0", "--grace", "1").wait_serving()
    channel = grpc.insecure_channel(server.target, options=SMALL_WINDOW)
    stub = pb_grpc.AttentionServiceStub(channel)
    model_id = _compile(stub, BIG)
    stream = stub.ExtractAttention(pb.ExtractRequest(model_id=model_id), timeout=120)
    next(stream)  # ... and read no more: the pass waits on flow control

    started = time.monotonic()
    server.terminate()
    code = server.wait(30)
    took = time.monotonic() - started
    assert code == 3
    assert 0.9 < took < 10, f"exited {took:.1f} s after SIGTERM with a 1 s grace"
    log = server.log()
    assert "cut at the drain deadline: ExtractAttention request_id=" in log
    assert "1 call(s) were cut" in log
    with pytest.raises(grpc.RpcError):
        for _ in stream:
            pass
    channel.close()
