"""What the service does, without gRPC: compile, plan and run one extraction, analyze.

The servicer turns messages into calls here and results back into messages; every refusal is
one of our errors (which carry their gRPC status), raised before anything large is allocated.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from neural_attn.backends.base import (
    BuiltModel,
    get_backend,
    prepare_input,
    read_weights,
    sample_input,
    sample_shape,
)
from neural_attn.backends.streaming import Reduction, Tile, assemble
from neural_attn.backends.weight_files import NPZ
from neural_attn.backends.weight_files import write as write_weights
from neural_attn.backends.weights import parameter_count
from neural_attn.dsl import compile_source, network_to_dict
from neural_attn.dsl.ir import Layer, Network
from neural_attn.errors import (
    InvalidInputError,
    LayerNotFoundError,
    NoAttentionLayersError,
    ResourceLimitError,
    excerpt,
)
from neural_attn.pooling import POOL_MODES
from neural_attn.server.cache import ModelCache
from neural_attn.server.config import ServerConfig


@dataclass(frozen=True)
class WeightsInput:
    """Trained weights as received: the file's bytes and its format (backends.weight_files)."""

    content: bytes
    format: str
    name: str = ""  # the file's name as the client gave it, for messages

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class CompiledModel:
    model_id: str
    network: Network
    model: BuiltModel
    seed: int
    weights_sha256: str = ""

    @property
    def nbytes(self) -> int:
        """What the model holds, as the cache counts it: its parameters in float32."""
        return parameter_bytes(self.network)

    def code(self, filename: str | None = None) -> str:
        """The generated code, its header naming `filename` (the model id ignores file names)."""
        network = self.network
        if filename and filename != network.filename:
            network = replace(network, filename=filename)
        return self.model.generated_code(network)


@dataclass(frozen=True)
class ExtractPlan:
    """A checked extraction: the input to feed, the layers to capture (in model order) and
    what to keep of each (a head, a window, pooling)."""

    data: np.ndarray
    layers: tuple[tuple[int, Layer], ...]  # (index among the model's layers, layer)
    reduction: Reduction

    @property
    def head(self) -> int | None:
        return self.reduction.head

    def source_shape(self, layer: Layer) -> tuple[int, int, int, int]:
        """The (batch, heads, query, key) shape of `layer`'s attention in this pass."""
        length = attention_length(layer, int(self.data.shape[1]))
        return int(self.data.shape[0]), int(layer["num_heads"]), length, length


