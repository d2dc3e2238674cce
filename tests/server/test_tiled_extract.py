"""A long layer travels as row tiles through the real gRPC server on loopback: exact rows, one
head, windows crossing tile edges, small chunks and an .npz written straight from the stream
all equal the layer computed whole by a server whose tiles hold it all. The limits then bound
one tile and what a request keeps, not a whole layer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from neural_attn import analysis
from neural_attn.client import AttentionClient
from neural_attn.client._sinks import NpzSink
from neural_attn.errors import ResourceLimitError
from neural_attn.server.app import build_server
from neural_attn.server.config import ServerConfig

SOURCE = (Path(__file__).parents[1] / "backends" / "test_query_tiles.py").read_text()
SOURCE = SOURCE.split('SOURCE = """')[1].split('"""')[0]


ROW = 2 * 4 * 37  # scores of one query row: 2 items x 4 heads x 37 keys


@contextmanager
def serving(config: ServerConfig | None = None) -> Iterator[AttentionClient]:
    app = build_server(host="127.0.0.1", port=0, config=config)
    app.server.start()
    try:
        with AttentionClient(f"127.0.0.1:{app.port}") as client:
            yield client
    finally:
        app.server.stop(0)


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_row_tiles_over_grpc_equal_the_whole_layer(backend, tmp_path):
    ids = np.random.default_rng(0).integers(1, 40, size=(2, 37))
    with serving() as client:
        model = client.compile(SOURCE, backend=backend)
        whole = {k: np.array(v) for k, v in client.extract_attention(model, ids)}
    # 5 query rows per tile, and no request may hold more than 10 rows of a layer at once
    tiled = ServerConfig(tile_elements=5 * ROW, max_attention_elements=10 * ROW)
    with serving(tiled) as client:
        model = client.compile(SOURCE, backend=backend)
        cases = [
            ({}, lambda a: a),
            ({"head": 1}, lambda a: a[:, [1]]),
            ({"window": ((3, 29), (2, 30))}, lambda a: a[:, :, 3:29, 2:30]),
            ({"max_chunk_bytes": 1024}, lambda a: a),
            ({"pool_size": 8, "pool_mode": "mean"}, None),
        ]
        for options, expected in cases:
            got = {layer.name: layer for layer in client.extract_layers(model, ids, **options)}
            for name, layer in whole.items():
                if expected is None:  # pooled on the server from the tiles
                    want = got[name].pooling.apply(layer)
                    np.testing.assert_allclose(got[name].value, want, atol=1e-6)
                else:
                    np.testing.assert_allclose(got[name].value, expected(layer), atol=1e-6)
        with NpzSink(tmp_path / "a.npz") as sink:
            list(client.extract_attention(model, ids, sink=sink, max_chunk_bytes=2048))
        written = np.load(tmp_path / "a.npz")
        for name, layer in whole.items():
            np.testing.assert_allclose(written[name], layer, atol=1e-6)

        # What must hold a whole layer (37 rows) is refused, with the numbers.
        with pytest.raises(ResourceLimitError, match=r"10,952 values .*4 heads x 37\^2"):
            client.analyze_heads(model=model, data=ids)
        # Pooling to the full length pools nothing: the exact rows leave tile by tile.
        assert len(dict(client.extract_attention(model, ids, pool_size=37))) == 2


def test_a_tile_is_never_over_the_limit(tmp_path):
    """One query row over the limit cannot be tiled smaller: refused before the pass."""
    config = ServerConfig(tile_elements=ROW // 2, max_attention_elements=ROW - 1)
    with serving(config) as client:
        model = client.compile(SOURCE, backend="pytorch")
        ids = np.ones((2, 37), dtype=np.int64)
        with pytest.raises(ResourceLimitError, match=r"one tile of `\w+` would hold 296 scores"):
            list(client.extract_attention(model, ids))
        small = np.ones((1, 37), dtype=np.int64)  # one item: a row is half as long
        assert len(dict(client.extract_attention(model, small))) == 2
    config = ServerConfig(tile_elements=ROW, max_attention_elements=2 * ROW)
    with serving(config) as client:
        model = client.compile(SOURCE, backend="pytorch")
        ids = np.ones((2, 37), dtype=np.int64)
        assert len(dict(client.extract_attention(model, ids))) == 2  # a tile is one row
        # What a request keeps is bounded too: 2 items x 4 heads x 19 x 19 pooled cells.
        with pytest.raises(ResourceLimitError, match=r"pooled would hold 2,888 values"):
            list(client.extract_attention(model, ids, pool_size=19))


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_metrics_and_the_pooled_rollout_from_tiles_equal_the_whole_layers(backend, monkeypatch):
    """Analyze sums the metrics and the rollout tile by tile (no layer whole on the server, which
    refuses to hold one): equal to numpy's on the whole layers, the rollout pooled as labelled."""
    ids = np.random.default_rng(1).integers(1, 40, size=(2, 37))
    with serving() as client:
        model = client.compile(SOURCE, backend=backend)
        whole = {k: np.array(v) for k, v in client.extract_attention(model, ids)}
    monkeypatch.setattr(analysis, "ROLLOUT_EXACT_MAX", 36)  # 37 positions: pooled
    monkeypatch.setattr(analysis, "ROLLOUT_POOLED_SIZE", 8)
    local = analysis.summarize_layers(whole, rollout_as_list=False)
    tiled = ServerConfig(tile_elements=5 * ROW, max_attention_elements=10 * ROW)
    with serving(tiled) as client:
        model = client.compile(SOURCE, backend=backend)
        got = client.analyze(model=model, data=ids, pool_size=8, pool_mode="mean")
        assert "pooled" not in client.analyze(model=model, data=ids, pool_size=37)
    assert list(got["layers"]) == list(whole)
    # The layers pooled for display come from the same pass: numpy's pooling of the whole.
    assert list(got["pooled"]) == list(whole)
    for name, layer in got["pooled"].items():
        assert layer.pooling.query_block == layer.pooling.key_block == 5
        np.testing.assert_allclose(layer.value, layer.pooling.apply(whole[name]), atol=1e-6)
    for name, want in local["layers"].items():
        for metric in analysis.numbers():
            heads = range(want["num_heads"])
            values = [analysis.head_value(got["layers"][name], metric, h) for h in heads]
            wanted = [analysis.head_value(want, metric, h) for h in heads]
            np.testing.assert_allclose(values, wanted, rtol=1e-6, atol=1e-9, err_msg=metric.key)
        assert got["layers"][name]["pattern_per_head"] == want["pattern_per_head"]
    assert got["rollout_pooling"] == local["rollout_pooling"] == analysis.rollout_pooling(37, 5)
    assert got["rollout"].shape == (8, 8)
    np.testing.assert_allclose(got["rollout"], local["rollout"], rtol=1e-5, atol=1e-7)
