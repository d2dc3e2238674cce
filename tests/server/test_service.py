"""The real server over loopback gRPC: Compile, the ExtractAttention stream, Analyze, errors."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neural_attn import wire
from neural_attn.client._inputs import text_input
from neural_attn.client._tokenize import Vocabulary
from neural_attn.errors import (
    BackendUnavailableError,
    DSLError,
    InvalidInputError,
    LayerNotFoundError,
    ModelNotFoundError,
    NoAttentionLayersError,
    ResourceLimitError,
)
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

BACKENDS = ("tensorflow", "pytorch")

SMALL = """
network Small {
  input: (10, 16)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=32) * 2
    GlobalAveragePooling1D()
    Output(units=3, activation="softmax")
}
"""

NO_ATTENTION = """
network Plain {
  input: (8,)
  layers:
    Dense(4)
}
"""


def _data(seed: int = 0, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 10, 16)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_is_content_addressed_and_describes_the_model(client, backend):
    first = client.compile(SMALL, filename="small.neural", backend=backend, seed=1)
    again = client.compile(SMALL + "\n# a comment changes nothing\n", backend=backend, seed=1)
    other_seed = client.compile(SMALL, backend=backend, seed=2)
    assert first.model_id == again.model_id != other_seed.model_id
    assert again.cached
    assert first.backend == backend
    assert first.attention_layers == ("transformer_encoder_0", "transformer_encoder_1")
    assert [layer.name for layer in first.layers][-2:] == ["global_average_pooling1d_0", "output_0"]
    assert first.layers[-1].output_shape == (3,)
    assert first.inputs[0].shape == (None, 10, 16)
    assert "def create_model" in first.generated_code
    assert first.parameter_count > 0
    assert first.attention_path


def test_compile_names_the_embedding_and_its_vocabulary_as_fields(client):
    text_model = """
