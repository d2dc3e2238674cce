"""Learned positions of any length: a dynamic input compiles, and data past max_len is refused
by the shared input rule both backends use (INVALID_ARGUMENT naming max_len)."""

from __future__ import annotations

import numpy as np
import pytest

from neural_attn.backends.base import prepare_input, sample_shape
from neural_attn.dsl import compile_source
from neural_attn.errors import InvalidInputError

SOURCE = """network Long {
  input: (None,)
  layers:
    Embedding(input_dim=50, output_dim=8)
    PositionalEncoding(max_len=1024, kind="learned")
    TransformerDecoder(2, 16, norm_first=true, epsilon=1e-5, activation="gelu_tanh")
    LayerNormalization(epsilon=1e-5)
}
"""


def test_dynamic_input_with_learned_max_len_compiles():
    net = compile_source(SOURCE)
    assert net.input_shape == (None,)
    assert net.layer("positional_encoding_0")["max_len"] == 1024
    assert sample_shape(net, length=2)[0] == (1, 2)


def test_more_positions_than_max_len_is_refused_by_name():
    net = compile_source(SOURCE)
    ok = prepare_input(net, np.ones((1, 1024), dtype=np.int64))
    assert ok.array.shape == (1, 1024)
    with pytest.raises(InvalidInputError) as info:
        prepare_input(net, np.ones((1, 1025), dtype=np.int64))
    assert "max_len" in str(info.value) and "1025" in str(info.value)
    assert info.value.status_name == "INVALID_ARGUMENT"
