"""A stream's pass ends with the last layer it was asked for: nothing after that attention runs
(the later blocks, a head), and the layers it gives are those of the whole pass."""

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
            layers[name] = np.full((*tile.values.shape[:2], tile.rows, 16), np.nan, np.float32)
        layers[name][:, :, tile.start : tile.start + tile.values.shape[2]] = tile.values
    return layers


def test_pytorch_runs_nothing_past_the_last_wanted_attention():
    model = get_backend("pytorch").build(compile_source(SOURCE), seed=0)
    _, whole = model.forward(DATA, capture=NAMES)
    ran: list[str] = []
    for name, block in model.model.blocks.items():
        block.register_forward_hook(lambda *_, name=name: ran.append(name))

    first = _streamed(model, ["transformer_encoder_0"])
    assert list(first) == ["transformer_encoder_0"]
    np.testing.assert_array_equal(first["transformer_encoder_0"], whole["transformer_encoder_0"])
    # The first block's attention was taken inside it: not even that block returned.
    assert ran == []

    ran.clear()
    every = _streamed(model, NAMES)
    assert ran == NAMES[:2]  # the last block stops inside, and the Dense head never runs
    for name in NAMES:
        np.testing.assert_array_equal(every[name], whole[name])

    ran.clear()
    out, _ = model.forward(DATA, capture=NAMES)  # a forward pass still runs to its output
    assert out.shape == (1, 16, 32) and ran == [*NAMES, "dense_0"]


@pytest.mark.parametrize("tiles", [False, True], ids=["whole layers", "query tiles"])
@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_the_layers_of_an_ended_pass_are_the_whole_pass_layers(backend, tiles):
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
    # and a pass after an ended one is whole again
    out, again = model.forward(DATA, capture=NAMES)
    assert out.shape == (1, 16, 32)
    for name in NAMES:
        np.testing.assert_allclose(again[name], whole[name], rtol=0, atol=1e-6)
