"""A long layer travels as row tiles through the real gRPC server on loopback: exact rows, one
head, windows crossing tile edges, small chunks and an .npz written straight from the stream
all equal the layer computed whole (tiles forced on the served model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neural_attn.client import AttentionClient
from neural_attn.client._sinks import NpzSink
from neural_attn.server.app import build_server

SOURCE = (Path(__file__).parents[1] / "backends" / "test_query_tiles.py").read_text()
SOURCE = SOURCE.split('SOURCE = """')[1].split('"""')[0]


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_row_tiles_over_grpc_equal_the_whole_layer(backend, tmp_path):
    app = build_server(host="127.0.0.1", port=0)
    app.server.start()
    try:
        with AttentionClient(f"127.0.0.1:{app.port}") as client:
            model = client.compile(SOURCE, backend=backend)
            ids = np.random.default_rng(0).integers(1, 40, size=(2, 37))
            whole = {k: np.array(v) for k, v in client.extract_attention(model, ids)}
            entry = app.servicer.engine.cache.get(model.model_id)
            entry.model.set_tile_elements(2 * 4 * 37 * 5)  # 5 query rows per tile
            cases = [
                ({}, lambda a: a),
                ({"head": 1}, lambda a: a[:, [1]]),
                ({"window": ((3, 29), (2, 30))}, lambda a: a[:, :, 3:29, 2:30]),
                ({"max_chunk_bytes": 1024}, lambda a: a),
            ]
            for options, expected in cases:
                got = dict(client.extract_attention(model, ids, **options))
                for name, layer in whole.items():
                    np.testing.assert_allclose(got[name], expected(layer), atol=1e-6)
            with NpzSink(tmp_path / "a.npz") as sink:
                list(client.extract_attention(model, ids, sink=sink, max_chunk_bytes=2048))
            written = np.load(tmp_path / "a.npz")
            for name, layer in whole.items():
                np.testing.assert_allclose(written[name], layer, atol=1e-6)
    finally:
        app.server.stop(0)
