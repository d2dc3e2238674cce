"""Rendering: PNGs that decode and show something, an offline HTML page whose data reads back,
and the console summary."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium_dom, view_status
from PIL import Image

from neural_attn.analysis import analyze_attention_patterns, summarize_layers
from neural_attn.client.render import (
    PNG_DPI,
    create_interactive_html,
    format_console_summary,
    plot_attention_heads,
    plot_heatmaps,
)
from neural_attn.errors import InvalidInputError

TOKENS = ["The", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "away", "."]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _layers(n: int = 2, *, batch: int = 1, heads: int = 4, seq: int = 12) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    return {
        f"transformer_encoder_{i}": _softmax(rng.normal(size=(batch, heads, seq, seq)) * 2).astype(
            np.float32
        )
        for i in range(n)
    }


def _panels(fig: Any) -> list[Any]:
    """The figure's axes less its colorbars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _assert_not_blank(path: Path, *, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert abs(image.size[0] - size[0]) <= 2 and abs(image.size[1] - size[1]) <= 2
        rgb = np.asarray(image.convert("RGB"))
    assert rgb.std() > 20
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 2


# --- PNG ------------------------------------------------------------------------------------


def test_heatmap_png_is_written_and_shows_the_mean_of_heads(tmp_path: Path) -> None:
    layers = _layers(2)
    out = tmp_path / "nested" / "attention_heatmap.png"
    fig = plot_heatmaps(layers, tokens=TOKENS, output_path=out)
    width, height = fig.get_size_inches() * PNG_DPI
    _assert_not_blank(out, size=(round(width), round(height)))
    panels = _panels(fig)
    assert len(panels) == 2
    assert len(fig.axes) == 3  # one colorbar: the panels share a colour scale
    assert [ax.get_title() for ax in panels] == [
        "transformer_encoder_0 — mean of 4 heads",
        "transformer_encoder_1 — mean of 4 heads",
    ]
    for ax, attention in zip(panels, layers.values(), strict=True):
        drawn = np.asarray(ax.images[0].get_array())
        np.testing.assert_allclose(drawn, attention[0].mean(axis=0), rtol=1e-6)
        assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
        assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS


def test_heatmap_draws_the_chosen_head_and_batch_item() -> None:
    layers = _layers(1, batch=3)
    fig = plot_heatmaps(layers, head=2, batch_index=1)
    (ax,) = _panels(fig)
    assert ax.get_title() == "transformer_encoder_0 — head 2"
    np.testing.assert_allclose(
        np.asarray(ax.images[0].get_array()), layers["transformer_encoder_0"][1, 2]
    )


def test_heatmap_grid_grows_with_many_layers() -> None:
    fig = plot_heatmaps(_layers(7, heads=1, seq=5))
    panels = _panels(fig)
    assert len(panels) == 7
    nrows, ncols, *_ = panels[0].get_subplotspec().get_geometry()
    assert (nrows, ncols) == (3, 3)


def test_long_sequences_show_every_kth_token() -> None:
    seq = 100
    tokens = [f"tok{i}" for i in range(seq)]
    fig = plot_heatmaps(_layers(1, heads=2, seq=seq), tokens=tokens)
    labels = [t.get_text() for t in _panels(fig)[0].get_xticklabels()]
    assert 10 <= len(labels) <= 40
    assert labels == tokens[:: seq // len(labels) + (seq % len(labels) > 0)][: len(labels)]
    assert labels[0] == "tok0"


def test_figures_leave_no_pyplot_state() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_heatmaps(_layers(1))
    plot_attention_heads(_layers(1)["transformer_encoder_0"][0])
    assert plt.get_fignums() == before


def test_heads_grid_has_one_axes_per_head(tmp_path: Path) -> None:
    attention = _layers(1, heads=6)["transformer_encoder_0"][0]
    out = tmp_path / "attention_heads_transformer_encoder_0.png"
    fig = plot_attention_heads(attention, tokens=TOKENS[:12], title="encoder 0", output_path=out)
    width, height = fig.get_size_inches() * PNG_DPI
    _assert_not_blank(out, size=(round(width), round(height)))
    panels = _panels(fig)
    assert len(panels) == 6
    assert len(fig.axes) == 7  # one shared colorbar
    assert [ax.get_title() for ax in panels] == [f"head {h}" for h in range(6)]
    nrows, ncols, *_ = panels[0].get_subplotspec().get_geometry()
    assert (nrows, ncols) == (2, 4)
    for h, ax in enumerate(panels):
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), attention[h])
    assert fig.get_suptitle() == "encoder 0"


