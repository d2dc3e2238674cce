"""The engine without gRPC: a private model masks heads without touching the shared one."""

from __future__ import annotations

import numpy as np

from neural_attn.server.config import ServerConfig
from neural_attn.server.engine import Engine

SOURCE = """
network Small {
  input: (6, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=8) * 2
}
"""


def test_private_model_masks_heads_and_leaves_the_shared_model_alone():
    engine = Engine(ServerConfig())
    entry, _ = engine.compile(
        SOURCE, filename="small.neural", backend="pytorch", seed=0, network=None
    )
    data = np.random.default_rng(0).standard_normal((2, 6, 8)).astype(np.float32)
    shared, _ = entry.model.forward(data)
    private = engine.private_model(entry)
    base, attention = private.forward(data, capture=list(attention_names(entry)))
    np.testing.assert_allclose(base, shared, rtol=1e-5, atol=1e-6)
    assert set(attention) == set(attention_names(entry))
    layer = next(iter(attention))
    masked = private.masked(data, {layer: np.zeros((2, 2), np.float32)})
    assert not np.allclose(masked, base)
    # The masks are gone after the pass, and never reached the shared model.
    np.testing.assert_allclose(private.forward(data)[0], base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entry.model.forward(data)[0], shared, rtol=1e-5, atol=1e-6)


def attention_names(entry):
    return [layer.name for _, layer in entry.network.attention_sites]
