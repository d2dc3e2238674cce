"""ExtractAttention streams layer by layer: pooling and windows beside the model, float16, one
layer held at a time, chunk sizes, cancellation; through the real server on loopback."""

from __future__ import annotations

import math
import time
import weakref

import grpc
import numpy as np
import pytest

from neural_attn.backends.base import get_backend
from neural_attn.backends.pytorch.blocks import tile_rows
from neural_attn.backends.streaming import running_passes
from neural_attn.errors import InvalidInputError
from neural_attn.v1 import attention_pb2 as pb
from neural_attn.v1 import attention_pb2_grpc as pb_grpc

BACKENDS = ("tensorflow", "pytorch")

# 37 positions: no pooling block divides it, so partial last blocks are always exercised.
MODEL = """
network Streamed {
  input: (37, 16)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=32) * 3
    GlobalAveragePooling1D()
    Output(units=2)
}
"""


def _data(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((batch, 37, 16)).astype(np.float32)


def numpy_pool(a: np.ndarray, target: int, mode: str) -> np.ndarray:
    """Pool the last two axes the plain way: blocks of ceil(n / target), partial last block."""

    def edges(n: int) -> list[tuple[int, int]]:
        block = 1 if n <= target else math.ceil(n / target)
        return [(i, min(i + block, n)) for i in range(0, n, block)]

    rows, cols = edges(a.shape[-2]), edges(a.shape[-1])
    out = np.zeros((*a.shape[:-2], len(rows), len(cols)), dtype=np.float64)
    reduce = np.max if mode == "max" else np.mean
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            out[..., i, j] = reduce(a[..., r0:r1, c0:c1].astype(np.float64), axis=(-2, -1))
    return out


@pytest.fixture(scope="module")
def exact(server_target):
    from neural_attn.client import AttentionClient

    out = {}
    with AttentionClient(server_target, timeout=120) as client:
        for backend in BACKENDS:
            model = client.compile(MODEL, backend=backend)
            out[backend] = (model, dict(client.extract_attention(model, _data())))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("target", [1, 5, 8, 36, 64])
def test_server_pooling_equals_numpy_pooling_of_the_exact_tensor(
    client, exact, backend, mode, target
):
    model, layers = exact[backend]
    got = list(client.extract_layers(model, _data(), pool_size=target, pool_mode=mode))
    assert [g.name for g in got] == list(layers)
    for layer in got:
        want = numpy_pool(layers[layer.name], target, mode)
        assert layer.value.shape == want.shape
        np.testing.assert_allclose(layer.value, want, rtol=1e-5, atol=1e-7)
        block = 1 if 37 <= target else math.ceil(37 / target)
        assert layer.pooling is not None
        assert layer.pooling.source_shape == (2, 4, 37, 37)
        assert (layer.pooling.query_block, layer.pooling.key_block) == (block, block)
        assert layer.pooling.mode == mode
        assert (layer.pooling.query, layer.pooling.key) == ((0, 37), (0, 37))


@pytest.mark.parametrize("backend", BACKENDS)
def test_windows_are_exact_slices_and_pool_after_cutting(client, exact, backend):
    model, layers = exact[backend]
    window = ((5, 33), (10, 0))  # a stop of 0 is the end
    cut = {g.name: g for g in client.extract_layers(model, _data(), window=window, head=2)}
    pooled = {
        g.name: g
        for g in client.extract_layers(model, _data(), window=window, pool_size=6, pool_mode="max")
    }
    for name, full in layers.items():
        np.testing.assert_array_equal(cut[name].value, full[:, 2:3, 5:33, 10:37])
        assert cut[name].head == 2
        assert (cut[name].pooling.query, cut[name].pooling.key) == ((5, 33), (10, 37))
        np.testing.assert_allclose(
            pooled[name].value, numpy_pool(full[:, :, 5:33, 10:37], 6, "max"), rtol=1e-6
        )


def test_a_pooled_request_moves_the_pooled_bytes_only(server_target, exact):
    model, _ = exact["pytorch"]
    stub = pb_grpc.AttentionServiceStub(grpc.insecure_channel(server_target))
    from neural_attn import wire

    request = pb.ExtractRequest(
        model_id=model.model_id,
        input=wire.to_proto(_data()),
        pooling=pb.Pooling(target_size=4, mode=pb.MAX),
        output_dtype=pb.FLOAT16,
    )
    content = sum(len(chunk.content) for chunk in stub.ExtractAttention(request, timeout=60))
    pooled_cells = 3 * 2 * 4 * math.ceil(37 / 10) ** 2  # layers x batch x heads x cells
    assert content == pooled_cells * 2  # float16: two bytes a value, nothing else
    exact_bytes = 3 * 2 * 4 * 37 * 37 * 4
    assert content < exact_bytes / 50


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_round_trips_within_float16_precision(client, exact, backend):
    model, layers = exact[backend]
    for name, half in client.extract_attention(model, _data(), dtype="float16"):
        assert half.dtype == np.float16
        full = layers[name]
        # float16 keeps 11 significant bits: relative error <= 2**-11, plus subnormals ...
        assert np.all(np.abs(half.astype(np.float32) - full) <= full * 2**-11 + 2**-24)
        # ... and each value is the float32 one rounded to nearest, as numpy rounds it.
        np.testing.assert_array_equal(half, full.astype(np.float16))


@pytest.mark.parametrize("max_bytes", [1024, 4096, 65536])
def test_no_message_exceeds_the_chunk_size_with_reductions(server_target, exact, max_bytes):
    model, _ = exact["tensorflow"]
    stub = pb_grpc.AttentionServiceStub(grpc.insecure_channel(server_target))
    from neural_attn import wire

    request = pb.ExtractRequest(
        model_id=model.model_id,
        input=wire.to_proto(_data()),
        window=pb.Window(query_start=1, query_stop=36, key_start=0, key_stop=0),
        pooling=pb.Pooling(target_size=30, mode=pb.MEAN),
        max_chunk_bytes=max_bytes,
    )
    sizes = [chunk.ByteSize() for chunk in stub.ExtractAttention(request, timeout=60)]
    assert len(sizes) >= 3 and max(sizes) <= max_bytes


class _LiveLayers:
    """Counts the layer arrays the backend has handed out and that are still alive."""

    def __init__(self, monkeypatch) -> None:
        self.refs: list[weakref.ref] = []
        self.alive_at_handout: list[int] = []

        def spy(cls):
            inner = cls._to_numpy

            def to_numpy(model, tensor, reduction=None):
                array = inner(model, tensor, reduction)
                if array.ndim == 4:
                    self.alive_at_handout.append(sum(r() is not None for r in self.refs))
                    self.refs.append(weakref.ref(array))
                return array

            monkeypatch.setattr(cls, "_to_numpy", to_numpy)

        from neural_attn.backends.pytorch import build as pytorch_backend
        from neural_attn.backends.tensorflow import build as tensorflow_backend

        spy(pytorch_backend.PyTorchModel)
        spy(tensorflow_backend.TensorFlowModel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_server_holds_one_layer_at_a_time_even_for_a_slow_reader(
    client, exact, backend, monkeypatch
):
    model, layers = exact[backend]
    live = _LiveLayers(monkeypatch)
    received = []
    for layer in client.extract_layers(model, _data(), max_chunk_bytes=4096):
        received.append(layer.name)
        time.sleep(0.2)  # a slow reader: the pass must wait, not run ahead
    assert received == list(layers)
    assert len(live.alive_at_handout) == 3
    # When each layer is handed out, no earlier layer is still alive on the server.
    assert live.alive_at_handout == [0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_stream_stops_the_pass_and_the_server_keeps_serving(
    server_target, exact, backend
):
    model, layers = exact[backend]
    stub = pb_grpc.AttentionServiceStub(grpc.insecure_channel(server_target))
    from neural_attn import wire

    before = running_passes()
    call = stub.ExtractAttention(
        pb.ExtractRequest(
            model_id=model.model_id, input=wire.to_proto(_data()), max_chunk_bytes=1024
        ),
        timeout=60,
    )
    next(call)
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    for _ in range(100):  # the pass ends once the server sees the cancellation
        if running_passes() <= before:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the forward pass of a cancelled stream is still running")
    from neural_attn.client import AttentionClient

    with AttentionClient(server_target, timeout=60) as again:
        got = dict(again.extract_attention(model, _data()))
    np.testing.assert_array_equal(got[next(iter(layers))], layers[next(iter(layers))])


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"window": ((10, 5), (0, 0))}, "query window [10, 5)"),
        ({"window": ((0, 0), (0, 38))}, "key window [0, 38)"),
        ({"window": ((-1, 4), (0, 0))}, "query window [-1, 4)"),
        ({"pool_size": -3}, "target_size must be at least 1"),
    ],
)
def test_bad_windows_and_pooling_are_invalid_argument(client, exact, options, words):
    model, _ = exact["pytorch"]
    with pytest.raises(InvalidInputError, match=words.replace("[", r"\[").replace(")", r"\)")):
        list(client.extract_layers(model, _data(), **options))