network Text {
  input: (None,)
  layers:
    Embedding(input_dim=57, output_dim=16)
    TransformerEncoder(num_heads=2, ff_dim=8)
}
"""
    compiled = client.compile(text_model, backend="pytorch")
    assert (compiled.embedding_layer, compiled.vocab_size) == ("embedding_0", 57)
    plain = client.compile(SMALL, backend="pytorch")
    assert (plain.embedding_layer, plain.vocab_size) == ("", 0)
    # The fields, not the English of the input description, tell the client the id range.
    reworded = dataclasses.replace(
        compiled,
        inputs=tuple(dataclasses.replace(i, description="reworded") for i in compiled.inputs),
    )
    vocab = Vocabulary(tuple(f"w{i}" for i in range(57)))
    ids, labels, _ = text_input(reworded, None, None, "w3 w56", vocab)
    assert ids.tolist() == [[3, 56]] and labels == ["w3", "w56"]
    with pytest.raises(InvalidInputError, match=r"`embedding_0` takes ids in \[0, 57\)"):
        text_input(reworded, None, None, "w3 w57", Vocabulary((*vocab.tokens, "w57")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_chunks_reassemble_to_the_whole_tensor(client, backend):
    model = client.compile(SMALL, backend=backend)
    data = _data()
    whole = dict(client.extract_attention(model, data))
    small = dict(client.extract_attention(model, data, max_chunk_bytes=2048))
    assert list(whole) == ["transformer_encoder_0", "transformer_encoder_1"]
    for name, attention in whole.items():
        assert attention.shape == (2, 4, 10, 10)
        np.testing.assert_array_equal(attention, small[name])
        np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)


def test_no_message_exceeds_the_chunk_size(server_target):
    stub = pb_grpc.AttentionServiceStub(grpc.insecure_channel(server_target))
    request = pb.ExtractRequest(
        compile=pb.CompileRequest(source=SMALL, backend=pb.PYTORCH),
        input=wire.to_proto(_data(batch=3)),
        max_chunk_bytes=1500,
    )
    chunks = list(stub.ExtractAttention(request, timeout=60))
    assert all(c.ByteSize() <= 1500 for c in chunks)
    per_layer = {}
    for c in chunks:
        per_layer.setdefault(c.layer_name, []).append(c)
    for name, parts in per_layer.items():
        assert [c.chunk_index for c in parts] == list(range(parts[0].num_chunks))
        assert sum(c.element_count for c in parts) == 3 * 4 * 10 * 10
        assert {c.layer_index for c in parts} == {0 if name.endswith("0") else 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_head_and_float16_selection(client, backend):
    model = client.compile(SMALL, backend=backend)
    data = _data(3)
    full = dict(client.extract_attention(model, data))
    one = dict(
        client.extract_attention(
            model, data, layers=["transformer_encoder_1"], head=2, dtype="float16"
        )
    )
    assert list(one) == ["transformer_encoder_1"]
    assert one["transformer_encoder_1"].dtype == np.float16
    assert one["transformer_encoder_1"].shape == (2, 1, 10, 10)
    np.testing.assert_allclose(
        one["transformer_encoder_1"][:, 0], full["transformer_encoder_1"][:, 2], atol=1e-3
    )


def test_sample_input_is_deterministic(client):
    model = client.compile(SMALL, backend="pytorch", seed=5)
    a = dict(client.extract_attention(model))
    b = dict(client.extract_attention(model))
    for name in a:
        assert a[name].shape == (1, 4, 10, 10)
        np.testing.assert_array_equal(a[name], b[name])


def test_analyze_sent_attention_matches_local_analysis(client):
    from neural_attn.analysis import analyze_attention_patterns

    model = client.compile(SMALL, backend="pytorch")
    attention = dict(client.extract_attention(model, _data()))
    remote = client.analyze(attention)
    for name, tensor in attention.items():
        local = analyze_attention_patterns(tensor)
        got = remote["layers"][name]
        assert got["num_heads"] == 4
        np.testing.assert_allclose(got["attention_entropy"], local["attention_entropy"], rtol=1e-5)
        np.testing.assert_allclose(
            got["diagonal_attention_strength"], local["diagonal_attention_strength"], rtol=1e-5
        )
        assert got["pattern_per_head"] == local["pattern_per_head"]
    assert np.asarray(remote["rollout"]).shape == (10, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_analyze_runs_the_extraction_itself(client, backend):
    model = client.compile(SMALL, backend=backend)
    data = _data(4)
    remote = client.analyze(model=model, data=data)
    attention = dict(client.extract_attention(model, data))
    entropy = remote["layers"]["transformer_encoder_0"]["attention_entropy"]
    p = attention["transformer_encoder_0"].astype(np.float64)
    expected = (-(p * np.log(np.where(p > 0, p, 1))).sum(-1)).mean(axis=(0, 2))
    np.testing.assert_allclose(entropy, expected, rtol=1e-4)
    assert remote["model_id"] == model.model_id


def test_dsl_error_is_invalid_argument_with_line_and_column(client):
    source = "network Broken {\n  input: (10, 16)\n  layers:\n    Dense(units=4\n}\n"
    with pytest.raises(DSLError) as info:
        client.compile(source, filename="broken.neural")
    assert "broken.neural:" in str(info.value)
    assert "^" in str(info.value)


def test_wrong_input_shape_names_the_shapes_that_work(client):
    model = client.compile(SMALL, backend="pytorch")
    with pytest.raises(InvalidInputError, match=r"\(batch, 10, 16\)"):
        list(client.extract_attention(model, np.zeros((1, 10, 15), np.float32)))


def test_malformed_tensor_bytes_are_refused(server_target):
    stub = pb_grpc.AttentionServiceStub(grpc.insecure_channel(server_target))
    bad = pb.Tensor(dtype=pb.FLOAT32, shape=[1, 10, 16], content=b"\x00" * 12)
    request = pb.ExtractRequest(
        compile=pb.CompileRequest(source=SMALL, backend=pb.PYTORCH), input=bad
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ExtractAttention(request, timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 640 bytes" in info.value.details()


def test_unknown_model_layer_and_head(client):
    with pytest.raises(ModelNotFoundError):
        list(client.extract_attention("0" * 32))
    model = client.compile(SMALL, backend="pytorch")
    with pytest.raises(LayerNotFoundError, match="transformer_encoder_0, transformer_encoder_1"):
        list(client.extract_attention(model, layers=["dense_9"]))
    with pytest.raises(InvalidInputError, match="has 4 heads"):
        list(client.extract_attention(model, head=4))


def test_model_without_attention_is_failed_precondition(client):
    model = client.compile(NO_ATTENTION, backend="pytorch")
    with pytest.raises(NoAttentionLayersError, match="no attention layers"):
        list(client.extract_attention(model))


def test_oversized_request_is_refused_before_running(client):
    model = client.compile(SMALL, backend="pytorch")
    with pytest.raises(ResourceLimitError):
        list(client.extract_attention(model, sequence_length=10**6))
    huge = """
