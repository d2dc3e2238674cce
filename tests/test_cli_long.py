"""The installed CLI on a sequence longer than the display size, as a user runs it: exact npz
streamed to disk, server-side metrics, pooled figures and page, rollout in its own file."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from browser import chromium_dom, view_status
from test_cli import _png_is_a_picture, _run

from neural_attn.analysis import Rollout, layer_metrics
from neural_attn.client.render import pool_for_display

LENGTH = 1100  # > 512: pooled for display in blocks of 3 (367 cells, the last one partial)
MODEL = f"""
network Long {{
  input: ({LENGTH}, 32)
  layers:
    TransformerEncoder(num_heads=2, ff_dim=32) * 2
}}
"""
LAYERS = ("transformer_encoder_0", "transformer_encoder_1")


def _page_data(page: str) -> dict:
    blob = re.search(r'id="attention-data">(.*?)</script>', page, re.S)
    assert blob is not None
    return json.loads(blob.group(1))


def _walk_lists(value, longest: list[int]) -> None:
    if isinstance(value, list):
        longest.append(len(value))
        for v in value:
            _walk_lists(v, longest)
    elif isinstance(value, dict):
        for v in value.values():
            _walk_lists(v, longest)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("long")
    (root / "long.neural").write_text(MODEL)
    result = _run(
        "visualize",
        "long.neural",
        "--attention",
        "--backend",
        "pytorch",
        "--output-dir",
        "out",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return root / "out", result


@pytest.mark.slow
def test_the_npz_is_exact_and_the_metrics_match_it(long_run, client):
    out, result = long_run
    assert f"transformer_encoder_1: shape (1, 2, {LENGTH}, {LENGTH})" in result.stdout
    model = client.compile(MODEL, backend="pytorch")
    served = dict(client.extract_attention(model, sequence_length=LENGTH))
    analysis = json.loads((out / "analysis.json").read_text())
    rollout = Rollout()
    with np.load(out / "attention_weights.npz") as npz:
        assert sorted(npz.keys()) == list(LAYERS)
        for name in LAYERS:
            exact = npz[name]
            assert exact.dtype == np.float32 and exact.shape == (1, 2, LENGTH, LENGTH)
            np.testing.assert_array_equal(exact, served[name])
            local = layer_metrics(exact)
            for key in ("attention_entropy", "max_attention_per_head", "normalized_entropy"):
                np.testing.assert_allclose(analysis["layers"][name][key], local[key], atol=1e-6)
            assert analysis["layers"][name]["pattern_per_head"] == local["pattern_per_head"]
            rollout.add(exact)
    # analysis.json: numbers and labels, never matrices; the rollout has its own file.
    longest: list[int] = []
    _walk_lists(analysis, longest)
    assert max(longest) <= 4
    assert (out / "analysis.json").stat().st_size < 20_000
    assert analysis["rollout"] == "attention_rollout.npy"
    saved = np.load(out / "attention_rollout.npy")
    np.testing.assert_allclose(saved, rollout.result(), atol=1e-6)


@pytest.mark.slow
def test_figures_and_page_show_server_pooled_attention_and_say_so(long_run):
    out, _ = long_run
    page = (out / "attention_interactive.html").read_text()
    assert "Pooled for display" in page and "attention_weights.npz" in page
    data = _page_data(page)
    layer = next(entry for entry in data["layers"] if entry["name"] == "transformer_encoder_1")
    assert layer["display_shape"] == [367, 367]
    assert layer["pooling"]["query_block"] == 3 and layer["pooling"]["mode"] == "max"
    head_1 = next(v for v in layer["items"][0]["views"] if v["label"] == "head 1")
    drawn = np.frombuffer(base64.b64decode(head_1["data"]), dtype="<f2").reshape(367, 367)
    with np.load(out / "attention_weights.npz") as npz:
        want, info = pool_for_display(npz["transformer_encoder_1"][0, 1])
    assert info is not None and info["query_block"] == 3
    np.testing.assert_array_equal(drawn, want.astype(np.float16))
    _png_is_a_picture(out / "attention_heatmap.png")
    _png_is_a_picture(out / "attention_heads_transformer_encoder_1.png")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium")
def test_the_long_page_draws_in_a_headless_browser(long_run, tmp_path):
    out, _ = long_run
    url = f"{(out / 'attention_interactive.html').resolve().as_uri()}#layer=1&view=2"
    status = view_status(chromium_dom(url, tmp_path / "profile"))
    assert status["drawn"] == "1" and status["shape"] == "367x367"
    assert status["title"] == "transformer_encoder_1 — head 1"


@pytest.mark.slow
def test_float16_halves_the_npz_and_no_npz_moves_only_pooled_attention(tmp_path):
    (tmp_path / "long.neural").write_text(MODEL)
    half = _run(
        "visualize", "long.neural", "--attention", "--backend", "tensorflow", "--dtype",
        "float16", "--output-dir", "half", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert half.returncode == 0, half.stderr
    with np.load(tmp_path / "half" / "attention_weights.npz") as npz:
        layer = npz["transformer_encoder_0"]
        assert layer.dtype == np.float16
        np.testing.assert_allclose(layer.astype(np.float64).sum(-1), 1.0, atol=2e-2)
    size = (tmp_path / "half" / "attention_weights.npz").stat().st_size
    assert size < 2 * 2 * LENGTH * LENGTH * 2 * 1.01  # two bytes a value, little else

    lean = _run(
        "visualize", "long.neural", "--attention", "--backend", "tensorflow", "--no-npz",
        "--output-dir", "lean", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert lean.returncode == 0, lean.stderr
    assert not (tmp_path / "lean" / "attention_weights.npz").exists()
    analysis = json.loads((tmp_path / "lean" / "analysis.json").read_text())
    assert analysis["attention_weights"] is None
    assert len(analysis["layers"]["transformer_encoder_1"]["attention_entropy"]) == 2
    assert "Pooled for display" in (tmp_path / "lean" / "attention_interactive.html").read_text()


@pytest.mark.slow
def test_a_window_keeps_exact_values_of_that_range_only(long_run, tmp_path):
    out, _ = long_run
    (tmp_path / "long.neural").write_text(MODEL)
    cut = _run(
        "visualize", "long.neural", "--attention", "--backend", "pytorch", "--window",
        "100:300,:", "--output-dir", "cut", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    with (
        np.load(tmp_path / "cut" / "attention_weights.npz") as part,
        np.load(out / "attention_weights.npz") as whole,
    ):
        for name in LAYERS:
            assert part[name].shape == (1, 2, 200, LENGTH)
            np.testing.assert_array_equal(part[name], whole[name][:, :, 100:300, :])
    analysis = json.loads((tmp_path / "cut" / "analysis.json").read_text())
    assert analysis["attention_weights_window"] == [[100, 300], [0, 0]]
    bad = _run("visualize", "long.neural", "--attention", "--window", "1-2", cwd=tmp_path)
    assert bad.returncode == 2 and "not a window" in bad.stderr
