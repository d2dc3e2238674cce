"""Every parameter starts by a rule named for it (backends/weights.py); a name no rule covers is
refused, naming where to add one, never silently zero."""

from __future__ import annotations

import pytest

from neural_attn.backends import weights
from neural_attn.dsl import compile_source

SOURCE = """
network Every {
  input: (6, 8)
  layers:
    LayerNormalization()
    TransformerEncoder(num_heads=2, ff_dim=8)
    Dense(4)
}
"""


def test_known_names_start_as_their_rule():
    start = weights.initial_weights(compile_source(SOURCE), seed=0)
    for key, value in start.items():
        param = key.rsplit("/", 1)[-1]
        if param in ("gamma", "moving_variance"):
            assert (value == 1).all(), key
        elif param.endswith("bias") or param in ("beta", "moving_mean"):
            assert (value == 0).all(), key
        else:
            assert value.std() > 0, key


def test_an_unknown_parameter_name_is_refused(monkeypatch):
    net = compile_source(SOURCE)
    real = weights.weight_shapes(net)
    monkeypatch.setattr(weights, "weight_shapes", lambda _: {**real, "dense_0/scale": (4,)})
    with pytest.raises(ValueError, match=r"`dense_0/scale`.*backends/weights.py"):
        weights.initial_weights(net, seed=0)
