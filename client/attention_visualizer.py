"""`AttentionVisualizer`: the documented Python API, served by a neural-attn server.

Its methods and signatures are the documented ones (`tests/client/test_thin_client.py` holds
them to it); the work runs on the server named by `server=` (or $NEURAL_ATTN_SERVER), else on the
embedded server.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neural_attn.analysis import analyze_attention_patterns, summarize_layers
from neural_attn.client import _outputs as outputs
from neural_attn.client import render
from neural_attn.client._beside import Beside, StoppingSink
from neural_attn.client._client import AttentionClient, CompileResult, ExtractedLayer
from neural_attn.client._embedded import server_target
from neural_attn.client._figures import parse_formats
from neural_attn.client._inputs import Ask, check_tokens, text_input
from neural_attn.client._outputs import VisualizationResult
from neural_attn.client._progress import NPZ_MAX_BYTES, StreamProgress, expected_bytes, npz_too_big
from neural_attn.client._sinks import ArraySink, NpzSink
from neural_attn.client._tokenize import (
    PretrainedTokenizer,
    Vocabulary,
)
from neural_attn.errors import InvalidInputError
from neural_attn.pooling import Pooling

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _path(path: str | os.PathLike[str] | None) -> Path | None:
    return None if path is None else Path(path)


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
        input_data, tokens, _ = text_input(model, input_data, tokens, text, tokenize)
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
        npz_max_bytes: int | None = NPZ_MAX_BYTES,
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
        the sequence is longer, and the npz is written chunk by chunk as the layers stream in
        (on a thread, while the figures are drawn): no layer is ever whole in this process.
        "attention_weights" is then the npz opened lazily; for short sequences, the arrays.
        `dtype="float16"` halves what travels and what the npz takes; `npz_window=((q0, q1),
        (k0, k1))` keeps only that query x key range in the npz (a stop of 0: the end). An npz
        over `npz_max_bytes` (None: no budget) is not written; "notes" say why and how to ask.

        `text` with `tokenize` (a `Vocabulary`, a vocab.txt path, a checkpoint's tokenizer folder
        or a `PretrainedTokenizer`) replaces `input_data` and `tokens` for a model that starts
        with `Embedding`. `figure_formats` ("png", "svg", "pdf", or several) writes each figure
        in each format, at `dpi`; with "pdf" every figure is also a page of attention_figures.pdf.
        """
        formats = parse_formats(figure_formats)
        compiled = self.compile(str(dsl_file), backend)
        input_data, tokens, split = text_input(compiled, input_data, tokens, text, tokenize)
        check_tokens(compiled, input_data, tokens)
        ask = Ask(compiled, input_data, [layer_name] if layer_name else None, tokens, dtype)
        out = outputs.OutputDir(output_dir, self._progress)
        got, npz = self._fetch(
            ask, out, head_index, display_size, write_npz, npz_window, npz_max_bytes
        )
        figure, got = outputs.write_all(
            out,
            compiled,
            got,
            npz=npz,
            tokens=tokens,
            split=split,
            head=head_index,
            batch_index=batch_index,
            formats=formats,
            dpi=dpi,
        )
        return outputs.result(out, compiled, got, figure, tokens, split)

    # -- what visualize_from_dsl fetches ----------------------------------------------------------
    def _fetch(
        self,
        ask: Ask,
        out: outputs.OutputDir,
        head_index: int | None,
        display_size: int,
        write_npz: bool,
        npz_window: tuple[tuple[int, int], tuple[int, int]] | None,
        npz_max_bytes: int | None,
    ) -> tuple[outputs.Fetched, Beside[Mapping[str, np.ndarray]] | None]:
        """The metrics and the attention to draw; the npz written from the layers drawn when
        they are its exact whole, else streamed in on a thread beside the caller (returned:
        its result is the npz opened lazily)."""
        analysis = self._metrics(ask, head_index, display_size)
        layers = {name: tuple(int(n) for n in m["shape"]) for name, m in analysis["layers"].items()}
        shown, pooling = self._for_display(ask, layers, display_size, analysis.pop("pooled", {}))
        shapes = list(layers.values())
        npz = out.path / "attention_weights.npz"
        notes = []
        if write_npz:
            over = npz_too_big(shapes, dtype=ask.dtype, window=npz_window, budget=npz_max_bytes)
            if over:
                notes.append(over)
                write_npz = False
        streaming = None
        if write_npz and (pooling or npz_window):
            job = functools.partial(self._npz, ask, npz, shapes, npz_window)
            streaming = Beside(job, name=npz.name)
        elif write_npz:
            np.savez(npz, **shown)  # type: ignore[arg-type]
            out.written("npz", npz)
        npz_name = npz.name if write_npz else None
        fetched = outputs.Fetched(analysis, shown, pooling, shown, npz_name, npz_window, notes)
        return fetched, streaming

    def _metrics(self, ask: Ask, head_index: int | None, display_size: int) -> dict[str, Any]:
        """Every layer's metrics and the rollout, computed on the server, and from the same
        pass the layers longer than `display_size` pooled to it (when they fit a reply)."""
        self._progress("computing metrics on the server")
        analysis = self.client.analyze(
            model=ask.model,
            data=ask.data,
            layers=ask.layers,
            sequence_length=ask.length,
            pool_size=display_size,
        )
        for name, metrics in analysis["layers"].items():
            if head_index is not None and not 0 <= head_index < metrics["num_heads"]:
                raise InvalidInputError(
                    f"head {head_index} does not exist in `{name}`, which has "
                    f"{metrics['num_heads']} heads (0..{metrics['num_heads'] - 1})"
                )
        return analysis

    def _for_display(
        self,
        ask: Ask,
        shapes: Mapping[str, tuple[int, ...]],
        display_size: int,
        pooled: Mapping[str, ExtractedLayer],
    ) -> tuple[dict[str, np.ndarray], dict[str, Pooling]]:
        """Each layer pooled on the server to `display_size` positions when it is longer (the
        `pooled` ones came with the metrics; the others are asked for here), in model order;
        the layers that were, with their pooling."""
        got = dict(pooled)
        missing = [name for name in shapes if name not in got]
        if missing:
            rest = [shapes[name] for name in missing]
            total = expected_bytes(rest, itemsize=ask.itemsize, pool_size=display_size)
            with self._bar("attention for display", layers=len(rest), total=total) as bar:
                for layer in self.client.extract_layers(
                    ask.model,
                    ask.data,
                    pool_size=display_size,
                    sink=bar.wrap(ArraySink()),
                    **{**ask.options, "layers": missing},
                ):
                    if not self._progress_bar:
                        self._progress(f"received {layer.name} {tuple(layer.shape)} for display")
                    got[layer.name] = layer
        shown = {name: got[name].value for name in shapes}
        pooling = {name: p for name in shapes if (p := got[name].pooling) and p.pooled}
        return shown, pooling

    def _npz(
        self,
        ask: Ask,
        npz: Path,
        shapes: list[tuple[int, ...]],
        window: tuple[tuple[int, int], tuple[int, int]] | None,
        stop: threading.Event,
    ) -> Mapping[str, np.ndarray]:
        """attention_weights.npz streamed chunk by chunk into the file (no layer whole in this
        process), opened lazily; ends at the next chunk once `stop` is set."""
        total = None if window else expected_bytes(shapes, itemsize=ask.itemsize)
        with NpzSink(npz) as sink, self._bar(npz.name, layers=len(shapes), total=total) as bar:
            for layer in self.client.extract_layers(
                ask.model,
                ask.data,
                window=window,
                sink=StoppingSink(bar.wrap(sink), stop),
                **ask.options,
            ):
                if not self._progress_bar:
                    self._progress(f"wrote {layer.name} {tuple(layer.shape)} to {npz.name}")
        return np.load(npz)

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
