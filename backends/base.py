"""The small interface every backend implements, and the input rules they share.

A backend turns a resolved `Network` into a `BuiltModel`; `BuiltModel.forward` is one forward
pass that returns the model output and the attention probabilities of the requested layers.
Frameworks are imported lazily: a server with only PyTorch installed still serves PyTorch.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Generator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from neural_attn.backends.streaming import (
    Reduction,
    Tile,
    TileCut,
    TiledReduction,
    assemble,
    on_pass_thread,
    stream_pass,
)
from neural_attn.backends.weight_files import (
    FORMATS,
    FRAMEWORK_FORMATS,
    NEUTRAL_FORMATS,
    read_neutral,
)
from neural_attn.dsl.ir import Network
from neural_attn.errors import (
    BackendUnavailableError,
    CancelledError,
    InvalidInputError,
    excerpt,
)

BACKENDS = ("tensorflow", "pytorch")
_MODULES = {
    "tensorflow": "neural_attn.backends.tensorflow.build",
    "pytorch": "neural_attn.backends.pytorch.build",
}
_PACKAGES = {"tensorflow": "tensorflow-cpu==2.21.0", "pytorch": "torch==2.13.0"}


@dataclass(frozen=True)
class InputForm:
    """One input form a model accepts; shape includes the batch axis, None is dynamic."""

    shape: tuple[int | None, ...]
    dtype: str  # "int64" token ids or "float32" features
    description: str


@dataclass(frozen=True)
class PreparedInput:
    """A validated input: the array to feed, and whether it skips a leading Embedding."""

    array: np.ndarray
    start: int  # index of the first layer to run
    token_ids: np.ndarray | None  # (batch, seq) ids when they went through an Embedding


def padding_masked_layers(network: Network) -> frozenset[str]:
    """Attention layers whose padding keys (token id 0) are masked.

    All of them when the first layer is `Embedding(mask_zero=true)`; else the
    `TransformerEncoder(use_attention_mask=true)` ones. Masking needs token ids: input that is
    already embedded has no ids, so nothing is masked then.
    """
    if not _embedding_first(network):
        return frozenset()
    everywhere = bool(network.layers[0].get("mask_zero", False))
    return frozenset(
        layer.name
        for layer in network.attention_layers
        if everywhere or layer.get("use_attention_mask", False)
    )


def _embedding_first(network: Network) -> bool:
    return bool(network.layers) and network.layers[0].type == "Embedding"


def input_forms(network: Network) -> list[InputForm]:
    """The accepted input forms, preferred first."""
    if _embedding_first(network):
        emb = network.layers[0]
        seq = emb.input_shape[0]
        return [
            InputForm(
                (None, seq), "int64", f"token ids in [0, {emb['input_dim']}) through `{emb.name}`"
            ),
            InputForm(
                (None, seq, emb["output_dim"]),
                "float32",
                f"already-embedded features (skips `{emb.name}`)",
            ),
        ]
    return [InputForm((None, *network.input_shape), "float32", "features")]


def _max_length(network: Network) -> tuple[int, str] | None:
    """The longest sequence the network takes and the layer that bounds it, if one does."""
    bounds = [
        (int(layer["max_len"]), layer.name)
        for layer in network.walk()
        if layer.type == "PositionalEncoding" and layer.get("max_len") is not None
    ]
    return min(bounds) if bounds else None


def _fmt(shape: tuple[int | None, ...]) -> str:
    inner = ", ".join(
        "batch" if i == 0 and d is None else ("seq" if d is None else str(d))
        for i, d in enumerate(shape)
    )
    return f"({inner})"


def prepare_input(network: Network, data: np.ndarray) -> PreparedInput:
    """Check `data` against the accepted forms; raise InvalidInputError naming them if none fits."""
    forms = input_forms(network)
    for index, form in enumerate(forms):
        if data.ndim != len(form.shape):
            continue
        if any(
            want is not None and got != want
            for got, want in zip(data.shape, form.shape, strict=True)
        ):
            continue
        if data.shape[0] == 0 or any(d == 0 for d in data.shape):
            raise InvalidInputError(f"input has an empty dimension: shape {data.shape}")
        bound = _max_length(network)
        if bound is not None and data.shape[1] > bound[0]:
            raise InvalidInputError(
                f"the sequence has {data.shape[1]} steps but `{bound[1]}` covers at most "
                f"{bound[0]} positions (max_len)"
            )
        if form.dtype == "int64":
            if not np.issubdtype(data.dtype, np.integer):
                continue
            vocab = network.layers[0]["input_dim"]
            low, high = int(data.min()), int(data.max())
            if low < 0 or high >= vocab:
                raise InvalidInputError(
                    f"token ids must lie in [0, {vocab}) for `{network.layers[0].name}`; "
                    f"got values from {low} to {high}"
                )
            return PreparedInput(data.astype(np.int64), 0, data.astype(np.int64))
        if not np.issubdtype(data.dtype, np.floating):
            continue
        if not np.all(np.isfinite(data)):
            raise InvalidInputError("input holds NaN or infinite values")
        return PreparedInput(
            data.astype(np.float32), 1 if _embedding_first(network) and index else 0, None
        )
    accepted = " or ".join(f"{_fmt(f.shape)} {f.dtype} ({f.description})" for f in forms)
    raise InvalidInputError(
        f"input of shape {tuple(data.shape)} and dtype {data.dtype} does not fit network "
        f"`{network.name}`: it accepts {accepted}"
    )


DEFAULT_DYNAMIC_LENGTH = 16


def sample_shape(
    network: Network, *, length: int | None = None
) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype `sample_input` gives, known before anything is allocated."""
    form = input_forms(network)[0]
    dynamic = length or DEFAULT_DYNAMIC_LENGTH
    bound = _max_length(network)
    if bound is not None:
        dynamic = min(dynamic, bound[0])
    shape = tuple(
        1 if i == 0 else (d if d is not None else dynamic) for i, d in enumerate(form.shape)
    )
    return shape, np.dtype(form.dtype)