def test_heads_grid_takes_a_batch_item_and_few_heads() -> None:
    attention = _layers(1, batch=2, heads=3)["transformer_encoder_0"]
    fig = plot_attention_heads(attention, batch_index=1)
    panels = _panels(fig)
    assert len(panels) == 3
    assert panels[0].get_subplotspec().get_geometry()[:2] == (1, 3)
    np.testing.assert_allclose(np.asarray(panels[2].images[0].get_array()), attention[1, 2])


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda a: plot_heatmaps(a, head=9), "head 9"),
        (lambda a: plot_heatmaps(a, batch_index=4), "batch_index 4"),
        (lambda a: plot_heatmaps(a, tokens=["a", "b"]), "2 tokens"),
        (lambda a: plot_heatmaps({}), "no attention layers"),
        (lambda a: plot_attention_heads(np.ones(5)), "shape (5,)"),
        (lambda a: create_interactive_html(a, tokens=["x"]), "1 tokens"),
    ],
)
def test_bad_arguments_raise_invalid_input(call: Any, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(needle)):
        call(_layers(1))


# --- HTML -----------------------------------------------------------------------------------


def page_data(text: str) -> dict[str, Any]:
    """The JSON block the page draws from."""
    match = re.search(
        r'<script type="application/json" id="attention-data">(.*?)</script>', text, re.S
    )
    assert match
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def decode_view(layer: dict[str, Any], item: int, view: int) -> np.ndarray:
    """One drawn matrix as the page holds it: float16 little-endian, base64."""
    (entry,) = [e for e in layer["items"] if e["index"] == item]
    raw = base64.b64decode(entry["views"][view]["data"])
    return np.frombuffer(raw, dtype="<f2").reshape(layer["display_shape"])


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    layers = _layers(2, batch=2, heads=3)
    out = tmp_path_factory.mktemp("html") / "out" / "attention_interactive.html"
    path = create_interactive_html(
        layers, tokens=TOKENS, batch_index=1, analysis=summarize_layers(layers), output_path=out
    )
    return path, layers


def test_html_is_self_contained(page: tuple[Path, dict[str, Any]]) -> None:
    path, _ = page
    assert path.name == "attention_interactive.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)
    assert text.count(_plotlyjs()) == 1  # the library is embedded once, not fetched
    assert "plotly.js (cartesian - minified)" in _plotlyjs()[:200]
    ours = text.replace(_plotlyjs(), "")
    assert "cdn.plot.ly" not in ours
    assert "https://" not in ours and "http://" not in ours


def test_html_holds_every_view_as_binary_float16(page: tuple[Path, dict[str, Any]]) -> None:
    path, layers = page
    text = path.read_text(encoding="utf-8")
    data = page_data(text)
    assert data["tokens"] == TOKENS and data["batch_index"] == 1
    assert data["encoding"] == "float16-le-base64"
    assert [layer["name"] for layer in data["layers"]] == list(layers)
    for layer in data["layers"]:
        attention = layers[layer["name"]]
        assert layer["shape"] == [2, 3, 12, 12] and layer["display_shape"] == [12, 12]
        assert layer["pooling"] is None  # 12 positions are shown exactly
        # A small batch puts every item on the page.
        assert [entry["index"] for entry in layer["items"]] == [0, 1]
        for b in (0, 1):
            (entry,) = [e for e in layer["items"] if e["index"] == b]
            labels = [view["label"] for view in entry["views"]]
            assert labels == ["mean of 3 heads", "head 0", "head 1", "head 2"]
            titles = [view["title"] for view in entry["views"]]
            assert titles == [f"item {b} — {layer['name']} — {label}" for label in labels]
            item = attention[b].astype(np.float64)
            expected = [item.mean(axis=0), *item]
            for v, want in enumerate(expected):
                got = decode_view(layer, b, v)
                np.testing.assert_array_equal(got, want.astype(np.float16))
                np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7)  # subnormals
        # Repeated tokens stay separate cells.
        assert len(set(layer["x"])) == 12 and layer["x"][0] == "The"
        assert layer["y"] == layer["x"]
    # No matrix is written as JSON number text.
    assert not re.search(r"(\d\.\d+,\s*){20}", text.replace(_plotlyjs(), ""))


def _plotlyjs() -> str:
    from neural_attn.client._html import plotly_js

    return plotly_js()


def test_html_has_item_layer_and_view_menus(page: tuple[Path, dict[str, Any]]) -> None:
    path, _ = page
    text = path.read_text(encoding="utf-8")
    for menu in ("item-select", "layer-select", "view-select", "query-select"):
        assert f'<select id="{menu}">' in text
    assert "<label>batch item" in text  # not hidden: the batch has two items
    assert 'id="pooling-note"' not in text  # nothing pooled at 12 positions


def test_html_shows_the_metrics_table(page: tuple[Path, dict[str, Any]]) -> None:
    path, layers = page
    text = path.read_text(encoding="utf-8")
    metrics = analyze_attention_patterns(layers["transformer_encoder_0"])
    section = text[text.index('<section id="metrics">') :]
    assert "<h2>transformer_encoder_0</h2>" in section
    row = re.search(r"<tr><th>head 2</th>(.*?)</tr>", section)
    assert row
    assert f"<td>{metrics['attention_entropy'][2]:.4f}</td>" in row.group(1)
    assert f"<td>{metrics['diagonal_attention_strength'][2]:.4f}</td>" in row.group(1)
    assert metrics["pattern_per_head"][2] in row.group(1)


