"""A layer computed in query tiles gives the numbers of the layer computed whole, in both
backends: exact rows, one head, windows crossing tile edges and pooling folded across tiles,
with padding masks, causal attention and an uneven last tile."""

from __future__ import annotations

import numpy as np
import pytest

from neural_attn.backends.base import get_backend
from neural_attn.backends.streaming import Reduction
from neural_attn.dsl import compile_source

SOURCE = """
network Tiles {
  input: (37,)
  layers:
    Embedding(input_dim=40, output_dim=16)
    TransformerEncoder(num_heads=4, ff_dim=24)
    MultiHeadAttention(num_heads=2, key_dim=5, causal=true)
    GlobalAveragePooling1D()
    Output(units=3, activation="softmax")
}
"""

REDUCTIONS = [
    Reduction(),
    Reduction(head=1),
    Reduction(query=(3, 29), key=(2, 30)),
    Reduction(pool_size=6, pool_mode="max"),
    Reduction(query=(4, 33), key=(1, 0), pool_size=5, pool_mode="mean"),
    Reduction(head=0, query=(10, 11), pool_size=3),
]


@pytest.fixture(scope="module", params=["pytorch", "tensorflow"])
def models(request):
    net = compile_source(SOURCE, filename="tiles.neural")
    whole = get_backend(request.param).build(net, seed=7)
    tiled = get_backend(request.param).build(net, seed=7)
    tiled.set_tile_elements(2 * 4 * 37 * 5)  # 5 query rows per tile in the encoder, 10 in MHA
    return net, whole, tiled


def _ids():
    ids = np.random.default_rng(0).integers(1, 40, size=(2, 37))
    ids[1, 30:] = 0  # padding at the end of one item
    return ids


def test_tiled_forward_equals_whole(models):
    net, whole, tiled = models
    names = [layer.name for layer in net.attention_layers]
    out_a, a = whole.forward(_ids(), capture=names)
    out_b, b = tiled.forward(_ids(), capture=names)
    np.testing.assert_allclose(out_b, out_a, atol=1e-6)
    for name in names:
        np.testing.assert_allclose(b[name], a[name], atol=1e-6, err_msg=name)
    upper = np.triu(np.ones((37, 37), dtype=bool), k=1)
    assert np.all(b["multi_head_attention_0"][..., upper] == 0.0)


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=repr)
def test_tiles_reduce_to_numpy_of_the_exact_layer(models, reduction):
    net, whole, tiled = models
    names = [layer.name for layer in net.attention_layers]
    _, exact = whole.forward(_ids(), capture=names)
    got: dict[str, list] = {}
    for name, tile in tiled.stream(_ids(), capture=names, reduction=reduction):
        got.setdefault(name, []).append(tile)
    for name in names:
        tiles = got[name]
        assert [(t.start, t.stop) for t in tiles] == tiles[0].schedule()
        ref = exact[name] if reduction.head is None else exact[name][:, [reduction.head]]
        pooling = reduction.pooling(exact[name].shape)
        if pooling is not None:
            ref = pooling.apply(ref)
        if pooling is not None and pooling.pooled:
            assert len(tiles) == 1 and tiles[0].is_whole  # pooled: folded, sent whole
        else:
            assert len(tiles) > 1  # exact rows leave tile by tile
        values = np.concatenate([t.values for t in tiles], axis=2)
        np.testing.assert_allclose(values, ref, atol=1e-6, err_msg=name)


def test_file_sinks_take_a_tiled_layers_chunks_out_of_order(tmp_path):
    from neural_attn.client._sinks import LayerHeader, NpzSink

    layer = np.random.default_rng(2).random((2, 3, 7, 5), dtype=np.float32)
    header = LayerHeader(
        name="enc", index=0, shape=layer.shape, dtype=np.dtype(np.float32), head=None, pooling=None
    )
    with NpzSink(tmp_path / "a.npz") as sink:
        sink.begin(header)
        for start in range(0, 7, 3):  # tiles of 3 rows, each (item, head)'s rows in turn
            for b in range(2):
                for h in range(3):
                    rows = layer[b, h, start : start + 3].reshape(-1)
                    sink.write(((b * 3 + h) * 7 + start) * 5, rows)
        sink.end()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["enc"], layer)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # the scratch file is gone


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=repr)
def test_exact_host_tiles_fold_to_the_pooling_of_the_whole_layer(reduction):
    # The server's own tiles, on the host, fold rows before keys (TiledReduction.add_exact):
    # the result is the pooling of the whole layer, whatever tiles cut the query blocks.
    from neural_attn.backends.streaming import TiledReduction

    layer = np.random.default_rng(3).random((2, 4, 37, 37), dtype=np.float32)
    ref = layer if reduction.head is None else layer[:, [reduction.head]]
    pooling = reduction.pooling(layer.shape)
    ref = pooling.apply(ref) if pooling is not None else ref
    for rows in (5, 7, 37):
        reducer = TiledReduction(reduction, layer.shape)
        out = [
            tile
            for start in range(0, 37, rows)
            if (tile := reducer.add_exact(start, rows, layer[:, :, start : start + rows]))
            is not None
        ]
        values = np.concatenate([t.values for t in out], axis=2)
        np.testing.assert_allclose(values, ref, atol=1e-6, err_msg=f"tiles of {rows} rows")
