"""Figures for papers: PNG, SVG and PDF that open with the right panels, masked cells shown
as masked, one colour scale per figure, thinned token labels, inline PNG for notebooks."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neural_attn.client._figures import parse_formats, save_figure, write_pdf_book
from neural_attn.client.render import plot_attention_heads, plot_heatmaps
from neural_attn.errors import InvalidInputError


def _causal(heads: int = 3, seq: int = 10, *, seed: int = 0) -> np.ndarray:
    """Causal attention: rows sum to 1 over keys <= query, exact 0 above the diagonal."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(1, heads, seq, seq))
    logits[..., np.triu_indices(seq, 1)[0], np.triu_indices(seq, 1)[1]] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_formats_parse_from_repeats_and_comma_lists() -> None:
    assert parse_formats(["png,svg", "pdf", "svg"]) == ("png", "svg", "pdf")
    assert parse_formats(None) == ("png",)
    with pytest.raises(InvalidInputError, match="'jpg' is not one of png, svg, pdf"):
        parse_formats("png,jpg")


def test_the_causal_triangle_is_masked_not_zero() -> None:
    attention = _causal()
    fig = plot_attention_heads(attention)
    for h, ax in enumerate(_panels(fig)):
        drawn = ax.images[0].get_array()
        upper = np.triu(np.ones((10, 10), bool), 1)
        assert np.ma.is_masked(drawn)
        np.testing.assert_array_equal(np.ma.getmaskarray(drawn), upper)
        np.testing.assert_allclose(drawn.compressed(), attention[0, h][~upper])
        assert ax.patch.get_hatch() == "////"  # the hatch shows through masked cells
    # Attention without zeros has nothing masked and no hatch.
    dense = np.full((1, 2, 4, 4), 0.25, np.float32)
    ax = _panels(plot_attention_heads(dense))[0]
    assert not np.ma.is_masked(ax.images[0].get_array())
    assert not ax.patch.get_hatch()


def test_a_figure_shares_one_colour_scale() -> None:
    layers = {"a": _causal(seed=1), "b": _causal(seed=2) * 0.5}
    fig = plot_heatmaps(layers)
    limits = {ax.images[0].get_clim() for ax in _panels(fig)}
    assert len(limits) == 1
    (low, high), *_ = limits
    assert low == 0.0
    assert high == pytest.approx(float(max(layers["a"][0].mean(0).max(), 0.5)), rel=1e-6)
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1


def test_many_tokens_are_thinned_in_the_grid_and_the_heatmap() -> None:
    tokens = [f"t{i}" for i in range(90)]
    attention = np.full((1, 2, 90, 90), 1 / 90, np.float32)
    grid = _panels(plot_attention_heads(attention, tokens=tokens))[0]
    heat = _panels(plot_heatmaps({"a": attention}, tokens=tokens))[0]
    grid_labels = [t.get_text() for t in grid.get_xticklabels()]
    heat_labels = [t.get_text() for t in heat.get_xticklabels()]
    assert 10 <= len(grid_labels) <= 24 < len(heat_labels) <= 40
    assert grid_labels[0] == "t0" and set(grid_labels) <= set(tokens)


def test_every_format_opens_with_a_panel_per_head(tmp_path: Path) -> None:
    heads = 3
    fig = plot_attention_heads(_causal(heads), tokens=list("abcdefghij"), labels=["x"] * heads)
    png, svg, pdf = save_figure(fig, tmp_path / "grid", ("png", "svg", "pdf"), dpi=150)
    assert [p.name for p in (png, svg, pdf)] == ["grid.png", "grid.svg", "grid.pdf"]
    with Image.open(png) as image:
        width, height = image.size
    assert (width, height) == pytest.approx(tuple(fig.get_size_inches() * 150), abs=2)
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    # one named raster per heatmap (the shared colorbar is the one other image)
    images = re.findall(r"<image\b[^>]*>", text)
    named = [re.search(r'id="heatmap-head-(\d+)"', tag) for tag in images]
    assert [m.group(1) for m in named if m] == [str(h) for h in range(heads)]
    assert len(re.findall(r"<image\b", text)) == heads + 1
    assert "head 2 — x" in text or "head 2" in text
    assert pdf.read_bytes().startswith(b"%PDF")


@pytest.mark.skipif(shutil.which("pdfinfo") is None, reason="needs poppler-utils")
def test_the_pdf_book_has_a_page_per_figure(tmp_path: Path) -> None:
    layers = {"a": _causal(seed=1), "b": _causal(seed=2)}
    figures = [plot_heatmaps(layers)] + [
        plot_attention_heads(w, title=n) for n, w in layers.items()
    ]
    book = write_pdf_book(figures, tmp_path / "attention_figures.pdf")
    info = subprocess.run(["pdfinfo", str(book)], capture_output=True, text=True, check=True)
    assert re.search(r"^Pages:\s+3$", info.stdout, re.M)
    # the second page is a head grid: rasterised, it is not blank
    subprocess.run(
        ["pdftoppm", "-f", "2", "-l", "2", "-r", "40", "-png", str(book), str(tmp_path / "p")],
        check=True,
    )
    (page,) = tmp_path.glob("p*.png")
    with Image.open(page) as image:
        assert np.asarray(image.convert("L")).std() > 20


def test_figures_show_inline_as_png() -> None:
    fig = plot_heatmaps({"a": _causal()})
    data = fig._repr_png_()
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as image:
        assert image.size[0] > 200
