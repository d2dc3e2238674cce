"""Sinks take chunks as they arrive: the npz and .npy files they write equal the arrays."""

from __future__ import annotations

import numpy as np
import pytest

from neural_attn.client._sinks import LayerHeader, NpyDirSink, NpzSink
from neural_attn.errors import InvalidInputError

MODEL = """
network Sunk {
  input: (40, 16)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=16) * 2
}
"""


@pytest.mark.parametrize("backend", ["tensorflow", "pytorch"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_files_written_chunk_by_chunk_equal_the_arrays(client, tmp_path, backend, dtype):
    model = client.compile(MODEL, backend=backend)
    data = np.random.default_rng(1).standard_normal((3, 40, 16)).astype(np.float32)
    # 1 KiB chunks: a layer arrives in dozens of pieces, some ending inside a row.
    options = {"dtype": dtype, "max_chunk_bytes": 1024}
    arrays = dict(client.extract_attention(model, data, **options))
    with NpzSink(tmp_path / "w.npz") as sink:
        written = list(client.extract_layers(model, data, sink=sink, **options))
    assert [layer.value for layer in written] == [None, None]
    mapped = dict(
        client.extract_attention(model, data, sink=NpyDirSink(tmp_path / "npy"), **options)
    )
    with np.load(tmp_path / "w.npz") as npz:
        assert sorted(npz.keys()) == sorted(arrays)
        for name, array in arrays.items():
            assert array.dtype == np.dtype(dtype) and array.shape == (3, 4, 40, 40)
            np.testing.assert_array_equal(npz[name], array)
            assert isinstance(mapped[name], np.memmap)
            np.testing.assert_array_equal(mapped[name], array)
            assert (tmp_path / "npy" / f"{name}.npy").is_file()


def test_a_file_sink_refuses_chunks_that_overlap_or_lie_outside(tmp_path):
    # Out of order is fine (a tiled layer's chunks come so); overlapping or outside is not.
    header = LayerHeader("layer_0", 0, (1, 1, 2, 2), np.dtype("<f4"), None, None)
    with NpzSink(tmp_path / "w.npz") as sink:
        sink.begin(header)
        sink.write(0, np.zeros(2, dtype=np.float32))
        with pytest.raises(InvalidInputError, match="overlaps"):
            sink.write(1, np.zeros(1, dtype=np.float32))
        with pytest.raises(InvalidInputError, match="outside"):
            sink.write(3, np.zeros(2, dtype=np.float32))


@pytest.mark.parametrize("zip64_end", [False, True], ids=["small", "zip64-end"])
def test_an_npz_written_out_of_order_is_a_valid_zip_with_true_checksums(
    tmp_path, monkeypatch, zip64_end
):
    # Chunks land at their place in the archive in any order; every member's CRC-32 (computed
    # from the chunks' own) is what zipfile recomputes from the bytes, and a second archive
    # member after a 2-layer stream starts where the first ends.
    import zipfile

    from neural_attn.client import _sinks

    if zip64_end:  # as an archive past 2 GiB ends: ZIP64 end record and locator too
        monkeypatch.setattr(_sinks, "_SIGNED_LIMIT", 0)
    rng = np.random.default_rng(5)
    layers = {f"enc_{i}": rng.random((1, 2, 9, 9), dtype=np.float32) for i in range(2)}
    with NpzSink(tmp_path / "w.npz") as sink:
        for index, (name, layer) in enumerate(layers.items()):
            sink.begin(LayerHeader(name, index, layer.shape, layer.dtype, None, None))
            flat = layer.reshape(-1)
            pieces = [(start, flat[start : start + 7]) for start in range(0, flat.size, 7)]
            for start, values in reversed(pieces):
                sink.write(start, values)
            sink.end()
    assert (b"PK\x06\x06" in (tmp_path / "w.npz").read_bytes()[-200:]) == zip64_end
    with zipfile.ZipFile(tmp_path / "w.npz") as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["enc_0.npy", "enc_1.npy"]
    with np.load(tmp_path / "w.npz") as npz:
        for name, layer in layers.items():
            np.testing.assert_array_equal(npz[name], layer)


def test_a_layer_that_ends_with_values_missing_is_refused(tmp_path):
    header = LayerHeader("layer_0", 0, (1, 1, 2, 2), np.dtype("<f4"), None, None)
    for sink in (NpzSink(tmp_path / "w.npz"), NpyDirSink(tmp_path / "npy")):
        sink.begin(header)
        sink.write(2, np.zeros(2, dtype=np.float32))
        with pytest.raises(InvalidInputError, match="2 of its 4 values"):
            sink.end()
    sink_npz = NpzSink(tmp_path / "w.npz")
    sink_npz.close()  # an archive with no complete layer is an empty npz
    with np.load(tmp_path / "w.npz") as npz:
        assert list(npz.keys()) == []
