"""Attention inside a block (`ResidualConnection { MultiHeadAttention(...) }`) is captured and
streamed like any other, masks included, in both backends."""

from __future__ import annotations

import numpy as np
import pytest
from reference import attention

from neural_attn.backends.base import get_backend
from neural_attn.dsl import compile_source

SOURCE = """
network PreNorm {
  input: (7,)
  layers:
    Embedding(input_dim=20, output_dim=8, mask_zero=true)
    ResidualConnection {
      MultiHeadAttention(num_heads=2)
    }
    ResidualConnection {
      MultiHeadAttention(num_heads=4, causal=true)
    }
    GlobalAveragePooling1D()
    Output(units=2)
}
"""
IDS = np.array([[4, 9, 1, 3, 0, 0, 0], [2, 2, 7, 5, 6, 11, 19]], dtype=np.int64)


def test_nested_attention_layers_are_listed_in_order():
    network = compile_source(SOURCE)
    assert [layer.name for layer in network.attention_layers] == [
        "multi_head_attention_0",
        "multi_head_attention_1",
    ]
    assert [i for i, _ in network.attention_sites] == [1, 2]


@pytest.mark.parametrize("backend", ["tensorflow", "pytorch"])
def test_nested_attention_matches_the_numpy_reference(backend):
    network = compile_source(SOURCE)
    model = get_backend(backend).build(network, seed=1)
    _, served = model.forward(IDS, capture=["multi_head_attention_0", "multi_head_attention_1"])
    w = {k: v.astype(np.float64) for k, v in model.get_weights().items()}
    x = w["embedding_0/embeddings"][IDS]
    keys_ok = IDS != 0
    a, p0 = attention(x, w, "residual_connection_0/multi_head_attention_0/", keys_ok=keys_ok)
    x = x + a
    _, p1 = attention(
        x, w, "residual_connection_1/multi_head_attention_1/", causal=True, keys_ok=keys_ok
    )
    np.testing.assert_allclose(served["multi_head_attention_0"], p0, atol=1e-5)
    np.testing.assert_allclose(served["multi_head_attention_1"], p1, atol=1e-5)
    assert np.all(served["multi_head_attention_0"][0][..., 4:] == 0.0)  # padding keys


def test_nested_attention_is_served(client):
    model = client.compile(SOURCE, backend="pytorch")
    assert model.attention_layers == ("multi_head_attention_0", "multi_head_attention_1")
    streamed = dict(client.extract_attention(model, IDS))
    assert streamed["multi_head_attention_1"].shape == (2, 4, 7, 7)
    chunk_indices = {name: None for name in streamed}
    assert list(chunk_indices) == ["multi_head_attention_0", "multi_head_attention_1"]