def sample_input(network: Network, *, seed: int = 0, length: int | None = None) -> np.ndarray:
    """A deterministic sample input of batch 1 in the preferred form.

    Made in its own dtype at once (no float64 draft): its size is that of `sample_shape`, which
    callers check against their limits first.
    """
    shape, dtype = sample_shape(network, length=length)
    rng = np.random.default_rng(seed)
    if dtype == np.int64:
        vocab = network.layers[0]["input_dim"]
        # Avoid id 0: it is the padding id when masks are on.
        return rng.integers(1 if vocab > 1 else 0, vocab, size=shape, dtype=np.int64)
    return rng.standard_normal(shape, dtype=np.float32)


def _open_gate() -> None:
    pass


class _Capture:
    """The `capture` attention blocks hand their probabilities to: passes the wanted layers on
    to `take` at once, as `Tile`s of framework tensors (a layer computed in one piece is one
    whole tile), and drops the others. A backend whose pass can run code right before each
    attention block calls `gate()` there (see `BuiltModel.gates_attention`). `for_stream`:
    the pass serves a stream, whose caller wants nothing from it but attention."""

    def __init__(
        self,
        wanted: Collection[str],
        take: Callable[[str, Tile], None],
        gate: Callable[[], None] = _open_gate,
        should_stop: Callable[[], bool] | None = None,
        *,
        for_stream: bool = False,
    ) -> None:
        self.wanted = frozenset(wanted)
        self.take = take
        self.gate = gate
        self.should_stop = should_stop
        self.for_stream = for_stream

        self._done: set[str] = set()

    def tile(self, name: str, start: int, probs: Any, queries: int, step: int) -> None:
        """Query rows `start`.. of layer `name` ([batch, head, rows, key]), one of `queries`
        rows that the pass computes `step` rows at a time, in order. A long layer stops
        between its tiles when `should_stop()` says so."""
        tile = Tile(start, queries, step, probs)
        if name in self.wanted and name not in self._done:
            if tile.last:
                self._done.add(name)
            self.take(name, tile)
        if not tile.last and self.should_stop is not None and self.should_stop():
            raise stopped()

    def __setitem__(self, name: str, probs: Any) -> None:
        """A whole layer at once. A backend may hand a layer over early (from inside its block)
        and again when the block returns: only the first reaches `take`."""
        rows = int(probs.shape[-2])
        self.tile(name, 0, probs, rows, max(rows, 1))


