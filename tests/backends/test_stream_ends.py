"""A stream gives the layers of the whole pass, whether or not its pass runs past the last
attention: TensorFlow's one graph for a stream ends at that attention's hand-over (TensorFlow
prunes the rest), a forward pass's graph runs to the output, and tiled or PyTorch passes run
block by block to the end."""

from __future__ import annotations

import numpy as np
import pytest

from neural_attn.backends.base import get_backend
from neural_attn.dsl import compile_source

SOURCE = """
network Ends {
  input: (16, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=16) * 3
    Dense(units=32)
}
"""
NAMES = ["transformer_encoder_0", "transformer_encoder_1", "transformer_encoder_2"]
DATA = np.random.default_rng(0).standard_normal((1, 16, 8)).astype(np.float32)


def _streamed(model, capture):
    """Each layer the stream gives, its tiles of query rows put together."""
    layers: dict[str, np.ndarray] = {}
    for name, tile in model.stream(DATA, capture=capture):
        if name not in layers:
            shape = (*tile.values.shape[:2], tile.rows, tile.values.shape[3])
            layers[name] = np.full(shape, np.nan, np.float32)
        layers[name][:, :, tile.start : tile.start + tile.values.shape[2]] = tile.values
    return layers


@pytest.mark.parametrize("tiles", [False, True], ids=["whole layers", "query tiles"])
@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_a_streams_layers_are_the_whole_pass_layers(backend, tiles):
    pytest.importorskip("tensorflow" if backend == "tensorflow" else "torch")
    model = get_backend(backend).build(compile_source(SOURCE), seed=0)
    _, whole = model.forward(DATA, capture=NAMES)
    if tiles:
        model.set_tile_elements(2 * 4 * 16)  # 4 query rows a tile: block by block in TF
    for wanted in (NAMES[:1], NAMES[1:2], NAMES):
        got = _streamed(model, wanted)
        assert list(got) == wanted
        for name in wanted:
            np.testing.assert_allclose(got[name], whole[name], rtol=0, atol=1e-6)
    # and a forward pass after the streams still runs to its output
    out, again = model.forward(DATA, capture=NAMES)
    assert out.shape == (1, 16, 32)
    for name in NAMES:
        np.testing.assert_allclose(again[name], whole[name], rtol=0, atol=1e-6)
