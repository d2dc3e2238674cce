"""32,768 token ids through the installed CLI, as a user runs it: the pass in tiles, the metrics
and the pooled rollout summed from them, the npz over its budget left out with a note, the page
drawn by headless Chromium, all under a memory bound far below one whole layer (4 GiB)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import chromium_dom, view_status
from test_cli import _cli, _png_is_a_picture

LENGTH = 32_768
MODEL = f"""
network Longest {{
  input: ({LENGTH},)
  layers:
    Embedding(input_dim=64, output_dim=8)
    PositionalEncoding(kind="sinusoidal")
    TransformerEncoder(num_heads=1, ff_dim=16)
}}
"""
LAYER = "transformer_encoder_0"
WHOLE_LAYER = LENGTH * LENGTH * 4  # one float32 layer: 4 GiB
RSS_BOUND = 3 * 2**30  # torch, the model, tiles of 16 MiB and their work space, generously


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str, int]:
    root = tmp_path_factory.mktemp("any-length")
    (root / "longest.neural").write_text(MODEL)
    ids = np.random.default_rng(0).integers(1, 64, size=(1, LENGTH))
    np.save(root / "ids.npy", ids)
    args = ["visualize", "longest.neural", "--attention", "--backend", "pytorch", "--quiet"]
    args += ["--data", "ids.npy", "--output-dir", "out"]
    proc = subprocess.Popen(
        [*_cli(), *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(root)},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    assert proc.returncode == 0, stderr[-3000:]
    return root / "out", stdout + stderr, usage.ru_maxrss * 1024


@pytest.mark.slow
def test_32k_tokens_complete_in_bounded_memory_with_the_npz_left_out(run):
    out, output, peak = run
    assert peak < RSS_BOUND < WHOLE_LAYER, f"peak RSS {peak / 2**30:.2f} GiB"
    assert f"{LAYER}: shape (1, 1, {LENGTH}, {LENGTH})" in output
    note = re.search(r"^note: attention_weights\.npz not written: .*$", output, re.M)
    assert note is not None and "would take 4 GiB, over the 2 GiB budget" in note.group(0)
    assert not (out / "attention_weights.npz").exists()
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["attention_weights"] is None and analysis["notes"]
    metrics = analysis["layers"][LAYER]
    assert metrics["shape"] == [1, 1, LENGTH, LENGTH]
    # Exact metrics (their equality to numpy is checked at sizes where numpy fits): in range.
    assert 0 < metrics["attention_entropy"][0] <= np.log(LENGTH) + 1e-6
    assert 0 < metrics["normalized_entropy"][0] <= 1 + 1e-9
    assert metrics["attention_distribution"][0]["mean"] == pytest.approx(1 / LENGTH, rel=1e-5)
    # The rollout is of pooled layers, labelled as such, its rows stochastic.
    pooling = analysis["rollout_pooling"]
    assert pooling["size"] == LENGTH and pooling["block"] == 32 and pooling["pooled_size"] == 1024
    rollout = np.load(out / analysis["rollout"])
    assert rollout.shape == (1024, 1024)
    np.testing.assert_allclose(rollout.sum(axis=1), 1.0, rtol=1e-5)
    _png_is_a_picture(out / "attention_heatmap.png")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium")
def test_the_32k_page_draws_the_pooled_layer_and_rollout_in_a_headless_browser(run, tmp_path):
    out, _, _ = run
    page = out / "attention_interactive.html"
    assert page.stat().st_size < 20 * 10**6
    layer = view_status(chromium_dom(page.resolve().as_uri(), tmp_path / "layer"))
    assert layer["drawn"] == "1" and layer["shape"] == "512x512", layer
    url = f"{page.resolve().as_uri()}#layer=0&view=rollout"
    rollout = view_status(chromium_dom(url, tmp_path / "rollout"))
    assert rollout["drawn"] == "1" and "rollout" in rollout["title"], rollout
    assert "pooled to blocks of 32 positions" in rollout["title"]
    assert rollout["shape"] == "512x512"
