"""Served attention is the real thing: softmax(QK^T/sqrt(d_k)) recomputed in numpy from the
layer's own weights and the layer's own input, in both backends."""

from __future__ import annotations

import numpy as np
import pytest
from reference import attention, encoder

from neural_attn.backends.base import get_backend
from neural_attn.dsl import compile_source

BACKENDS = ("tensorflow", "pytorch")

SOURCE = """
network Ref {
  input: (12,)
  layers:
    Embedding(input_dim=40, output_dim=16)
    TransformerEncoder(num_heads=4, ff_dim=24, dropout=0.1) * 2
    MultiHeadAttention(num_heads=2, key_dim=5, causal=true)
    GlobalAveragePooling1D()
    Output(units=3, activation="softmax")
}
"""


@pytest.fixture(scope="module")
def network():
    return compile_source(SOURCE, filename="ref.neural")


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_matches_numpy_reference(network, backend):
    model = get_backend(backend).build(network, seed=7)
    ids = np.random.default_rng(0).integers(1, 40, size=(3, 12))
    names = [layer.name for layer in network.attention_layers]
    assert names == ["transformer_encoder_0", "transformer_encoder_1", "multi_head_attention_0"]
    _, served = model.forward(ids, capture=names)

    w = {k: v.astype(np.float64) for k, v in model.get_weights().items()}
    x = w["embedding_0/embeddings"][ids]
    x, p0 = encoder(x, w, "transformer_encoder_0/")
    x, p1 = encoder(x, w, "transformer_encoder_1/")
    _, p2 = attention(x, w, "multi_head_attention_0/", causal=True)

    for name, expected in zip(names, (p0, p1, p2), strict=True):
        got = served[name]
        assert got.shape == expected.shape, name
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
        # heads look at different things
        assert not np.allclose(got[:, 0], got[:, 1], atol=1e-3), f"{name}: heads identical"
    # causal: the upper triangle is exactly zero
    upper = np.triu(np.ones((12, 12), dtype=bool), k=1)
    assert np.all(served["multi_head_attention_0"][..., upper] == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_already_embedded_input_skips_the_embedding(network, backend):
    model = get_backend(backend).build(network, seed=7)
    ids = np.random.default_rng(1).integers(1, 40, size=(2, 12))
    embedded = model.get_weights()["embedding_0/embeddings"][ids]
    _, from_ids = model.forward(ids, capture=["transformer_encoder_0"])
    _, from_floats = model.forward(embedded.astype(np.float32), capture=["transformer_encoder_0"])
    np.testing.assert_allclose(
        from_ids["transformer_encoder_0"], from_floats["transformer_encoder_0"], atol=1e-6
    )


def test_same_seed_same_model_in_both_backends(network):
    tf_model = get_backend("tensorflow").build(network, seed=3)
    pt_model = get_backend("pytorch").build(network, seed=3)
    a, b = tf_model.get_weights(), pt_model.get_weights()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (
        tf_model.parameter_count() == pt_model.parameter_count() == sum(v.size for v in a.values())
    )


def _rerandomized(network, seed: int) -> dict[str, np.ndarray]:
    """Every parameter drawn again: gains near 1, biases and kernels well away from 0, so a
    swapped gain and bias or a norm in the wrong place changes the numbers."""
    from neural_attn.backends.weights import weight_shapes

    rng = np.random.default_rng(seed)
    return {
        key: (
            1.0 + 0.2 * rng.standard_normal(shape)
            if key.endswith("gamma")
            else 0.1 + 0.3 * rng.standard_normal(shape)
        ).astype(np.float32)
        for key, shape in weight_shapes(network).items()
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", ["TransformerEncoder", "TransformerDecoder"])
@pytest.mark.parametrize(
    ("norm_first", "epsilon", "activation"),
    [
        (False, 1e-12, "gelu"),
        (True, 1e-5, "gelu_tanh"),
        (True, 1e-12, "gelu"),
        (False, 1e-5, "gelu_tanh"),
        (True, 0.25, "gelu"),  # an epsilon large enough that ignoring it would show
    ],
)
def test_block_norm_order_epsilon_and_gelu_match_numpy(
    backend, block, norm_first, epsilon, activation
):
    """BERT's block (post-norm, epsilon 1e-12, exact GELU) and GPT-2's (pre-norm, 1e-5, tanh
    GELU, causal) and their crossings, against the numpy block, with learned positions."""
    source = f"""
network Block {{
  input: (None,)
  layers:
    Embedding(input_dim=30, output_dim=24)
    PositionalEncoding(max_len=64, kind="learned")
    {block}(num_heads=4, ff_dim=40, num_layers=2, activation="{activation}",
            norm_first={str(norm_first).lower()}, epsilon={epsilon})
    LayerNormalization(epsilon={epsilon})
}}
"""
    network = compile_source(source, filename="block.neural")
    weights = _rerandomized(network, seed=3)
    model = get_backend(backend).build(network, seed=0)
    model.set_weights(weights)
    ids = np.random.default_rng(1).integers(0, 30, size=(2, 19))
    names = [layer.name for layer in network.attention_layers]
    _, served = model.forward(ids, capture=names)

    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x = w["embedding_0/embeddings"][ids] + w["positional_encoding_0/embeddings"][:19]
    causal = block == "TransformerDecoder"
    for name in names:
        x, expected = encoder(
            x,
            w,
            f"{name}/",
            causal=causal,
            activation=activation,
            norm_first=norm_first,
            epsilon=epsilon,
        )
        np.testing.assert_allclose(served[name], expected, atol=1e-5, err_msg=name)
        if causal:
            assert np.all(served[name][..., np.triu(np.ones((19, 19), dtype=bool), 1)] == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trained_weights_skip_the_seeded_draw(network, backend, monkeypatch):
    """Given trained weights, a build never draws the seeded ones (seconds at 100M params)."""
    import importlib

    module = importlib.import_module(f"neural_attn.backends.{backend}.build")

    def refuse(*args, **kwargs):
        raise AssertionError("initial_weights drawn although trained weights were given")

    weights = _rerandomized(network, seed=5)
    monkeypatch.setattr(module, "initial_weights", refuse)
    model = get_backend(backend).build(network, seed=0, weights=weights)
    got = model.get_weights()
    assert all(np.array_equal(got[k], v) for k, v in weights.items())
