"""Long sequences: pooling for display equals a plain loop, and a 4,096-token page and PNG stay
small, say they are pooled, and keep one sharp position visible."""

from __future__ import annotations

import base64
import json
import re
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium_dom, view_status
from PIL import Image

from neural_attn.client.render import (
    DISPLAY_SIZE,
    PNG_DPI,
    create_interactive_html,
    plot_attention_heads,
    plot_heatmaps,
    pool_for_display,
)
from neural_attn.errors import InvalidInputError

N = 4096
SHARP_HEAD, SHARP_QUERY, SHARP_KEY = 3, 1000, 3001  # one query of one head looks far away


def _loop_pool(matrix: np.ndarray, size: int, mode: str) -> np.ndarray:
    """The definition, written out: blocks of ceil(L / size), the last one partial."""
    q, k = matrix.shape
    qb, kb = -(-q // size), -(-k // size)
    out = np.empty((-(-q // qb), -(-k // kb)))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = matrix[i * qb : (i + 1) * qb, j * kb : (j + 1) * kb].astype(np.float64)
            out[i, j] = block.max() if mode == "max" else block.mean()
    return out


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((64, 64), 16),  # divisible: blocks of 4
        ((70, 70), 16),  # 70 / 16 -> blocks of 5, 14 cells, all full
        ((67, 45), 16),  # blocks of 5 and 3, the last of each partial
        ((10, 300), 16),  # only the key axis is pooled
        ((1030, 513), 512),  # just past the display size: blocks of 3 and 2
    ],
)
def test_pool_for_display_equals_a_loop(shape: tuple[int, int], size: int, mode: str) -> None:
    matrix = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    pooled, info = pool_for_display(matrix, size, mode)
    expected = _loop_pool(matrix, size, mode)
    assert pooled.shape == expected.shape
    assert max(pooled.shape) <= size
    np.testing.assert_allclose(pooled, expected, rtol=1e-12 if mode == "max" else 1e-6)
    if mode == "max":
        assert pooled.dtype == np.float32  # max picks values: exact
    assert info == {
        "query_block": -(-shape[0] // size),
        "key_block": -(-shape[1] // size),
        "mode": mode,
        "source_len": shape,
    }


def test_pool_for_display_pools_the_last_two_axes_of_a_stack() -> None:
    layer = np.random.default_rng(3).random((2, 3, 50, 40))
    pooled, info = pool_for_display(layer, 16, "mean")
    assert pooled.shape == (2, 3, 13, 14) and info is not None
    np.testing.assert_allclose(pooled[1, 2], _loop_pool(layer[1, 2], 16, "mean"))


def test_pool_for_display_leaves_short_sequences_alone() -> None:
    matrix = np.eye(DISPLAY_SIZE, dtype=np.float32)
    pooled, info = pool_for_display(matrix)
    assert pooled is matrix and info is None
    with pytest.raises(InvalidInputError, match="mode 'median'"):
        pool_for_display(matrix, 4, "median")


def _sharp_layer() -> np.ndarray:
    """(1, 8, N, N) float32: every query on itself, except one query of one head far away.

    np.zeros leaves untouched pages unmapped, so this costs little real memory.
    """
    layer = np.zeros((1, 8, N, N), dtype=np.float32)
    diagonal = np.arange(N)
    layer[0, :, diagonal, diagonal] = 1.0
    layer[0, SHARP_HEAD, SHARP_QUERY, SHARP_QUERY] = 0.0
    layer[0, SHARP_HEAD, SHARP_QUERY, SHARP_KEY] = 1.0
    return layer


@pytest.fixture(scope="module")
def long_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    layer = _sharp_layer()
    path = create_interactive_html(
        {"transformer_encoder_0": layer, "transformer_encoder_1": layer},
        output_path=tmp_path_factory.mktemp("long") / "attention_interactive.html",
    )
    return path, layer


def _data(text: str) -> dict[str, Any]:
    match = re.search(r'id="attention-data">(.*?)</script>', text, re.S)
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_long_page_is_small_pooled_binary_and_says_so(long_page: tuple[Path, np.ndarray]) -> None:
    from neural_attn.client._html import plotly_js

    path, layer = long_page
    assert path.stat().st_size < 30e6
    text = path.read_text(encoding="utf-8")
    note = text[text.index('id="pooling-note"') : text.index("</div>", text.index("pooling-note"))]
    assert "4096×4096 positions shown max-pooled to 512×512" in note
    assert "block of 8×8 positions" in note and "attention_weights.npz" in note
    ours = text.replace(plotly_js(), "")
    assert not re.search(r"(\d\.\d+,\s*){20}", ours)  # no matrix as JSON number text
    data = _data(text)
    for entry in data["layers"]:
        assert entry["display_shape"] == [512, 512]
        assert entry["pooling"]["query_block"] == entry["pooling"]["key_block"] == 8
        assert entry["pooling"]["mode"] == "max"
        assert entry["x"][:2] == ["0–7", "8–15"] and len(entry["y"]) == 512
    (item,) = data["layers"][1]["items"]
    views = item["views"]
    assert [v["label"] for v in views] == ["mean of 8 heads"] + [f"head {h}" for h in range(8)]
    sharp = np.frombuffer(base64.b64decode(views[1 + SHARP_HEAD]["data"]), "<f2")
    sharp = sharp.reshape(512, 512)
    expected, _ = pool_for_display(layer[0, SHARP_HEAD])
    # Blocks that are exactly 0 in every head read as masked (NaN), not as zero.
    masked = np.isnan(sharp)
    assert masked.sum() == 512 * 511 - 1
    np.testing.assert_array_equal(np.nan_to_num(sharp), expected.astype(np.float16))
    # The one far-away position survives pooling at full height.
    assert sharp[SHARP_QUERY // 8, SHARP_KEY // 8] == 1.0
    assert np.nansum(sharp) == 513  # the 512 diagonal cells and that one


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium")
def test_long_page_draws_in_a_headless_browser(
    long_page: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = long_page
    url = f"{path.resolve().as_uri()}#layer=1&view={1 + SHARP_HEAD}"
    dom = chromium_dom(url, tmp_path / "profile")
    assert 'class="hm"' in dom  # the heatmap was drawn
    status = view_status(dom)
    assert status["drawn"] == "1"
    assert status["title"] == f"transformer_encoder_1 — head {SHARP_HEAD}"
    assert status["shape"] == "512x512"
    # What the page decoded: the diagonal and the sharp cell, nothing lost or smeared.
    assert float(status["sum"]) == 513 and float(status["max"]) == 1.0


def test_png_of_4096_heads_is_pooled_and_says_so(tmp_path: Path) -> None:
    layer = _sharp_layer()
    out = tmp_path / "attention_heads_transformer_encoder_0.png"
    fig = plot_attention_heads(layer, title="transformer_encoder_0", output_path=out)
    assert fig.get_suptitle() == "transformer_encoder_0 — max-pooled to 512×512 (block 8)"
    with Image.open(out) as image:
        width, height = fig.get_size_inches() * PNG_DPI
        assert abs(image.size[0] - width) <= 2 and abs(image.size[1] - height) <= 2
        assert image.size[0] < 2000 and image.size[1] < 1000
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    drawn = np.asarray(panels[SHARP_HEAD].images[0].get_array())
    assert drawn.shape == (512, 512) and drawn[SHARP_QUERY // 8, SHARP_KEY // 8] == 1.0
    # Axes are in source positions: the whole 4,096 show, one pooled cell per 8.
    assert panels[0].get_xlim() == (-0.5, N - 0.5)

    heat = plot_heatmaps({"enc": layer}, head=SHARP_HEAD, output_path=tmp_path / "h.png")
    (ax,) = [ax for ax in heat.axes if ax.get_label() != "<colorbar>"]
    assert ax.get_title() == f"enc — head {SHARP_HEAD}\nmax-pooled to 512×512 (block 8)"


def test_png_memory_stays_below_a_float64_copy_of_the_layer(tmp_path: Path) -> None:
    layer = np.random.default_rng(5).random((1, 4, 2048, 2048), dtype=np.float32)
    tracemalloc.start()
    try:
        plot_attention_heads(layer, output_path=tmp_path / "heads.png")
        plot_heatmaps({"enc": layer}, output_path=tmp_path / "heat.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < layer.size * 8 / 2, f"peak {peak / 2**20:.0f} MiB"  # 128 MiB in float64


def test_data_pooled_on_the_server_is_drawn_as_given(tmp_path: Path) -> None:
    exact = np.random.default_rng(6).random((1, 2, 1000, 1000), dtype=np.float32)
    pooled, info = pool_for_display(exact, 256)  # what the server sends: blocks of 4
    reduction = {  # the chunk's Reduction, as a dict
        "source_shape": [1, 2, 1000, 1000],
        "query_block": 4,
        "key_block": 4,
        "mode": "MAX",
    }
    fig = plot_heatmaps({"enc": pooled}, head=1, pooling=reduction)
    (ax,) = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert ax.get_title() == "enc — head 1\nmax-pooled to 250×250 (block 4)"
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), pooled[0, 1])
    heads = plot_attention_heads(pooled, pooling=info, title="enc")
    assert heads.get_suptitle() == "enc — max-pooled to 250×250 (block 4)"

    path = create_interactive_html(
        {"enc": pooled}, pooling={"enc": reduction}, output_path=tmp_path / "p.html"
    )
    text = path.read_text(encoding="utf-8")
    assert "1000×1000 positions shown max-pooled to 250×250" in text
    assert "the metrics need the exact attention" in text  # not computed from pooled data
    (layer,) = _data(text)["layers"]
    assert layer["display_shape"] == [250, 250] and layer["x"][-1] == "996–999"
    with pytest.raises(InvalidInputError, match="its pooling says 250x250"):
        plot_heatmaps({"enc": exact}, pooling=reduction)


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium")
def test_deep_page_pools_to_its_budget_and_draws(tmp_path: Path) -> None:
    """6 layers x 12 heads at 512 tokens (MiniLM's size): exact, the page would be 55 MB; it
    is pooled for the page alone to fit PAGE_DATA_BYTES, says so, keeps a sharp cell, draws."""
    from neural_attn.client._html import PAGE_DATA_BYTES

    n = 512
    layer = np.zeros((1, 12, n, n), dtype=np.float32)
    layer[:, :, np.arange(n), np.arange(n)] = 1.0
    layer[0, 5, 300] = 0.0
    layer[0, 5, 300, 7] = 1.0  # one query of head 5 looks far back
    layers = {f"transformer_encoder_{i}": layer for i in range(6)}
    path = create_interactive_html(layers, output_path=tmp_path / "page.html")
    assert path.stat().st_size <= 15e6
    text = path.read_text(encoding="utf-8")
    assert f"under {PAGE_DATA_BYTES // 10**6} MB of attention" in text
    data = _data(text)
    rows, cols = data["layers"][0]["display_shape"]
    assert rows == cols < n and data["layers"][0]["pooling"]["mode"] == "max"
    block = data["layers"][0]["pooling"]["query_block"]
    head = np.frombuffer(base64.b64decode(data["layers"][2]["items"][0]["views"][6]["data"]), "<f2")
    head = np.nan_to_num(head.reshape(rows, cols))
    assert head[300 // block, 7 // block] == 1.0  # the far-away cell survives, at full height
    dom = chromium_dom(f"{path.resolve().as_uri()}#layer=2&view=6", tmp_path / "profile")
    status = view_status(dom)
    assert status["drawn"] == "1" and status["shape"] == f"{rows}x{cols}"
    assert float(status["max"]) == 1.0
