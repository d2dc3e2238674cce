"""A PyTorch pass asks `should_stop` inside each attention layer too, right before its scores:
a call cancelled while a long layer runs stops there, not only between layers."""

from __future__ import annotations

import numpy as np
import pytest

from neural_attn.backends.base import get_backend
from neural_attn.dsl import compile_source
from neural_attn.errors import CancelledError

ONE_LAYER = """
network One {
  input: (12, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=8)
}
"""


def test_a_pass_stops_inside_its_only_attention_layer():
    net = compile_source(ONE_LAYER)
    model = get_backend("pytorch").build(net, seed=0)
    data = np.ones((1, 12, 8), np.float32)
    asked: list[int] = []

    def should_stop() -> bool:  # no before the layer, yes inside it
        asked.append(1)
        return len(asked) > 1

    with pytest.raises(CancelledError):
        model.forward(data, capture=["transformer_encoder_0"], should_stop=should_stop)
    assert len(asked) == 2
    _, kept = model.forward(data, capture=["transformer_encoder_0"], should_stop=lambda: False)
    assert kept["transformer_encoder_0"].shape == (1, 2, 12, 12)  # the hooks are left clean