class BuiltModel(ABC):
    """A compiled model of one backend."""

    backend: str
    network: Network
    device: str
    attention_path: str
    # Whether `_pass` calls `capture.gate()` right before each attention block computes: then
    # a stream lets the pass go on while the consumer sends the last layer, up to the next
    # attention. Otherwise the pass waits as soon as it hands a layer over.
    gates_attention: bool = False

    @abstractmethod
    def parameter_count(self) -> int: ...

    @abstractmethod
    def _pass(
        self,
        prepared: PreparedInput,
        capture: _Capture,
        should_stop: Callable[[], bool] | None,
    ) -> Any:
        """Run the framework model once in inference mode.

        Attention blocks write their probabilities (framework tensors [batch, head, query,
        key]) into `capture` as soon as they compute them. Returns the output tensor, or None
        when `should_stop()` said yes between layers.
        """

    @abstractmethod
    def _to_numpy(self, tensor: Any, reduction: Reduction | None = None) -> np.ndarray:
        """A float32 (C-contiguous) numpy array of `tensor`, reduced first, on the model's
        device, when `reduction` says so. Shares memory with the tensor where it can."""

    @abstractmethod
    def _cut_to_numpy(self, tile: Any, cut: TileCut) -> np.ndarray:
        """`cut` of one tile of probabilities [batch, head, rows, key], made on the model's
        device, as float32 (C-contiguous) numpy."""

    @abstractmethod
    def set_tile_elements(self, budget: int) -> None:
        """Compute attention in tiles of query rows of at most `budget` scores each (batch x
        heads x rows x keys), from the next pass on; a layer within it is one tile."""

    def forward(
        self,
        data: np.ndarray,
        *,
        capture: Collection[str] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward pass in inference mode.

        Returns the model output and, for each layer named in `capture`, its attention
        probabilities as float32 numpy, shape [batch, head, query, key]. `should_stop` is
        asked between layers; when it says yes the pass stops with CancelledError.

        The pass runs on a pass thread (`streaming.on_pass_thread`), whichever thread calls, so
        thread-local framework state the caller set (autocast, profiler scopes, CUDA streams)
        does not reach it; a caller interrupted while it waits (Ctrl-C) stops it between layers.
        """
        prepared = prepare_input(self.network, data)
        kept: dict[str, np.ndarray] = {}
        interrupted = threading.Event()

        def stop() -> bool:
            return interrupted.is_set() or (should_stop is not None and should_stop())

        def take(name: str, tile: Tile) -> None:
            kept[name] = assemble(replace(tile, values=self._to_numpy(tile.values)), kept.get(name))

        def run() -> np.ndarray:
            out = self._pass(prepared, _Capture(capture, take, should_stop=stop), stop)
            if out is None:
                raise stopped()
            return self._to_numpy(out)

        try:
            return on_pass_thread(run), kept
        except BaseException:
            interrupted.set()
            raise

    def stream(
        self,
        data: np.ndarray,
        *,
        capture: Collection[str],
        reduction: Reduction | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[tuple[str, Tile], None, None]:
        """One forward pass that yields (layer name, `Tile` of numpy attention) for each layer
        in `capture` as soon as the pass has computed it, reduced beside the model by
        `reduction`: a layer computed in one piece, or pooled, comes as one whole tile; a long
        layer's exact rows (all heads or one, a window or all) as tiles of rows, in order.

        The pass waits while the caller holds a tile, and goes on when the caller asks for the
        next: drop each array before asking, and at most one tile (and the one the pass is
        making) exists at a time. Closing the iterator stops the pass at its next tile. A
        backend may leave out what follows the model's last attention (`_Capture.for_stream`).
        """
        prepared = prepare_input(self.network, data)
        reducing = reduction is not None and not reduction.exact

        def run(emit: Callable[[str, Tile], None], gate: Callable[[], None]) -> None:
            layers: dict[str, TiledReduction] = {}

            def take(name: str, tile: Tile) -> None:
                if not reducing:
                    emit(name, replace(tile, values=self._to_numpy(tile.values)))
                    return
                assert reduction is not None
                if tile.is_whole:
                    emit(name, Tile.whole(self._to_numpy(tile.values, reduction)))
                    return
                if name not in layers:
                    shape = tuple(tile.values.shape)
                    layers[name] = TiledReduction(reduction, (*shape[:2], tile.rows, shape[-1]))
                cut = layers[name].cut(tile.start, tile.stop)
                if cut is not None:
                    reduced = layers[name].add(
                        tile.start, tile.step, self._cut_to_numpy(tile.values, cut)
                    )
                    if reduced is not None:
                        emit(name, reduced)

            sink = _Capture(capture, take, gate, should_stop, for_stream=True)
            if self._pass(prepared, sink, should_stop) is None:
                raise stopped()

        yield from stream_pass(run, gated=self.gates_attention)

    @abstractmethod
    def head_mask(self, masks: Mapping[str, np.ndarray]) -> AbstractContextManager[None]:
        """While inside, each attention layer named in `masks` multiplies head h of batch item
        i by ``masks[layer][i, h]`` before its output projection (``masks[layer]``: (batch,
        heads)): the head's context ``softmax(QK^T) V`` is zeroed where the projection reads
        it, so the projection's bias stays and the other heads are untouched. One pass runs
        many ablations side by side. It changes the model object: use it on a `private_copy`,
        never on a model other requests share. Refuses a name that is not an attention layer."""

    def private_copy(self, *, seed: int, device: str) -> BuiltModel:
        """A model of the same network and weights that no other request sees."""
        return get_backend(self.backend).build(
            self.network, seed=seed, device=device, weights=self.get_weights()
        )

    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """The parameters in the framework-neutral layout of `backends.weights`."""

    @abstractmethod
    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load parameters in the framework-neutral layout of `backends.weights`; weights that
        do not fit or are not finite are refused (`weight_files.check_neutral`)."""

    @abstractmethod
    def generated_code(self, network: Network | None = None) -> str:
        """The readable `compiled_model_{backend}.py` with `create_model()`.

        `network` may differ from the built one only in its file name (the header names it).
        """


def stopped() -> CancelledError:
    return CancelledError("the call was cancelled or ran past its deadline; the pass stopped")


class Backend(ABC):
    name: str
    # Scores per tile of query rows (batch x heads x rows x keys) a model of this backend
    # computes at once unless `BuiltModel.set_tile_elements` says otherwise: the size at which
    # its framework computes a long layer fastest.
    tile_elements: int

    @abstractmethod
    def build(
        self,
        network: Network,
        *,
        seed: int,
        device: str = "auto",
        weights: dict[str, np.ndarray] | None = None,
    ) -> BuiltModel:
        """The model with `weights` (neutral, checked to fit), else the seeded initial ones:
        those are never drawn when trained weights are given (seconds at 100M parameters)."""

    @abstractmethod
    def read_weights(
        self, network: Network, content: bytes, fmt: str, *, name: str = ""
    ) -> dict[str, np.ndarray]:
        """Read a weights file of this framework (`weight_files.FRAMEWORK_FORMATS`) written
        for `network` into the neutral layout, refusing one that does not fit. `name`: the
        file's name as the client gave it, for messages."""

    @abstractmethod
    def gpu_available(self) -> bool: ...

    @abstractmethod
    def framework_version(self) -> str:
        """The version of the framework this backend runs on, e.g. "2.13.0+cpu"."""

    def resolve_device(self, requested: str) -> str:
        """The device `requested` (auto | cpu | cuda) means for this backend on this machine."""
        if requested not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda; got {requested!r}")
        if requested == "cpu":
            return "cpu"
        if self.gpu_available():
            return "cuda:0"
        if requested == "cuda":
            raise BackendUnavailableError(
                f"--device cuda was asked for but {self.name} sees no CUDA device here; "
                "use --device auto or cpu"
            )
        return "cpu"


def get_backend(name: str) -> Backend:
    """The backend called `name`, imported on first use."""
    if name not in _MODULES:
        raise InvalidInputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {name} backend is not installed on this server ({exc}); "
            f"install it with `pip install {_PACKAGES[name]}` "
            "or `pip install 'neural-attn[server]'`"
        ) from exc
    backend: Backend = module.BACKEND
    return backend


def read_weights(
    network: Network, content: bytes, fmt: str, *, name: str = ""
) -> dict[str, np.ndarray]:
    """Read a weights file of any format into the neutral layout (names and shapes checked;
    `BuiltModel.set_weights` checks the values when they are loaded): the neutral formats here,
    a framework's files by its backend.

    `name`: the file's name as the client gave it, for messages.
    """
    if fmt in NEUTRAL_FORMATS:
        return read_neutral(network, content, fmt, name=name)
    if fmt in FRAMEWORK_FORMATS:
        return get_backend(FRAMEWORK_FORMATS[fmt]).read_weights(network, content, fmt, name=name)
    raise InvalidInputError(
        f"unknown weights format {excerpt(fmt)!r}; use one of {', '.join(FORMATS)}"
    )
