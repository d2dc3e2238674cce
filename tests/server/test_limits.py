"""Hostile or oversized requests are refused with the right status before anything large is
allocated, and the server keeps serving (findings of a review, each pinned here)."""

from __future__ import annotations

import io
import threading
import tracemalloc

import grpc
import numpy as np
import pytest

from neural_attn.backends.base import get_backend
from neural_attn.backends.weight_files import read_npz
from neural_attn.backends.weights import initial_weights
from neural_attn.dsl import compile_source
from neural_attn.errors import CancelledError, InvalidInputError, ResourceLimitError
from neural_attn.server.cache import ModelCache
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

SMALL = """
network Small {
  input: (6, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=8) * 3
}
"""


def _stub(target: str) -> pb_grpc.AttentionServiceStub:
    return pb_grpc.AttentionServiceStub(grpc.insecure_channel(target))


def _status(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_a_wide_feed_forward_is_refused_before_the_pass(client):
    wide = (
        "network Wide {\n  input: (None, 64)\n  layers:\n"
        "    TransformerEncoder(num_heads=1, ff_dim=1000000)\n}\n"
    )
    model = client.compile(wide, backend="pytorch")
    with pytest.raises(
        ResourceLimitError, match="8,192,000,000 values at once in `transformer_encoder_0`"
    ):
        list(client.extract_attention(model, sequence_length=8192))


def test_long_layer_names_still_fit_the_chunk_size(server_target):
    name = "n" * 128
    source = (
        "network Named {\n  input: (6, 8)\n  layers:\n"
        f'    TransformerEncoder(num_heads=2, ff_dim=8, name="{name}")\n}}\n'
    )
    request = pb.ExtractRequest(
        compile=pb.CompileRequest(source=source, backend=pb.PYTORCH), max_chunk_bytes=1024
    )
    chunks = list(_stub(server_target).ExtractAttention(request, timeout=60))
    assert chunks[0].layer_name == name
    assert all(c.ByteSize() <= 1024 for c in chunks)
    too_long = source.replace(name, "n" * 129)
    request.compile.source = too_long
    code = _status(lambda: list(_stub(server_target).ExtractAttention(request, timeout=60)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "shape", [[2**62, 4, 0], [0, 2**63 - 1, 32], [1] * 70], ids=["huge", "int64max", "rank70"]
)
def test_impossible_tensor_shapes_are_invalid_argument(server_target, shape):
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=shape, content=b"")
    extract = pb.ExtractRequest(
        compile=pb.CompileRequest(source=SMALL, backend=pb.PYTORCH), input=tensor
    )
    stub = _stub(server_target)
    assert _status(lambda: list(stub.ExtractAttention(extract, timeout=60))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    analyze = pb.AnalyzeRequest(
        attention=pb.AttentionSet(layers=[pb.NamedTensor(name="a", tensor=tensor)])
    )
    assert _status(lambda: stub.Analyze(analyze, timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT


def test_analyze_over_the_limit_is_resource_exhausted(server_target):
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=[2, 1, 2**14, 2**14], content=b"")
    request = pb.AnalyzeRequest(
        attention=pb.AttentionSet(layers=[pb.NamedTensor(name="a", tensor=tensor)])
    )
    assert _status(lambda: _stub(server_target).Analyze(request, timeout=60)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def test_analyze_refuses_what_is_not_probabilities(client):
    with pytest.raises(InvalidInputError, match="not softmax probabilities"):
        client.analyze({"layer": np.full((1, 2, 3, 3), 4 / 3, np.float32)})


def test_analyze_with_one_head_labels_it_with_its_own_index(client):
    model = client.compile(SMALL, backend="pytorch")
    data = np.random.default_rng(0).standard_normal((1, 6, 8)).astype(np.float32)
    one = client.analyze(model=model, data=data, layers=["transformer_encoder_1"], head=1)
    every = client.analyze(model=model, data=data, layers=["transformer_encoder_1"])
    assert one["layers"]["transformer_encoder_1"]["num_heads"] == 1
    np.testing.assert_allclose(
        one["layers"]["transformer_encoder_1"]["attention_entropy"][0],
        every["layers"]["transformer_encoder_1"]["attention_entropy"][1],
    )
    response = _stub_for(client).Analyze(
        pb.AnalyzeRequest(extract=pb.ExtractRequest(model_id=model.model_id, head=1)), timeout=60
    )
    assert [h.head for h in response.layers[0].heads] == [1]


def _stub_for(client) -> pb_grpc.AttentionServiceStub:
    return pb_grpc.AttentionServiceStub(client._channel)


def test_non_finite_weights_are_refused(client):
    network = compile_source(SMALL)
    weights = initial_weights(network, 0)
    weights["transformer_encoder_0/attention/query_kernel"][0, 0, 0] = np.nan
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        client.compile(SMALL, backend="pytorch", weights=buffer.getvalue())


def test_a_compressed_npz_is_checked_before_it_is_unpacked():
    network = compile_source(SMALL)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, **initial_weights(network, 0), extra=np.zeros(50_000_000, np.float32)
    )
    assert len(buffer.getvalue()) < 1_000_000  # 200 MB of zeros, compressed
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError, match="`extra`, which is no parameter"):
            read_npz(buffer.getvalue(), network)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_unreadable_weights_files_are_invalid_argument(client):
    for content, fmt in (
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "keras_h5"),
        (b"PK\x03\x04garbage", "npz"),
        (b"not torch", "torch"),
    ):
        with pytest.raises(InvalidInputError):
            client.compile(SMALL, backend="pytorch", weights=content, weights_format=fmt)


def test_weights_paths_that_the_os_refuses_are_invalid_argument(tmp_path):
    from neural_attn.client import AttentionClient
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig

    server, port = create_server(port=0, config=ServerConfig(weights_dir=str(tmp_path)))
    server.start()
    try:
        with AttentionClient(f"127.0.0.1:{port}") as c:
            for path in ("a\x00b.npz", "x" * 5000 + ".npz"):
                with pytest.raises(InvalidInputError):
                    c.compile(SMALL, backend="pytorch", server_weights=path)
    finally:
        server.stop(None)


@pytest.mark.parametrize("backend", ["tensorflow", "pytorch"])
def test_a_stop_request_ends_the_pass_between_layers(backend):
    network = compile_source(SMALL)
    model = get_backend(backend).build(network, seed=0)
    asked = []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) > 1  # let the first layer run, stop before the second

    with pytest.raises(CancelledError):
        model.forward(np.zeros((1, 6, 8), np.float32), should_stop=should_stop)
    assert len(asked) == 2
    # the model is not left locked or half-way: the next pass runs whole
    _, probs = model.forward(np.zeros((1, 6, 8), np.float32), capture=["transformer_encoder_2"])
    assert probs["transformer_encoder_2"].shape == (1, 2, 6, 6)


