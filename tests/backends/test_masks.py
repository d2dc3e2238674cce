"""Masks: padding keys (token id 0) get exactly zero attention, rows still sum to 1; causal
attention has an exactly-zero upper triangle; numpy reference and both backends agree."""

from __future__ import annotations

import numpy as np
import pytest
from reference import attention, layer_norm

from neural_attn.backends.base import get_backend
from neural_attn.dsl import compile_source

BACKENDS = ("tensorflow", "pytorch")
IDS = np.array(
    [[5, 9, 2, 7, 0, 0, 0, 0], [3, 0, 4, 8, 1, 0, 6, 0], [0, 0, 0, 2, 3, 4, 5, 6]], dtype=np.int64
)


def _net(embedding: str, encoder: str, extra: str = "") -> str:
    return f"""
network Masked {{
  input: (8,)
  layers:
    Embedding(input_dim=12, output_dim=16{embedding})
    TransformerEncoder(num_heads=4, ff_dim=16{encoder})
    {extra}
    GlobalAveragePooling1D()
    Output(units=2)
}}
"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "source",
    [_net(", mask_zero=true", ""), _net("", ", use_attention_mask=true")],
    ids=["mask_zero", "use_attention_mask"],
)
def test_padding_keys_get_exactly_zero(backend, source):
    network = compile_source(source)
    model = get_backend(backend).build(network, seed=2)
    _, served = model.forward(IDS, capture=["transformer_encoder_0"])
    probs = served["transformer_encoder_0"]
    padding = IDS == 0
    for b in range(IDS.shape[0]):
        assert np.all(probs[b][..., padding[b]] == 0.0), f"item {b}: padding keys attended"
        assert np.all(probs[b][..., ~padding[b]] > 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    w = model.get_weights()
    x = w["embedding_0/embeddings"].astype(np.float64)[IDS]
    _, expected = attention(x, w, "transformer_encoder_0/attention/", keys_ok=~padding)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_reaches_every_attention_layer_with_mask_zero(backend):
    source = _net(", mask_zero=true", "", "MultiHeadAttention(num_heads=2, causal=true)")
    network = compile_source(source)
    model = get_backend(backend).build(network, seed=3)
    _, served = model.forward(IDS, capture=["multi_head_attention_0"])
    probs = served["multi_head_attention_0"]
    upper = np.triu(np.ones((8, 8), dtype=bool), k=1)
    assert np.all(probs[..., upper] == 0.0)
    for b in range(IDS.shape[0]):
        keys = IDS[b] == 0
        assert np.all(probs[b][..., keys] == 0.0)
        # A query with no real token at or before it has nothing to attend: its row is all 0
        # (Keras's rule, both backends); every other row sums to 1.
        sees_a_token = np.cumsum(~keys) > 0
        np.testing.assert_allclose(probs[b].sum(-1)[:, sees_a_token], 1.0, atol=1e-6)
        assert np.all(probs[b][:, ~sees_a_token] == 0.0)


def test_masked_attention_is_the_same_in_both_backends():
    network = compile_source(
        _net(", mask_zero=true", "", "TransformerDecoder(num_heads=2, ff_dim=8)")
    )
    tf_model = get_backend("tensorflow").build(network, seed=5)
    pt_model = get_backend("pytorch").build(network, seed=5)
    names = ["transformer_encoder_0", "transformer_decoder_0"]
    out_tf, tf_probs = tf_model.forward(IDS, capture=names)
    out_pt, pt_probs = pt_model.forward(IDS, capture=names)
    for name in names:
        np.testing.assert_allclose(tf_probs[name], pt_probs[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(out_tf, out_pt, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_mask_padding_is_attended(backend):
    network = compile_source(_net("", ""))
    model = get_backend(backend).build(network, seed=2)
    _, served = model.forward(IDS, capture=["transformer_encoder_0"])
    assert np.all(served["transformer_encoder_0"] > 0.0)


def test_layer_norm_reference_is_sane():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    y = layer_norm(x, np.ones(4), np.zeros(4), 1e-6)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-9)
