"""The files `visualize_from_dsl` writes, one small function each, into an `OutputDir` that
records what it wrote (the result's "files") and announces each file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neural_attn.client import render
from neural_attn.client._beside import Beside
from neural_attn.client._figures import PDF_BOOK, save_figure, write_pdf_book
from neural_attn.pooling import Pooling

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from neural_attn.client._client import CompileResult
    from neural_attn.client._tokenize import Tokens


class OutputDir:
    """The output folder (made if missing) and the files written into it, by key."""

    def __init__(self, path: str | os.PathLike[str], progress: Callable[[str], None]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, str] = {}
        self._progress = progress

    def written(self, key: str, path: Path) -> None:
        self.files[key] = str(path)
        self._progress(f"wrote {path}")


def safe_name(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in layer)


def figures(
    out: OutputDir,
    shown: Mapping[str, np.ndarray],
    analysis: Mapping[str, Any],
    *,
    head: int | None,
    tokens: Sequence[str] | None,
    batch_index: int,
    pooling: Mapping[str, Pooling],
    formats: Sequence[str],
    dpi: int,
) -> Figure:
    """attention_heatmap.*, attention_heads_{layer}.* per layer and, with "pdf", the book of
    every figure; returns the heatmap figure."""
    heatmap = render.plot_heatmaps(
        shown, head=head, tokens=tokens, batch_index=batch_index, pooling=pooling or None, dpi=dpi
    )
    drawn = [heatmap]
    saved = save_figure(heatmap, out.path / "attention_heatmap", formats, dpi=dpi)
    for fmt, path in zip(formats, saved, strict=True):
        out.written("heatmap" if fmt == formats[0] else f"heatmap.{fmt}", path)
    for name, w in shown.items():
        grid = render.plot_attention_heads(
            w,
            tokens=tokens,
            title=name,
            batch_index=batch_index,
            pooling=pooling.get(name),
            dpi=dpi,
            labels=analysis["layers"].get(name, {}).get("pattern_per_head"),
        )
        drawn.append(grid)
        stem = out.path / f"attention_heads_{safe_name(name)}"
        for fmt, path in zip(formats, save_figure(grid, stem, formats, dpi=dpi), strict=True):
            out.written(f"heads:{name}" if fmt == formats[0] else f"heads:{name}.{fmt}", path)
    if "pdf" in formats:
        out.written("figures.pdf", write_pdf_book(drawn, out.path / PDF_BOOK))
    return heatmap


def code(out: OutputDir, compiled: CompileResult) -> None:
    """compiled_model_{backend}.py: the model as the server built it."""
    path = out.path / f"compiled_model_{compiled.backend}.py"
    path.write_text(compiled.generated_code, encoding="utf-8")
    out.written("code", path)


def page(
    out: OutputDir,
    shown: Mapping[str, np.ndarray],
    analysis: Mapping[str, Any],
    *,
    tokens: Sequence[str] | None,
    batch_index: int,
    pooling: Mapping[str, Pooling],
) -> None:
    """attention_interactive.html: the offline page."""
    path = render.create_interactive_html(
        shown,
        tokens=tokens,
        batch_index=batch_index,
        analysis=analysis,
        output_path=out.path / "attention_interactive.html",
        pooling=pooling or None,
        rollout=analysis.get("rollout"),
    )
    out.written("html", path)


def rollout(out: OutputDir, analysis: Mapping[str, Any]) -> None:
    """attention_rollout.npy, when the model has a rollout."""
    if analysis.get("rollout") is not None:
        path = out.path / "attention_rollout.npy"
        np.save(path, np.asarray(analysis["rollout"]))
        out.written("rollout", path)


def analysis_json(
    out: OutputDir,
    compiled: CompileResult,
    analysis: Mapping[str, Any],
    *,
    tokens: Sequence[str] | None,
    split: Tokens | None,
    npz: str | None,
    npz_window: tuple[tuple[int, int], tuple[int, int]] | None,
    pooling: Mapping[str, Pooling],
    notes: Sequence[str] = (),
) -> None:
    """analysis.json: the metrics and what every other file holds (no tensors)."""
    record = {
        "model_id": compiled.model_id,
        "network": compiled.network_name,
        "backend": compiled.backend,
        "device": compiled.device,
        "tokens": None if tokens is None else list(tokens),
        # from text: the ids sent and the tokenizer's own strings (AutoTokenizer's
        # convert_ids_to_tokens for --tokenizer); "tokens" are the axis labels
        "token_ids": None if split is None else list(split.ids),
        "tokenizer_tokens": tokenizer_tokens(split),
        "layers": analysis["layers"],
        "rollout": "attention_rollout.npy" if analysis.get("rollout") is not None else None,
        # set when the rollout is of pooled layers (longer than analysis.ROLLOUT_EXACT_MAX)
        "rollout_pooling": analysis.get("rollout_pooling"),
        "attention_weights": npz,
        "attention_weights_window": npz_window,
        "display_pooling": {k: p.as_dict() for k, p in pooling.items()} or None,
        "notes": list(notes),
    }
    path = out.path / "analysis.json"
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    out.written("analysis", path)


def tokenizer_tokens(split: Tokens | None) -> list[str] | None:
    return None if split is None else list(split.pieces or split.labels)


def console_summary(analysis: Mapping[str, Any]) -> str:
    """The summary table, from the exact shapes (figures may be pooled), as views that take
    no memory."""
    return render.format_console_summary(
        {
            name: np.broadcast_to(np.float32(0), tuple(metrics["shape"]))
            for name, metrics in analysis["layers"].items()
        },
        analysis,
    )


class VisualizationResult(dict[str, Any]):
    """What `visualize` and `visualize_from_dsl` return: a dict, shown inline in Jupyter.

    A notebook shows the interactive page (`_repr_html_`, in an iframe so that several
    results keep apart) or, where HTML is not rendered, the heatmap figure (`_repr_png_`).
    """

    def _page(self) -> str | None:
        files = self.get("files") or {}
        if files.get("html"):
            return Path(files["html"]).read_text(encoding="utf-8")
        weights = self.get("attention_weights")
        if not weights:
            return None
        from neural_attn.client._html import page_html

        return page_html(
            dict(weights),
            tokens=self.get("tokens"),
            batch_index=0,
            analysis=self.get("analysis"),
            pooling=None,
        )

    def _repr_html_(self) -> str | None:
        from neural_attn.client._html import iframe

        page = self._page()
        return None if page is None else iframe(page)

    def _repr_png_(self) -> bytes | None:
        figure = self.get("figure")
        if figure is not None:
            return bytes(figure._repr_png_())
        files = self.get("files") or {}
        png = files.get("heatmap")
        return Path(png).read_bytes() if png and png.endswith(".png") else None


@dataclass(frozen=True)
class Fetched:
    """What `visualize_from_dsl` fetched: the metrics, the attention drawn (pooled on the
    server when long) and how, the result's attention_weights, the npz written (or None)."""

    analysis: dict[str, Any]
    shown: Mapping[str, np.ndarray]
    pooling: Mapping[str, Pooling]
    weights: Mapping[str, np.ndarray]
    npz: str | None
    npz_window: tuple[tuple[int, int], tuple[int, int]] | None
    notes: Sequence[str] = ()  # what was left out and why (an npz over its budget)


