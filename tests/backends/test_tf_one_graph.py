"""On a CPU, TensorFlow runs a whole pass as one graph that hands each attention layer over from
inside it (backends/tensorflow/one_graph.py): the attention of the numpy reference, one layer at
a time to a stream, stopped at a gate when asked, what the capture raises raised as itself, and
readers that stop reading never stall the other passes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from reference import encoder

from neural_attn.backends.base import get_backend
from neural_attn.backends.streaming import running_passes
from neural_attn.dsl import compile_source
from neural_attn.errors import CancelledError

pytest.importorskip("tensorflow")

from neural_attn.backends.tensorflow import build, one_graph  # noqa: E402

SOURCE = """network Stack {
  input: (None,)
  layers:
    Embedding(input_dim=40, output_dim=16)
    TransformerEncoder(num_heads=2, ff_dim=32, num_layers=3)
    TransformerDecoder(num_heads=4, ff_dim=32)
    GlobalAveragePooling1D()
    Output(units=3)
}
"""
IDS = np.random.default_rng(5).integers(1, 40, size=(2, 11))


@pytest.fixture(scope="module")
def model():
    return get_backend("tensorflow").build(compile_source(SOURCE), seed=2, device="cpu")


def _names(model) -> list[str]:
    return [layer.name for _, layer in model.network.attention_sites]


def _reference(model) -> list[np.ndarray]:
    w = {k: v.astype(np.float64) for k, v in model.get_weights().items()}
    x, probs = w["embedding_0/embeddings"][IDS], []
    for name in _names(model):
        x, p = encoder(x, w, f"{name}/", causal=name.startswith("transformer_decoder"))
        probs.append(p)
    return probs


def test_the_one_graph_gives_the_reference_attention(model):
    assert isinstance(model._runner, one_graph.OneGraph)
    _, got = model.forward(IDS, capture=_names(model))
    assert model._runner._graphs, "the pass did not run as one graph"
    for name, want in zip(_names(model), _reference(model), strict=True):
        np.testing.assert_allclose(got[name], want, atol=1e-5)
    assert np.all(np.triu(got["transformer_decoder_0"], 1) == 0.0)


@pytest.fixture
def handed(monkeypatch) -> list[int]:
    """One item for each layer the backend has handed over (turned into numpy) so far."""
    handed: list[int] = []
    inner = build.TensorFlowModel._to_numpy

    def counted(self, tensor, reduction=None):
        handed.append(1)
        return inner(self, tensor, reduction)

    monkeypatch.setattr(build.TensorFlowModel, "_to_numpy", counted)
    return handed


def test_a_stream_gets_one_layer_at_a_time_and_closing_it_ends_the_pass(model, handed):
    before = running_passes()
    stream = model.stream(IDS, capture=_names(model))
    name, first = next(stream)
    time.sleep(0.3)
    assert (name, len(handed)) == (_names(model)[0], 1)  # the pass waits in its graph
    assert next(stream)[0] == _names(model)[1]
    stream.close()  # the pass stops at its next gate, inside the graph
    for _ in range(100):
        if running_passes() <= before:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the pass of a closed stream is still running")
    assert len(handed) == 2
    _, again = model.forward(IDS, capture=_names(model)[:1])  # the model still serves
    np.testing.assert_array_equal(again[name], first.values)


def test_a_pass_asked_to_stop_stops_at_the_next_gate(model, handed):
    with pytest.raises(CancelledError):
        model.forward(IDS, capture=_names(model), should_stop=lambda: len(handed) >= 1)
    assert len(handed) == 1


def test_what_the_capture_raises_is_raised_as_itself(model, monkeypatch):
    def broken(self, tensor, reduction=None):
        raise MemoryError("no room for this layer")

    monkeypatch.setattr(build.TensorFlowModel, "_to_numpy", broken)
    with pytest.raises(MemoryError, match="no room for this layer"):
        model.forward(IDS, capture=_names(model))


def test_readers_that_stop_reading_never_stall_the_other_passes(model):
    """Each stream below waits in its graph, on an inter-op thread, or block by block once the
    one-graph passes are as many as they may be; either way another pass still runs."""
    streams = []
    for _ in range(one_graph._SLOTS._initial_value + 1):
        stream = model.stream(IDS, capture=_names(model))
        streams.append((stream, next(stream)))
    done = threading.Event()
    got: dict[str, np.ndarray] = {}

    def another() -> None:
        got.update(model.forward(IDS, capture=_names(model))[1])
        done.set()

    threading.Thread(target=another, daemon=True).start()
    try:
        assert done.wait(60), "a pass stalled behind readers that stopped reading"
    finally:
        for stream, _ in streams:
            stream.close()
    np.testing.assert_array_equal(got[_names(model)[0]], streams[0][1][1].values)


@pytest.mark.parametrize(
    ("body", "one"),
    [
        ("Embedding(input_dim=9, output_dim=8)\n TransformerEncoder(num_heads=2, ff_dim=8)", True),
        ("Dense(units=8)\n TransformerEncoder(num_heads=2, ff_dim=8)\n Flatten()", True),
        ("Conv1D(filters=8, kernel_size=3)\n TransformerEncoder(num_heads=2, ff_dim=8)", False),
        ("MaxPooling1D(pool_size=2)\n TransformerEncoder(num_heads=2, ff_dim=8)", False),
        ("ResidualConnection {\n MultiHeadAttention(num_heads=2)\n }", False),
        ("ResidualConnection {\n Dense(units=8)\n }\n MultiHeadAttention(num_heads=2)", True),
        ("Dense(units=4)", False),
    ],
)
def test_only_networks_whose_attention_sees_the_input_length_run_as_one_graph(body, one, recwarn):
    """Elsewhere the input's length says nothing about the attention's, nor so whether a layer
    comes in tiles: those passes run block by block, as before. Building them warns of nothing
    (Keras warned of a softmax over one key for the build's two-position sample, pooled)."""
    first = "(None,)" if body.startswith("Embedding") else "(12, 8)"
    network = compile_source(f"network N {{\n input: {first}\n layers:\n {body}\n}}")
    built = get_backend("tensorflow").build(network, seed=0, device="cpu")
    assert isinstance(built._runner, one_graph.OneGraph) is one
    assert not [w for w in recwarn if "softmax over axis" in str(w.message)]


def test_with_no_slot_free_a_pass_runs_block_by_block(monkeypatch):
    """As on a one-core machine (an inter-op pool of one thread: no slots at all)."""
    monkeypatch.setattr(one_graph, "_SLOTS", threading.BoundedSemaphore(0))
    built = get_backend("tensorflow").build(compile_source(SOURCE), seed=2, device="cpu")
    _, got = built.forward(IDS, capture=_names(built))
    assert not built._runner._graphs
    for name, want in zip(_names(built), _reference(built), strict=True):
        np.testing.assert_allclose(got[name], want, atol=1e-5)
