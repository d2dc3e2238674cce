"""No single client can stall the installed `neural-attn-server` for the others: a reader that
stops reading holds only its own pass, idle streams are cut after the idle limit, health and
GetServerInfo answer whatever the other calls do, and work beyond capacity is refused at once
with a retry hint rather than queued."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neural_attn.chunk_codec import decode
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

# 4 layers x 8 heads x 1,024²: 32 MiB a layer, far past gRPC's flow-control windows, so a
# reader that stops after one chunk leaves the server's pass waiting on it.
LONG = """
network Long {
  input: (1024, 16)
  layers:
    TransformerEncoder(num_heads=8, ff_dim=16) * 4
}
"""
LAYERS = 4


def _stub(target: str) -> tuple[grpc.Channel, pb_grpc.AttentionServiceStub]:
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    return channel, pb_grpc.AttentionServiceStub(channel)


def _compile(stub: pb_grpc.AttentionServiceStub, backend: str) -> str:
    request = pb.CompileRequest(source=LONG, backend=getattr(pb, backend.upper()))
    return stub.Compile(request, timeout=120).model_id


def _assemble(chunks) -> dict[str, np.ndarray]:
    """Layer name -> float32 array from serialized AttentionChunk messages."""
    layers: dict[str, np.ndarray] = {}
    for raw in chunks:
        chunk, start, stop = decode(raw)
        flat = layers.setdefault(
            chunk.layer_name, np.full(int(np.prod(chunk.shape)), np.nan, np.float32)
        )
        part = np.frombuffer(raw, np.float32, count=(stop - start) // 4, offset=start)
        flat[chunk.offset : chunk.offset + part.size] = part
    return {name: flat.reshape(-1, 8, 1024, 1024) for name, flat in layers.items()}


def _raw_extract(channel: grpc.Channel):
    return channel.unary_stream(
        "/neural_attn.v1.AttentionService/ExtractAttention",
        request_serializer=pb.ExtractRequest.SerializeToString,
        response_deserializer=None,  # the raw bytes: chunk_codec reads them in place
    )


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_a_stalled_reader_never_delays_another_caller_and_still_gets_its_answer(
    start_server, backend
):
    server = start_server("--port", "0").wait_serving()
    stalled_channel, stalled_stub = _stub(server.target)
    model_id = _compile(stalled_stub, backend)
    stalled = _raw_extract(stalled_channel)(pb.ExtractRequest(model_id=model_id))  # no deadline
    first = next(stalled)  # one chunk read, then nothing for a while

    # Another client, its own channel, the same source (the same content-addressed model).
    channel, stub = _stub(server.target)
    with channel:
        started = time.monotonic()
        other = _assemble(
            _raw_extract(channel)(pb.ExtractRequest(model_id=_compile(stub, backend)), timeout=60)
        )
        took = time.monotonic() - started
        assert sorted(other) == [f"transformer_encoder_{i}" for i in range(LAYERS)], took
        heads = stub.AnalyzeHeads(
            pb.HeadsRequest(extract=pb.ExtractRequest(model_id=model_id)), timeout=60
        )
        assert len(heads.layers) == LAYERS

    # The stalled reader reads on: a complete answer, equal to the other caller's.
    with stalled_channel:
        mine = _assemble([first, *stalled])
    assert sorted(mine) == sorted(other)
    for name, value in other.items():
        np.testing.assert_array_equal(mine[name], value)
        np.testing.assert_allclose(value.sum(-1), 1.0, atol=1e-5)


def _idle_profile(channel: grpc.Channel, model_id: str, release: threading.Event):
    """A ProfileHeads stream that sends its first message, then nothing until `release`."""

    def requests():
        yield pb.ProfileRequest(model_id=model_id)
        release.wait()

    call = pb_grpc.AttentionServiceStub(channel).ProfileHeads(requests())
    return call


def _answers_at_once(target: str) -> None:
    """Health and GetServerInfo answer within their short deadlines (a busy machine's margin:
    without free threads they would not answer at all)."""
    channel, stub = _stub(target)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert stub.GetServerInfo(pb.ServerInfoRequest(), timeout=5).version


def test_idle_streams_at_and_above_the_worker_count_never_stop_the_server(start_server):
    workers = 3
    server = start_server(
        "--port", "0", "--max-workers", str(workers), "--stream-idle-ms", "4000"
    ).wait_serving()
    _answers_at_once(server.target)  # the first GetServerInfo too: the server warmed up
    channel, stub = _stub(server.target)
    release = threading.Event()
    try:
        model_id = _compile(stub, "pytorch")
        idle = [_idle_profile(channel, model_id, release) for _ in range(workers)]
        time.sleep(1.0)  # every one of them admitted and waiting on its client
        _answers_at_once(server.target)

        # Work beyond capacity is refused at once, with a retry hint; nothing queues (a queued
        # call would wait out its deadline: DEADLINE_EXCEEDED).
        with pytest.raises(grpc.RpcError) as refused:
            stub.Compile(pb.CompileRequest(source=LONG, backend=pb.PYTORCH), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"all {workers} of its workers" in refused.value.details()
        trailing = dict(refused.value.trailing_metadata())
        assert int(trailing["retry-after-ms"]) > 0
        above = _idle_profile(channel, model_id, release)
        with pytest.raises(grpc.RpcError) as over:
            next(iter(above))
        assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Past the idle limit the idle streams are cancelled and their workers freed.
        for call in idle:
            with pytest.raises(grpc.RpcError) as cut:
                next(iter(call))
            assert cut.value.code() == grpc.StatusCode.CANCELLED
        assert (
            stub.Compile(pb.CompileRequest(source=LONG, backend=pb.PYTORCH), timeout=30).model_id
            == model_id
        )
    finally:
        release.set()
        channel.close()
    log = server.log()
    assert "IdleStream" in log, log[-2000:]


def test_a_reader_that_stops_past_the_idle_limit_is_cancelled(start_server):
    server = start_server("--port", "0", "--stream-idle-ms", "2000").wait_serving()
    channel, stub = _stub(server.target)
    with channel:
        stalled = _raw_extract(channel)(pb.ExtractRequest(model_id=_compile(stub, "pytorch")))
        next(stalled)
        time.sleep(4.0)  # past the limit with the rest of the layer unread
        with pytest.raises(grpc.RpcError) as cut:
            for _ in stalled:
                pass
        assert cut.value.code() == grpc.StatusCode.CANCELLED
        _answers_at_once(server.target)