def test_the_cache_builds_a_model_once_under_concurrent_asks():
    cache: ModelCache[object] = ModelCache(4)
    builds = []
    start = threading.Barrier(8)

    def build() -> object:
        builds.append(1)
        return object()

    results = []

    def ask() -> None:
        start.wait()
        for _ in range(50):
            results.append(cache.get_or_build("k", build)[0])

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len({id(r) for r in results}) == 1


def test_export_that_could_not_be_sent_is_refused_with_advice():
    from neural_attn.client import AttentionClient
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig

    big = "network Big {\n  input: (512,)\n  layers:\n    Dense(1024)\n}\n"  # 2 MB of weights
    server, port = create_server(port=0, config=ServerConfig(max_message_bytes=2 * 1024 * 1024))
    server.start()
    try:
        with (
            AttentionClient(f"127.0.0.1:{port}") as c,
            pytest.raises(ResourceLimitError, match="--max-message-bytes"),
        ):
            c.export_weights(big, backend="pytorch")
    finally:
        server.stop(None)


def test_a_truncated_stream_is_an_error_not_fewer_layers(client, monkeypatch):
    model = client.compile(SMALL, backend="pytorch")
    real = client._extract_raw  # the chunks as received, serialized

    def truncated(request, **kwargs):
        chunks = list(real(request, **kwargs))
        return iter(chunks[:-1] + [_half(chunks[-1])])

    def _half(raw):
        chunk = pb.AttentionChunk.FromString(raw)
        chunk.num_chunks = chunk.chunk_index + 2  # claims one more chunk that never comes
        return chunk.SerializeToString()

    monkeypatch.setattr(client, "_extract_raw", truncated)
    with pytest.raises(
        InvalidInputError, match="before layer `transformer_encoder_2` was complete"
    ):
        list(client.extract_attention(model))
