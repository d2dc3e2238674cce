"""A long sequence's npz streams in on a thread of its own while the figures and page are drawn
(client/_beside.py): the npz is exact and complete, a failure while drawing stops its stream
at the next chunk (no stream outlives the call, the server keeps serving), and what the stream
raises reaches the caller. Through a real server on loopback."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from neural_attn.client import AttentionVisualizer
from neural_attn.client import _outputs as outputs
from neural_attn.client._beside import Beside
from neural_attn.client._sinks import NpzSink

# 2 x 2 heads x 512²: 2 MiB a layer, more than the display's 32 positions (so the figures get
# pooled layers and the npz streams), in several 1 MiB chunks.
SOURCE = """network Long {
  input: (512, 8)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=16) * 2
}
"""
DATA = np.random.default_rng(4).standard_normal((1, 512, 8)).astype(np.float32)


def _visualize(client, tmp_path: Path):
    path = tmp_path / "long.neural"
    path.write_text(SOURCE)
    viz = AttentionVisualizer(None, "pytorch", client=client)
    return viz.visualize_from_dsl(
        path, DATA, "pytorch", output_dir=tmp_path / "out", display_size=32
    )


def _streams_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "attention_weights.npz"]


def test_the_npz_streams_beside_the_figures_exact_and_complete(client, tmp_path, monkeypatch):
    started: list[str] = []
    inner = Beside.__init__

    def counted(self, job, *, name):
        started.append(name)
        inner(self, job, name=name)

    monkeypatch.setattr(Beside, "__init__", counted)
    result = _visualize(client, tmp_path)
    assert started == ["attention_weights.npz"]
    assert Path(result["files"]["npz"]).is_file() and Path(result["files"]["heatmap"]).is_file()
    exact = dict(client.extract_attention(result["model"], DATA))
    assert sorted(result["attention_weights"]) == sorted(exact)
    for name, layer in exact.items():
        np.testing.assert_array_equal(result["attention_weights"][name], layer)
    assert not _streams_alive()


def test_a_failure_while_drawing_stops_the_npz_stream(client, tmp_path, monkeypatch):
    writes: list[int] = []
    write = NpzSink.write

    def slow(self, offset, values):
        writes.append(offset)
        threading.Event().wait(0.3)
        write(self, offset, values)

    def broken(*args, **kwargs):
        threading.Event().wait(0.1)  # the stream is under way
        raise RuntimeError("no display")

    monkeypatch.setattr(NpzSink, "write", slow)
    monkeypatch.setattr(outputs, "figures", broken)
    with pytest.raises(RuntimeError, match="no display"):
        _visualize(client, tmp_path)
    assert not _streams_alive()
    assert 1 <= len(writes) < 4, writes  # 2 layers of 2 chunks each: it stopped early
    monkeypatch.undo()
    result = _visualize(client, tmp_path)  # the server still serves, the npz is whole
    assert len(result["attention_weights"]) == 2


def test_what_the_stream_raises_reaches_the_caller(client, tmp_path, monkeypatch):
    def full(self, offset, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(NpzSink, "write", full)
    with pytest.raises(OSError, match="No space left on device"):
        _visualize(client, tmp_path)
    assert not _streams_alive()