class PrivateModel:
    """A copy of a model's network and weights that no other request sees, for passes with
    heads masked (masking changes the model object, so it never runs on a shared one)."""

    def __init__(self, model: BuiltModel) -> None:
        self._model = model

    def forward(
        self,
        data: np.ndarray,
        *,
        capture: Collection[str] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One pass: the output and the attention of each layer in `capture`
        (float32, [batch, head, query, key])."""
        return self._model.forward(data, capture=capture, should_stop=should_stop)

    def masked(
        self,
        data: np.ndarray,
        masks: Mapping[str, np.ndarray],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """The output of one pass with head h of item i of layer L scaled by
        ``masks[L][i, h]`` (`BuiltModel.head_mask`); the masks are gone after it."""
        with self._model.head_mask(masks):
            out, _ = self._model.forward(data, should_stop=should_stop)
        return out


def attention_length(layer: Layer, seq: int) -> int:
    """The sequence length an attention layer sees (layers before it may have changed it)."""
    known = layer.input_shape[0] if layer.input_shape else None
    return seq if known is None else int(known)


def parameter_bytes(network: Network) -> int:
    """The bytes of a network's parameters (float32), known from the IR before it is built."""
    return 4 * parameter_count(network)


def model_id_for(network: Network, *, backend: str, seed: int, weights_sha256: str = "") -> str:
    """Content address: the normalized IR (no positions, no file name), backend, seed, weights."""
    canonical = json.dumps(
        {
            "network": network_to_dict(network),
            "backend": backend,
            "seed": seed,
            "weights": weights_sha256 or None,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def peak_activation(net: Network, seq: int) -> tuple[int, str]:
    """The largest tensor one item's forward pass makes (elements), and the layer making it.

    Per layer: its output, and inside attention blocks the Q/K/V projections (3 x heads x
    key_dim per position) and the feed-forward hidden layer (ff_dim per position). Dynamic
    lengths take `seq`. Attention matrices are counted apart (max_attention_elements).
    """
    best, where = 0, ""
    for layer in net.walk():
        sizes = [math.prod(seq if d is None else d for d in layer.output_shape)]
        if layer.is_attention:
            width = int(layer.input_shape[-1] or 0)
            heads = int(layer["num_heads"])
            key_dim = int(layer.get("key_dim") or width // max(heads, 1))
            sizes.append(seq * 3 * heads * key_dim)
            sizes.append(seq * int(layer.get("ff_dim") or 0))
        if max(sizes) > best:
            best, where = max(sizes), layer.name
    return best, where


class Engine:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.cache: ModelCache[CompiledModel] = ModelCache(
            config.max_cached_models,
            max_bytes=config.max_cache_bytes,
            size_of=lambda entry: entry.nbytes,
        )

    def compile(
        self,
        source: str,
        *,
        filename: str,
        backend: str,
        seed: int,
        network: str | None,
        weights: WeightsInput | None = None,
    ) -> tuple[CompiledModel, bool]:
        """Parse, check and build (or find cached); returns the model and whether it was cached."""
        if len(source.encode("utf-8")) > self.config.max_source_bytes:
            raise ResourceLimitError(
                f"the .neural source is {len(source.encode('utf-8'))} bytes; this server accepts "
                f"at most {self.config.max_source_bytes}"
            )
        backend = backend or self.config.default_backend
        impl = get_backend(backend)  # UNIMPLEMENTED when not installed, before any parsing work
        net = compile_source(
            source,
            filename=filename or "<string>",
            network=network or None,
            max_layers=self.config.max_layers,  # refused while expanding, not after
        )
        self._check_size(net, backend)
        digest = weights.sha256 if weights else ""
        model_id = model_id_for(net, backend=backend, seed=seed, weights_sha256=digest)

        def build() -> CompiledModel:
            # Room first: the models this one evicts can be freed before it is built.
            self.cache.make_room(parameter_bytes(net))
            trained = (
                read_weights(net, weights.content, weights.format, name=weights.name)
                if weights
                else None
            )
            try:
                model = impl.build(net, seed=seed, device=self.config.device, weights=trained)
            except RecursionError:  # the DSL bounds nesting; this is the net under it
                raise ResourceLimitError(
                    f"network `{net.name}` nests too deeply for this server to build"
                ) from None
            model.set_tile_elements(self._tile_elements(backend))
            return CompiledModel(model_id, net, model, seed, digest)

        return self.cache.get_or_build(model_id, build)

    def _check_size(self, net: Network, backend: str) -> None:
        """Refuse, from the IR alone, a network whose build would be over the limits: its
        parameters, and the pass of one short sample some backends run to build it."""
        count = parameter_count(net)
        if count > self.config.max_parameters:
            raise ResourceLimitError(
                f"network `{net.name}` has {count:,} parameters; this server builds at most "
                f"{self.config.max_parameters:,}"
            )
        shape, _ = sample_shape(net, length=2)  # TensorFlow builds with a length-2 sample
        self._check_input(net, shape)
        # The build keeps no attention: the limits bound the tile it computes.
        seq = shape[1] if len(shape) > 1 else 1
        self._check_pass(net, backend, batch=1, seq=seq, reduction=Reduction())

    def _tile_elements(self, backend: str) -> int:
        """Scores per tile of query rows in a `backend` model: the server's flag, else the
        backend's own size."""
        return self.config.tile_elements or get_backend(backend).tile_elements

    def _check_input(self, net: Network, shape: tuple[int, ...]) -> None:
        size = math.prod(shape)
        if size > self.config.max_input_elements:
            dims = ", ".join(str(d) for d in net.input_shape)
            raise ResourceLimitError(
                f"network `{net.name}` takes {size:,} values per item (`input: ({dims})`); "
                f"this server accepts inputs of at most {self.config.max_input_elements:,}"
            )

    def _check_pass(
        self,
        net: Network,
        backend: str,
        *,
        batch: int,
        seq: int,
        reduction: Reduction | None = None,
        kept: Collection[str] = (),
    ) -> None:
        """Refuse a pass of `batch` items of length `seq` whose largest tensors would be over
        the limits: the attention it holds at once and the widest activation.

        Every attention layer is computed, requested or not, a tile of query rows at a time
        (`_tile_elements` scores). With `reduction` (a caller that reads layers in tiles) the
        pass holds one tile, plus each `kept` layer's reduced attention where it is pooled
        (exact rows leave tile by tile); without, the caller holds a whole layer.
        """
        limit = self.config.max_attention_elements
        for _, layer in net.attention_sites:
            heads, n = int(layer["num_heads"]), attention_length(layer, seq)
            if reduction is None:
                held = batch * heads * n * n
                if held > limit:
                    raise ResourceLimitError(
                        f"one attention layer of this request would hold {held:,} values "
                        f"(batch {batch} x {heads} heads x {n:,}^2); the limit is {limit:,}: "
                        "send a shorter sequence or fewer items"
                    )
                continue
            row = batch * heads * n
            rows = max(1, min(n, self._tile_elements(backend) // row))
            if row * rows > limit:
                raise ResourceLimitError(
                    f"one tile of `{layer.name}` would hold {row * rows:,} scores (batch "
                    f"{batch} x {heads} heads x {rows:,} query rows x {n:,} keys); the limit "
                    f"is {limit:,}: send a shorter sequence or fewer items"
                )
            pooling = reduction.pooling((n, n)) if layer.name in kept else None
            if pooling is not None and pooling.pooled:  # else its exact rows leave as tiles
                shown = 1 if reduction.head is not None else heads
                out_q, out_k = pooling.shape
                pooled = batch * shown * out_q * out_k
                if pooled > limit:
                    raise ResourceLimitError(
                        f"`{layer.name}` pooled would hold {pooled:,} values (batch {batch} x "
                        f"{shown} heads x {out_q:,} x {out_k:,}); the limit is {limit:,}: ask "
                        "for a smaller pooling size or fewer items"
                    )
        widest, layer_name = peak_activation(net, seq)
        if batch * widest > self.config.max_activation_elements:
            raise ResourceLimitError(
                f"this request would need {batch * widest:,} values at once in `{layer_name}` "
                f"(batch {batch}, sequence {seq}); the limit is "
                f"{self.config.max_activation_elements:,}: send a shorter sequence or fewer items"
            )

    def weights_file(self, relative: str) -> bytes:
        """Read a weights file named relative to the configured weights directory, never
        outside it."""
        if not self.config.weights_dir:
            raise InvalidInputError(
                "this server has no weights directory (neural-attn-server --weights-dir DIR); "
                "send the weights file's content instead"
            )
        _check_weights_name(relative)
        root = Path(self.config.weights_dir).resolve()
        try:
            path = (root / relative).resolve()
            inside = path.is_relative_to(root) and not Path(relative).is_absolute()
            is_file = inside and path.is_file()
        except (OSError, ValueError) as exc:  # NUL bytes, what the OS refuses
            raise InvalidInputError(
                f"weights path {excerpt(relative)!r} is not usable: {_reason(exc)}"
            ) from None
        if not inside:
            raise InvalidInputError(
                f"weights path {excerpt(relative)!r} is outside the server's weights directory"
            )
        if not is_file:
            raise InvalidInputError(
                f"no weights file {excerpt(relative)!r} in the server's weights directory"
            )
        try:
            size = path.stat().st_size
            if size > self.config.max_weights_bytes:
                raise ResourceLimitError(
                    f"weights file {excerpt(relative)!r} is {size} bytes; the limit is "
                    f"{self.config.max_weights_bytes}"
                )
            return path.read_bytes()
        except OSError as exc:  # unreadable: its message would name the server's own path
            raise InvalidInputError(
                f"weights file {excerpt(relative)!r} cannot be read: {_reason(exc)}"
            ) from None

    def export_weights(self, entry: CompiledModel, *, fmt: str = NPZ) -> bytes:
        """The model's weights as a neutral file (`weight_files.NEUTRAL_FORMATS`, .npz by
        default); refused when it could not be sent."""
        size = parameter_bytes(entry.network)
        if size > self.config.max_message_bytes - 1024 * 1024:
            raise ResourceLimitError(
                f"the weights of `{entry.network.name}` take {size:,} bytes, more than this "
                f"server sends in one message ({self.config.max_message_bytes:,}); start it "
                "with a larger --max-message-bytes"
            )
        return write_weights(entry.model.get_weights(), fmt)

    def private_model(self, entry: CompiledModel) -> PrivateModel:
        """A private copy of `entry`'s model (same weights and seed) on the server's device."""
        model = entry.model.private_copy(seed=entry.seed, device=self.config.device)
        model.set_tile_elements(self._tile_elements(model.backend))
        return PrivateModel(model)

    def lookup(self, model_id: str) -> CompiledModel | None:
        return self.cache.get(model_id)

    def plan(
        self,
        entry: CompiledModel,
        *,
        data: np.ndarray | None,
        layer_names: Sequence[str],
        head: int | None,
        sequence_length: int = 0,
        window: tuple[tuple[int, int], tuple[int, int]] | None = None,
        pool_size: int = 0,
        pool_mode: str = "max",
        tiled: bool = False,
    ) -> ExtractPlan:
        """Check the request against the model and the limits before running anything.

        `tiled`: the caller reads each layer tile by tile (`tiles`), so the limits bound one
        tile and the reduced layers; otherwise (`stream`, `run`) they bound a whole layer.
        (The size of a sent input is checked by the caller, before it is decoded.)
        """
        net = entry.network
        attention = list(net.attention_sites)
        if not attention:
            raise NoAttentionLayersError(
                f"network `{net.name}` has no attention layers (TransformerEncoder, "
                "TransformerDecoder, MultiHeadAttention); add one to visualize attention"
            )
        available = [layer.name for _, layer in attention]
        wanted = set(layer_names)  # a request may repeat names: each is looked up once
        unknown = wanted.difference(available)
        if unknown:
            name = next(n for n in layer_names if n in unknown)
            raise LayerNotFoundError(
                f"no attention layer named `{excerpt(name)}` in `{net.name}`; "
                f"attention layers: {', '.join(available)}"
            )
        chosen = tuple((i, layer) for i, layer in attention if not wanted or layer.name in wanted)

        if data is None:
            if sequence_length < 0:
                raise InvalidInputError(f"sequence_length must be positive; got {sequence_length}")
            if sequence_length > self.config.max_sequence_length:
                raise ResourceLimitError(
                    f"sequence_length {sequence_length} is over this server's limit of "
                    f"{self.config.max_sequence_length}"
                )
            # Every limit is checked from the sample's shape before the sample is made.
            shape, _ = sample_shape(net, length=sequence_length or None)
            self._check_input(net, shape)
        else:
            prepare_input(net, data)  # shape, dtype and range errors name the forms that work
            shape = tuple(int(d) for d in data.shape)
        batch, seq = shape[0], shape[1]
        if seq > self.config.max_sequence_length:
            raise ResourceLimitError(
                f"sequence length {seq:,} is over this server's limit of "
                f"{self.config.max_sequence_length:,}"
            )

        for _, layer in chosen:
            heads = int(layer["num_heads"])
            if head is not None and not 0 <= head < heads:
                raise InvalidInputError(
                    f"head {head} does not exist in `{layer.name}`, which has {heads} heads "
                    f"(0..{heads - 1})"
                )
        reduction = Reduction(
            head=head,
            query=window[0] if window else None,
            key=window[1] if window else None,
            pool_size=_pool_size(pool_size),
            pool_mode=_pool_mode(pool_mode),
        )
        for _, layer in chosen:
            _check_window(reduction, attention_length(layer, seq), layer.name)
        kept = {layer.name for _, layer in chosen}
        held = reduction if tiled else None
        self._check_pass(net, entry.model.backend, batch=batch, seq=seq, reduction=held, kept=kept)
        if data is None:
            data = sample_input(net, seed=entry.seed, length=sequence_length or None)
        return ExtractPlan(data, chosen, reduction)

    def tiles(
        self,
        entry: CompiledModel,
        plan: ExtractPlan,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[tuple[int, Layer, Tile], None, None]:
        """One forward pass; yields (index, layer, tile) per planned layer, in model order, as
        soon as the pass has computed it, reduced as planned: a layer computed in one piece,
        or pooled, as one whole tile; a long layer's exact rows as tiles of rows, in order.

        Drop each tile before asking for the next: the pass waits for that, so at most one
        tile exists at a time. `should_stop` is asked between layers and tiles.
        """
        layers = {layer.name: (index, layer) for index, layer in plan.layers}
        stream = entry.model.stream(
            plan.data, capture=layers, reduction=plan.reduction, should_stop=should_stop
        )
        try:
            for name, tile in stream:
                index, layer = layers[name]
                yield index, layer, tile
                del tile
        finally:
            stream.close()

    def stream(
        self,
        entry: CompiledModel,
        plan: ExtractPlan,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[tuple[int, Layer, np.ndarray], None, None]:
        """`tiles`, each layer put together whole: (index, layer, attention) per planned layer,
        for callers that read whole layers (the plan's limits bound one layer).

        Drop each array before asking for the next: at most one layer exists at a time.
        """
        whole: np.ndarray | None = None
        for index, layer, tile in self.tiles(entry, plan, should_stop=should_stop):
            whole = assemble(tile, whole)
            if tile.last:
                attention, whole = whole, None
                yield index, layer, attention
                del attention

    def run(
        self,
        entry: CompiledModel,
        plan: ExtractPlan,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """Every planned layer at once, in model order (for callers that need them together)."""
        return {
            layer.name: attention
            for _, layer, attention in self.stream(entry, plan, should_stop=should_stop)
        }


# Longest weights name a request may give, in characters, and per part (between slashes) in
# UTF-8 bytes: the common file systems' NAME_MAX, well under PATH_MAX with the directory.
MAX_WEIGHTS_NAME_CHARS = 1024
MAX_WEIGHTS_NAME_PART_BYTES = 255


def _check_weights_name(relative: str) -> None:
    """Refuse a name no file system holds before the OS is asked (its refusal would quote the
    server's own path)."""
    longest = max((len(part.encode("utf-8", "replace")) for part in relative.split("/")), default=0)
    if len(relative) > MAX_WEIGHTS_NAME_CHARS or longest > MAX_WEIGHTS_NAME_PART_BYTES:
        raise InvalidInputError(
            f"weights path {excerpt(relative)!r} is too long ({len(relative):,} characters, "
            f"{longest:,} bytes in its longest part): a name under the server's weights "
            f"directory has at most {MAX_WEIGHTS_NAME_CHARS:,} characters and "
            f"{MAX_WEIGHTS_NAME_PART_BYTES} bytes between slashes"
        )


def _reason(exc: Exception) -> str:
    """What the OS said, without the path it was given (the server's own directories)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return excerpt(str(exc), 200)


def _check_window(reduction: Reduction, length: int, name: str) -> None:
    q0, q1, k0, k1 = reduction.window(length, length)
    for axis, start, stop in (("query", q0, q1), ("key", k0, k1)):
        if not 0 <= start < stop <= length:
            raise InvalidInputError(
                f"the {axis} window [{start}, {stop}) does not fit `{name}`, whose attention has "
                f"{length} positions: it needs 0 <= start < stop <= {length} (a stop of 0 means "
                "the end)"
            )


def _pool_size(size: int) -> int:
    if size < 0:
        raise InvalidInputError(f"the pooling target size must be positive; got {size}")
    return size


def _pool_mode(mode: str) -> str:
    if mode not in POOL_MODES:
        raise InvalidInputError(f"pool mode must be one of {', '.join(POOL_MODES)}; got {mode!r}")
    return mode
