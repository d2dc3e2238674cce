"""`AttentionVisualizer`: the documented Python API, served by a neural-attn server.

Its methods and signatures are the documented ones (`tests/client/test_thin_client.py` holds
them to it); the work runs on the server named by `server=` (or $NEURAL_ATTN_SERVER), else on the
embedded server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neural_attn.analysis import analyze_attention_patterns, summarize_layers
from neural_attn.client import render
from neural_attn.client._client import AttentionClient, CompileResult
from neural_attn.client._embedded import server_target
from neural_attn.client._figures import PDF_BOOK, parse_formats, save_figure, write_pdf_book
from neural_attn.client._progress import StreamProgress, expected_bytes
from neural_attn.client._sinks import ArraySink, NpzSink
from neural_attn.client._tokenize import (
    PretrainedTokenizer,
    Tokens,
    Vocabulary,
    check_ids,
)
from neural_attn.client._tokenize import tokenize as split_text
from neural_attn.errors import InvalidInputError
from neural_attn.pooling import Pooling

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _path(path: str | os.PathLike[str] | None) -> Path | None:
    return None if path is None else Path(path)


def _safe_name(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in layer)


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


class AttentionVisualizer:
    """Extract, analyze and draw the attention of a Neural DSL model.

    Args:
        model: the model to work on: a path to a `.neural` file, `.neural` source text, or a
            `CompileResult` from `AttentionClient.compile`; None when using
            `visualize_from_dsl` only.
        backend: 'tensorflow' or 'pytorch'.
        server: "host:port" of a neural-attn server (default: $NEURAL_ATTN_SERVER, else an
            embedded server in this process).
        client: an `AttentionClient` to use instead (its server wins over `server`).
        seed: weight-initialisation seed of the compiled model.
        weights: trained weights to load: a local file (neutral .npz, Keras .weights.h5 /
            .keras, PyTorch state_dict), sent to the server; any format fits either backend.
        server_weights: a weights file under the server's weights directory instead.
        token: bearer token for servers started with --token (default: $NEURAL_ATTN_TOKEN).
        progress: called with a line of text at each step of long work.
        progress_bar: draw a bar (bytes and layers, on stderr) while attention streams in.
    """

    def __init__(
        self,
        model: Any = None,
        backend: str = "tensorflow",
        *,
        server: str | None = None,
        client: AttentionClient | None = None,
        seed: int = 0,
        network: str | None = None,
        weights: str | os.PathLike[str] | None = None,
        server_weights: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
        progress_bar: bool = False,
    ) -> None:
        self.model = model
        self.backend = backend
        self.seed = seed
        self.weights = weights
        self.server_weights = server_weights
        self._token = token
        self.network = network
        self._server = server
        self._client = client
        self._compiled: dict[tuple[Any, str], CompileResult] = {}
        self._progress = progress or _quiet
        self._progress_bar = progress_bar

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def client(self) -> AttentionClient:
        if self._client is None:
            target, embedded = server_target(self._server, announce=self._progress)
            # No target is the embedded server, in clear on loopback whatever $NEURAL_ATTN_TLS says.
            self._client = AttentionClient(None if embedded else target, token=self._token)
        return self._client

    def compile_options(self, backend: str) -> dict[str, Any]:
        """The options every compile of this visualizer sends (backend, seed, weights...)."""
        return {
            "backend": backend,
            "seed": self.seed,
            "network": self.network,
            "weights": self.weights,
            "server_weights": self.server_weights,
        }

    def compile(self, model: Any, backend: str | None = None) -> CompileResult:
        """Compile (once) a .neural path or source; a CompileResult is passed through."""
        if isinstance(model, CompileResult):
            return model
        backend = backend or self.backend
        key = (str(model), backend)
        if key not in self._compiled:
            text = str(model)
            if "{" in text:
                self._progress(f"compiling DSL source ({backend})")
                result = self.client.compile(text, **self.compile_options(backend))
            else:
                self._progress(f"compiling {text} ({backend})")
                result = self.client.compile_file(text, **self.compile_options(backend))
            self._compiled[key] = result
        return self._compiled[key]

    def _current(self) -> CompileResult:
        if self.model is None:
            raise InvalidInputError(
                "this AttentionVisualizer has no model: pass a .neural path or source as `model`, "
                "or use visualize_from_dsl"
            )
        return self.compile(self.model, self.backend)

    def _extract(
        self,
        model: Any,
        input_data: np.ndarray | None,
        layer_names: Sequence[str] | None,
        *,
        sequence_length: int = 0,
    ) -> dict[str, np.ndarray]:
        weights: dict[str, np.ndarray] = {}
        for name, attention in self.client.extract_attention(
            model, input_data, layers=layer_names, sequence_length=sequence_length
        ):
            self._progress(f"received {name} {tuple(attention.shape)}")
            weights[name] = attention
        return weights

    # -- the documented API ------------------------------------------------------------
    def extract_attention_weights(
        self, input_data: np.ndarray | None, layer_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Attention of the named layers (None: every attention layer), one forward pass.

        Returns {layer_name: array of shape (batch, heads, query_len, key_len)}.
        """
        return self._extract(self._current(), input_data, layer_names)

    def visualize(
        self,
        input_data: np.ndarray | None,
        layer_name: str | None = None,
        head_index: int | None = None,
        tokens: Sequence[str] | None = None,
        output_path: str | os.PathLike[str] | None = None,
        *,
        text: str | None = None,
        tokenize: Vocabulary | PretrainedTokenizer | str | os.PathLike[str] | None = None,
    ) -> VisualizationResult:
        """Heatmaps of one layer (or all), one head (or the mean of heads).

        `text` with `tokenize` (a `Vocabulary`, a vocab.txt path, a checkpoint's tokenizer
        folder or a `PretrainedTokenizer`) replaces `input_data` and `tokens` for a model that
        starts with `Embedding`. Returns {"attention_weights", "analysis", "figure",
        "output_path", "tokens"}, which a notebook shows inline.
        """
        model = self._current()
        input_data, tokens, _ = _text_input(model, input_data, tokens, text, tokenize)
        weights = self._extract(
            model,
            input_data,
            [layer_name] if layer_name else None,
            sequence_length=len(tokens) if tokens else 0,
        )
        figure = render.plot_heatmaps(
            weights, head=head_index, tokens=tokens, output_path=_path(output_path)
        )
        return VisualizationResult(
            attention_weights=weights,
            analysis={name: analyze_attention_patterns(w) for name, w in weights.items()},
            figure=figure,
            output_path=str(output_path) if output_path else None,
            tokens=None if tokens is None else list(tokens),
        )

    def visualize_from_dsl(
        self,
        dsl_file: str | os.PathLike[str],
        input_data: np.ndarray | None,
        backend: str = "tensorflow",
        layer_name: str | None = None,
        head_index: int | None = None,
        tokens: Sequence[str] | None = None,
        output_dir: str | os.PathLike[str] = "attention_outputs",
        *,
        batch_index: int = 0,
        dtype: str = "float32",
        write_npz: bool = True,
        npz_window: tuple[tuple[int, int], tuple[int, int]] | None = None,
        display_size: int = render.DISPLAY_SIZE,
        text: str | None = None,
        tokenize: Vocabulary | PretrainedTokenizer | str | os.PathLike[str] | None = None,
        figure_formats: Sequence[str] | str = ("png",),
        dpi: int = render.PNG_DPI,
    ) -> VisualizationResult:
        """Compile a .neural file, extract its attention and write every output file.

        Writes into `output_dir`: attention_heatmap.png, attention_heads_{layer}.png,
        compiled_model_{backend}.py, attention_interactive.html, attention_weights.npz (exact,
        every layer; `write_npz=False` skips it), attention_rollout.npy and analysis.json
        (metrics only). Returns {"attention_weights", "analysis", "files", "model", "summary",
        "tokens"}, which a notebook shows inline (the page).

        Sized for long sequences: the metrics are computed on the server (no tensors move), the
        figures and page get attention pooled on the server to `display_size` positions when
        the sequence is longer, and the npz is written chunk by chunk as the layers stream in,
        so no layer is ever whole in this process. "attention_weights" is then the npz opened
        lazily (each layer read when asked for); for short sequences it is the arrays.
        `dtype="float16"` halves what travels and what the npz takes; `npz_window=((q0, q1),
        (k0, k1))` keeps only that query range x key range in the npz (a stop of 0: the end).

        `text` with `tokenize` (a `Vocabulary`, a vocab.txt path, a checkpoint's tokenizer
        folder or a `PretrainedTokenizer`) replaces `input_data` and
        `tokens` for a model that starts with `Embedding`. `figure_formats` ("png", "svg",
        "pdf", or several) writes each figure in each format, at `dpi`; with "pdf" every figure
        is also a page of attention_figures.pdf.
        """
        formats = parse_formats(figure_formats)
        compiled = self.compile(str(dsl_file), backend)
        input_data, tokens, split = _text_input(compiled, input_data, tokens, text, tokenize)
        _check_tokens(compiled, input_data, tokens)
        layers = [layer_name] if layer_name else None
        length = len(tokens) if tokens else 0
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}

        def written(key: str, path: Path) -> None:
            files[key] = str(path)
            self._progress(f"wrote {path}")

        self._progress("computing metrics on the server")
        analysis = self.client.analyze(
            model=compiled, data=input_data, layers=layers, sequence_length=length
        )
        for name, metrics in analysis["layers"].items():
            if head_index is not None and not 0 <= head_index < metrics["num_heads"]:
                raise InvalidInputError(
                    f"head {head_index} does not exist in `{name}`, which has "
                    f"{metrics['num_heads']} heads (0..{metrics['num_heads'] - 1})"
                )
        shapes = [tuple(int(n) for n in m["shape"]) for m in analysis["layers"].values()]
        itemsize = np.dtype(dtype).itemsize

        shown: dict[str, np.ndarray] = {}
        pooling: dict[str, Pooling] = {}
        with self._bar(
            "attention for display",
            layers=len(shapes),
            total=expected_bytes(shapes, itemsize=itemsize, pool_size=display_size),
        ) as bar:
            for layer in self.client.extract_layers(
                compiled,
                input_data,
                layers=layers,
                sequence_length=length,
                dtype=dtype,
                pool_size=display_size,
                sink=bar.wrap(ArraySink()),
            ):
                if not self._progress_bar:
                    self._progress(f"received {layer.name} {tuple(layer.shape)} for display")
                shown[layer.name] = layer.value
                if layer.pooling is not None and layer.pooling.pooled:
                    pooling[layer.name] = layer.pooling
        weights: Mapping[str, np.ndarray] = shown

        npz = out / "attention_weights.npz"
        if write_npz and not pooling and npz_window is None:
            np.savez(npz, **shown)  # type: ignore[arg-type]  # shown is exact: no second pass
            written("npz", npz)
        elif write_npz:
            total = None if npz_window else expected_bytes(shapes, itemsize=itemsize)
            with (
                NpzSink(npz) as sink,
                self._bar(npz.name, layers=len(shapes), total=total) as bar,
            ):
                for layer in self.client.extract_layers(
                    compiled,
                    input_data,
                    layers=layers,
                    sequence_length=length,
                    dtype=dtype,
                    window=npz_window,
                    sink=bar.wrap(sink),
                ):
                    if not self._progress_bar:
                        self._progress(f"wrote {layer.name} {tuple(layer.shape)} to {npz.name}")
            written("npz", npz)
            weights = np.load(npz)

        figures = []
        figure = render.plot_heatmaps(
            shown,
            head=head_index,
            tokens=tokens,
            batch_index=batch_index,
            pooling=pooling or None,
            dpi=dpi,
        )
        figures.append(figure)
        for fmt, path in zip(
            formats, save_figure(figure, out / "attention_heatmap", formats, dpi=dpi), strict=True
        ):
            written("heatmap" if fmt == formats[0] else f"heatmap.{fmt}", path)
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
            figures.append(grid)
            stem = out / f"attention_heads_{_safe_name(name)}"
            for fmt, path in zip(formats, save_figure(grid, stem, formats, dpi=dpi), strict=True):
                written(f"heads:{name}" if fmt == formats[0] else f"heads:{name}.{fmt}", path)
        if "pdf" in formats:
            written("figures.pdf", write_pdf_book(figures, out / PDF_BOOK))
        path = out / f"compiled_model_{compiled.backend}.py"
        path.write_text(compiled.generated_code, encoding="utf-8")
        written("code", path)
        rollout = analysis.get("rollout")
        path = render.create_interactive_html(
            shown,
            tokens=tokens,
            batch_index=batch_index,
            analysis=analysis,
            output_path=out / "attention_interactive.html",
            pooling=pooling or None,
            rollout=rollout,
        )
        written("html", path)
        if rollout is not None:
            path = out / "attention_rollout.npy"
            np.save(path, np.asarray(rollout))
            written("rollout", path)
        raw_tokens = None if split is None else list(split.pieces or split.labels)
        path = out / "analysis.json"
        path.write_text(
            json.dumps(
                {
                    "model_id": compiled.model_id,
                    "network": compiled.network_name,
                    "backend": compiled.backend,
                    "device": compiled.device,
                    "tokens": None if tokens is None else list(tokens),
                    # from text: the ids sent and the tokenizer's own strings (AutoTokenizer's
                    # convert_ids_to_tokens for --tokenizer); "tokens" are the axis labels
                    "token_ids": None if split is None else list(split.ids),
                    "tokenizer_tokens": raw_tokens,
                    "layers": analysis["layers"],
                    "rollout": "attention_rollout.npy" if rollout is not None else None,
                    "attention_weights": npz.name if write_npz else None,
                    "attention_weights_window": npz_window,
                    "display_pooling": {k: p.as_dict() for k, p in pooling.items()} or None,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        written("analysis", path)
        return VisualizationResult(
            attention_weights=weights,
            analysis=analysis,
            files=files,
            model=compiled,
            figure=figure,
            tokens=None if tokens is None else list(tokens),
            token_ids=None if split is None else list(split.ids),
            tokenizer_tokens=raw_tokens,
            summary=render.format_console_summary(
                # the exact shapes (figures may be pooled), as views that take no memory
                {
                    name: np.broadcast_to(np.float32(0), tuple(metrics["shape"]))
                    for name, metrics in analysis["layers"].items()
                },
                analysis,
            ),
        )

    def _bar(self, what: str, *, layers: int, total: int | None) -> StreamProgress:
        return StreamProgress(what, layers=layers, total_bytes=total, enabled=self._progress_bar)

    def plot_attention_heads(
        self,
        attention_weights: np.ndarray,
        tokens: Sequence[str] | None = None,
        output_path: str | os.PathLike[str] | None = None,
    ) -> Figure:
        """A grid of all heads; `attention_weights` is (num_heads, seq_len, seq_len)."""
        return render.plot_attention_heads(
            attention_weights, tokens=tokens, output_path=_path(output_path)
        )

    def create_interactive_visualization(
        self,
        attention_weights: Mapping[str, np.ndarray],
        tokens: Sequence[str] | None = None,
        output_path: str | os.PathLike[str] = "attention_interactive.html",
    ) -> str:
        """A self-contained Plotly page (works offline); returns its path."""
        return str(
            render.create_interactive_html(
                attention_weights,
                tokens=tokens,
                analysis=summarize_layers(dict(attention_weights)),
                output_path=Path(output_path),
            )
        )

    def analyze_attention_patterns(self, attention_weights: np.ndarray) -> dict[str, Any]:
        """Entropy, max attention, diagonal strength (per head and averaged), pattern labels."""
        return dict(analyze_attention_patterns(attention_weights))


def _check_tokens(
    compiled: CompileResult, data: np.ndarray | None, tokens: Sequence[str] | None
) -> None:
    """`--tokens` must match the sequence length (of the data, else of the model)."""
    if not tokens:
        return
    if data is not None:
        length = int(np.shape(data)[1]) if np.ndim(data) >= 2 else None
    else:
        length = compiled.inputs[0].shape[1] if compiled.inputs else None
    if length is not None and length != len(tokens):
        raise InvalidInputError(
            f"{len(tokens)} tokens were given but the sequence length is {length}; "
            "give one token per position"
        )


def _text_input(
    compiled: CompileResult,
    data: np.ndarray | None,
    tokens: Sequence[str] | None,
    text: str | None,
    vocabulary: Vocabulary | PretrainedTokenizer | str | os.PathLike[str] | None,
) -> tuple[np.ndarray | None, Sequence[str] | None, Tokens | None]:
    """Token ids and labels from `text` (and the Tokens), for a model that starts with
    `Embedding`."""
    if text is None:
        if vocabulary is not None:
            raise InvalidInputError("a vocabulary was given without text to tokenize")
        return data, tokens, None
    if data is not None or tokens:
        raise InvalidInputError("give text, or input data and tokens, not both")
    if vocabulary is None:
        raise InvalidInputError("text needs a vocabulary (vocab.txt, one token a line)")
    if not compiled.embedding_layer:
        raise InvalidInputError(
            f"`{compiled.network_name}` does not start with an Embedding layer, so it takes no "
            "token ids; give its input with input data instead of text"
        )
    if not isinstance(vocabulary, Vocabulary | PretrainedTokenizer) and (
        Path(vocabulary).is_dir() or Path(vocabulary).suffix.lower() == ".json"
    ):  # a checkpoint's tokenizer folder or its tokenizer.json (else a plain vocabulary)
        vocabulary = PretrainedTokenizer.load(vocabulary)
    if isinstance(vocabulary, PretrainedTokenizer):
        split = vocabulary.encode(text)
    else:
        split = split_text(text, vocabulary)
    check_ids(split, compiled.vocab_size, compiled.embedding_layer)
    return split.as_batch(), list(split.labels), split