network Huge {
  input: (None, 16)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=8)
}
"""
    model = client.compile(huge, backend="pytorch")
    with pytest.raises(ResourceLimitError, match="over this server's limit"):
        list(client.extract_attention(model, np.zeros((1, 70_000, 16), np.float32)))


def test_sdk_resends_the_source_when_a_replica_lacks_the_model(server_target):
    from neural_attn.client import AttentionClient
    from neural_attn.server.app import create_server

    other, port = create_server(port=0)
    other.start()
    try:
        with AttentionClient(server_target) as a, AttentionClient(f"127.0.0.1:{port}") as b:
            model = a.compile(SMALL, backend="pytorch", seed=11)
            b._sources.update(a._sources)  # the same client, pointed at a fresh replica
            got = dict(b.extract_attention(model.model_id, _data()))
            want = dict(a.extract_attention(model.model_id, _data()))
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
    finally:
        other.stop(None)


def test_bad_requests_leave_the_server_serving(server_target, client):
    for source in ("network {", "", "\x00\xff", "network A { input: (1) layers: Nope() }"):
        with pytest.raises(DSLError):
            client.compile(source)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server_target))
    reply = health.Check(health_pb2.HealthCheckRequest(service="neural_attn.v1.AttentionService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert client.compile(SMALL, backend="pytorch").model_id


def test_reflection_lists_the_service(server_target):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server_target))
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "neural_attn.v1.AttentionService" in names
    assert "grpc.health.v1.Health" in names


def test_token_is_required_when_configured():
    from neural_attn.client import AttentionClient
    from neural_attn.errors import AuthenticationError
    from neural_attn.server.app import create_server
    from neural_attn.server.config import ServerConfig

    server, port = create_server(port=0, config=ServerConfig(auth_token="s3cret"))
    server.start()
    try:
        with (
            AttentionClient(f"127.0.0.1:{port}", token="wrong") as c,
            pytest.raises(AuthenticationError),
        ):
            c.compile(NO_ATTENTION)
        with AttentionClient(f"127.0.0.1:{port}", token="s3cret") as c:
            assert c.compile(NO_ATTENTION, backend="pytorch").model_id
    finally:
        server.stop(None)


def test_unknown_backend_is_refused_and_missing_one_is_unimplemented(client, monkeypatch):
    from neural_attn.backends import base

    with pytest.raises(InvalidInputError):
        client.compile(SMALL, backend="jax")
    monkeypatch.setitem(base._MODULES, "pytorch", "neural_attn.backends.not_installed")
    with pytest.raises(BackendUnavailableError, match="pip install torch==2.13.0"):
        client.compile(SMALL, backend="pytorch", seed=999)


def test_models_over_the_size_limits_are_refused_before_building(client):
    big = "network Big {\n  input: (100000,)\n  layers:\n    Dense(100000)\n}\n"
    with pytest.raises(ResourceLimitError, match="10,000,100,000 parameters"):
        client.compile(big, backend="pytorch")


def test_device_requests_in_the_file_are_answered_with_where_it_runs(client):
    source = """
network Placed {
  input: (6, 8)
  layers:
    Dense(8) @ "cuda:0"
    TransformerEncoder(num_heads=2, ff_dim=8)
  execution { device: "gpu" }
}
"""
    model = client.compile(source, backend="pytorch")
    text = " ".join(model.warnings)
    assert "`execution { device: gpu }` is noted" in text
    assert "`dense_0` @ cuda:0" in text
    assert f"runs the whole model on {model.device}" in text
