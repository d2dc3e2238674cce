"""Static figures for papers and notebooks: PNG, SVG and PDF files, and inline display.

Every figure ``render`` draws is an ``AttentionFigure``: a matplotlib ``Figure`` that also
shows itself inline in Jupyter (``_repr_png_``) without pyplot or ``%matplotlib inline``.
``save_figure`` writes one figure in each asked-for format next to each other
(``attention_heatmap.png``, ``.svg``, ``.pdf``), and ``write_pdf_book`` puts every figure of a
run on its own page of one PDF (``attention_figures.pdf``), ready for a paper's appendix.
matplotlib is imported when a figure is made, never when the client is imported.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neural_attn.errors import InvalidInputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURE_FORMATS", "attention_figure_class", "parse_formats", "save_figure"]

FIGURE_FORMATS = ("png", "svg", "pdf")
PDF_BOOK = "attention_figures.pdf"


@functools.cache
def attention_figure_class() -> type[Figure]:
    """The ``Figure`` subclass every client figure is made of (defined on first use)."""
    from matplotlib.figure import Figure

    class AttentionFigure(Figure):
        """A matplotlib figure that Jupyter shows inline as a PNG."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=self.dpi)
            return buffer.getvalue()

    return AttentionFigure


def parse_formats(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """``["png,svg", "pdf"]`` or ``"png,svg"`` -> ``("png", "svg", "pdf")``, in order, once."""
    if values is None:
        return ("png",)
    if isinstance(values, str):
        values = [values]
    formats: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip().lower().lstrip(".")
            if not name:
                continue
            if name not in FIGURE_FORMATS:
                raise InvalidInputError(
                    f"figure format {name!r} is not one of {', '.join(FIGURE_FORMATS)}"
                )
            if name not in formats:
                formats.append(name)
    if not formats:
        raise InvalidInputError(f"no figure format given; use {', '.join(FIGURE_FORMATS)}")
    return tuple(formats)


def save_figure(fig: Figure, stem: Path, formats: Sequence[str], *, dpi: int) -> list[Path]:
    """Write ``stem.{format}`` for each format; returns the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in formats:
        path = stem.with_name(f"{stem.name}.{name}")
        # SVG and PDF keep text and axes as vectors; only the heatmaps are images (at dpi).
        fig.savefig(path, format=name, dpi=dpi, metadata=_metadata(name))
        paths.append(path)
    return paths


def write_pdf_book(figures: Sequence[Figure], path: Path) -> Path:
    """Every figure on its own page of one PDF, in the order given."""
    from matplotlib.backends.backend_pdf import PdfPages

    path.parent.mkdir(parents=True, exist_ok=True)
    with PdfPages(path, metadata=_metadata("pdf")) as pdf:
        for fig in figures:
            pdf.savefig(fig)
    return path


def _metadata(name: str) -> dict[str, Any] | None:
    # No creation date: the same attention writes the same bytes.
    if name == "pdf":
        return {"Creator": "neural-attn", "CreationDate": None}
    if name == "svg":
        return {"Creator": "neural-attn", "Date": None}
    return None