def test_analyze_refuses_a_window_and_keeps_its_metrics_exact_when_pooling(server_target, exact):
    model, _ = exact["pytorch"]
    stub = pb_grpc.AttentionServiceStub(grpc.insecure_channel(server_target))
    window = pb.Window(query_start=0, query_stop=2, key_start=0, key_stop=2)
    request = pb.AnalyzeRequest(extract=pb.ExtractRequest(model_id=model.model_id, window=window))
    with pytest.raises(grpc.RpcError) as info:
        stub.Analyze(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exact attention" in info.value.details()
    # Pooling pools only the layers sent back beside the metrics, never the metrics.
    plain = stub.Analyze(pb.AnalyzeRequest(extract=pb.ExtractRequest(model_id=model.model_id)))
    pooled = pb.ExtractRequest(model_id=model.model_id, pooling=pb.Pooling(target_size=4))
    both = stub.Analyze(pb.AnalyzeRequest(extract=pooled), timeout=60)
    assert list(both.layers) == list(plain.layers)
    assert {p.layer_name for p in both.pooled} == {layer.layer_name for layer in plain.layers}
    assert all(p.reduction.query_block > 1 for p in both.pooled)


# 4 heads x 2,048^2 float32: 64 MiB a layer, far more than gRPC's flow-control windows and
# buffers (which grow with the bandwidth-delay estimate: 16 MiB layers were not always enough).
BIG = """
network Big {
  input: (2048, 8)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=8) * 3
}
"""


def test_a_reader_that_stops_reading_stops_the_pass(server_target, monkeypatch):
    """Flow control is honoured: the server does not run ahead and buffer the answer."""
    from neural_attn.client import AttentionClient

    live = _LiveLayers(monkeypatch)
    # No BDP probing: the window stays at its initial size whatever the machine's load.
    channel = grpc.insecure_channel(server_target, options=[("grpc.http2.bdp_probe", 0)])
    stub = pb_grpc.AttentionServiceStub(channel)
    with AttentionClient(server_target, timeout=120) as client:
        model = client.compile(BIG, backend="pytorch")
    call = stub.ExtractAttention(pb.ExtractRequest(model_id=model.model_id), timeout=120)
    first = next(call)
    assert first.layer_name == "transformer_encoder_0"
    time.sleep(2.0)  # the reader pauses with most of layer 0 still unread
    # The layer goes by in tiles of query rows (4 x 2,048² scores is over PyTorch's tile size):
    # while the first is sent the pass computes the next one, and goes no further.
    tiles = math.ceil(2048 / tile_rows(1, 4, 2048, 2048, get_backend("pytorch").tile_elements))
    assert tiles > 1
    assert len(live.alive_at_handout) <= 2, "the pass ran ahead of a reader that stopped"
    received = sum(len(chunk.content) for chunk in call) + len(first.content)
    assert received == 3 * 4 * 2048 * 2048 * 4
    assert len(live.alive_at_handout) == 3 * tiles