def test_html_survives_hostile_tokens_and_computes_missing_metrics(tmp_path: Path) -> None:
    tokens = ["</script><script>alert(1)</script>", "<b>", "&amp;"]
    layers = {"enc": _softmax(np.random.default_rng(2).normal(size=(1, 1, 3, 3)))}
    path = create_interactive_html(layers, tokens=tokens, output_path=tmp_path / "p.html")
    text = path.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in text
    assert page_data(text)["tokens"] == tokens
    assert "<tr><th>head 0</th>" in text
    assert "<label hidden>batch item" in text  # one item: no item menu


def test_html_shows_only_the_chosen_item_of_a_big_batch(tmp_path: Path) -> None:
    layers = _layers(1, batch=9, heads=2, seq=6)
    path = create_interactive_html(layers, batch_index=7, output_path=tmp_path / "p.html")
    (layer,) = page_data(path.read_text(encoding="utf-8"))["layers"]
    assert [entry["index"] for entry in layer["items"]] == [7]
    assert layer["items"][0]["views"][1]["title"] == "transformer_encoder_0 — head 0"
    with pytest.raises(InvalidInputError, match="batch_index 9"):
        create_interactive_html(_layers(1, batch=2), batch_index=9, output_path=tmp_path / "q")


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium")
def test_html_renders_offline_in_a_headless_browser(
    page: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, layers = page
    dom = chromium_dom(path.resolve().as_uri(), tmp_path / "profile")
    assert 'class="plot-container' in dom
    assert 'class="main-svg"' in dom
    assert 'class="hm"' in dom  # the heatmap was drawn
    # It opens on the chosen item, the mean of the first layer's heads, decoded exactly.
    status = view_status(dom)
    assert status["drawn"] == "1"
    assert status["title"] == "item 1 — transformer_encoder_0 — mean of 3 heads"
    assert status["shape"] == "12x12"
    mean = layers["transformer_encoder_0"][1].astype(np.float64).mean(axis=0).astype(np.float16)
    assert float(status["sum"]) == pytest.approx(float(mean.astype(np.float64).sum()), rel=1e-12)
    assert float(status["max"]) == float(mean.max())
    # Every option of the menus is there: items, layers, views (mean, heads, rollout), queries.
    assert dom.count('<option value="') == 2 + 2 + (4 + 1) + 12


# --- console --------------------------------------------------------------------------------


def test_console_summary_lists_layers_shapes_and_head_metrics() -> None:
    layers = _layers(2, heads=3)
    analysis = {name: analyze_attention_patterns(a) for name, a in layers.items()}
    text = format_console_summary(layers, analysis)
    lines = text.splitlines()
    assert lines[0] == "Found 2 attention layers"
    assert "transformer_encoder_0: shape (1, 3, 12, 12)" in lines
    start = lines.index("transformer_encoder_1: shape (1, 3, 12, 12)")
    header, rows = lines[start + 1], lines[start + 2 : start + 6]
    assert header.split() == ["head", "entropy", "max", "attn", "diagonal", "pattern"]
    metrics = analysis["transformer_encoder_1"]
    for h, row in enumerate(rows[:3]):
        fields = row.split()
        assert fields == [
            str(h),
            f"{metrics['attention_entropy'][h]:.4f}",
            f"{metrics['max_attention_per_head'][h]:.4f}",
            f"{metrics['diagonal_attention_strength'][h]:.4f}",
            metrics["pattern_per_head"][h],
        ]
    assert rows[3].split() == [
        "mean",
        f"{metrics['avg_entropy']:.4f}",
        f"{metrics['avg_max_attention']:.4f}",
        f"{metrics['avg_diagonal_strength']:.4f}",
    ]
    # Columns line up: every number ends where its header does.
    for column in ("entropy", "attn", "diagonal"):
        end = header.index(column) + len(column)
        assert all(row[end - 1] != " " and row[end : end + 1] in ("", " ") for row in rows)


def test_console_summary_accepts_analysis_json_and_fills_gaps() -> None:
    layers = _layers(1, heads=2)
    text = format_console_summary(layers, summarize_layers(layers))
    assert text.startswith("Found 1 attention layer\n")
    assert text == format_console_summary(layers, {})


def test_the_page_assets_are_package_data() -> None:
    """The wheel must carry the page's script, style and plotly bundle (pyproject globs)."""
    import fnmatch
    import tomllib

    from neural_attn.client import _html

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["neural_attn.client"]
    assets = sorted(p.relative_to(_html.ASSETS.parent).as_posix() for p in _html.ASSETS.iterdir())
    assert "assets/plotly-cartesian.min.js" in assets and "assets/page.js" in assets
    for name in assets:
        assert any(fnmatch.fnmatch(name, g) for g in globs), name