def write_all(
    out: OutputDir,
    compiled: CompileResult,
    got: Fetched,
    *,
    npz: Beside[Mapping[str, np.ndarray]] | None,
    tokens: Sequence[str] | None,
    split: Tokens | None,
    head: int | None,
    batch_index: int,
    formats: Sequence[str],
    dpi: int,
) -> tuple[Figure, Fetched]:
    """Every file: figures, code, page, rollout, analysis.json, while `npz` (when the npz
    streams in on its own thread) writes it, then that npz; returns the heatmap and `got`
    with the npz's layers as its attention_weights. Leaving early stops the npz's stream."""
    with npz or contextlib.nullcontext():
        figure = figures(
            out,
            got.shown,
            got.analysis,
            head=head,
            tokens=tokens,
            batch_index=batch_index,
            pooling=got.pooling,
            formats=formats,
            dpi=dpi,
        )
        code(out, compiled)
        page(
            out,
            got.shown,
            got.analysis,
            tokens=tokens,
            batch_index=batch_index,
            pooling=got.pooling,
        )
        rollout(out, got.analysis)
        analysis_json(
            out,
            compiled,
            got.analysis,
            tokens=tokens,
            split=split,
            npz=got.npz,
            npz_window=got.npz_window,
            pooling=got.pooling,
            notes=got.notes,
        )
        if npz is not None:
            name = got.npz
            assert name is not None  # a streaming npz has its name
            got = replace(got, weights=npz.result())
            out.written("npz", out.path / name)
    return figure, got


def result(
    out: OutputDir,
    compiled: CompileResult,
    got: Fetched,
    figure: Figure,
    tokens: Sequence[str] | None,
    split: Tokens | None,
) -> VisualizationResult:
    """`visualize_from_dsl`'s returned dict."""
    return VisualizationResult(
        attention_weights=got.weights,
        analysis=got.analysis,
        files=out.files,
        model=compiled,
        figure=figure,
        tokens=None if tokens is None else list(tokens),
        token_ids=None if split is None else list(split.ids),
        tokenizer_tokens=tokenizer_tokens(split),
        summary=console_summary(got.analysis),
        notes=list(got.notes),
    )
