"""TensorFlow (Keras 3) backend: builds a `NeuralModel` from the IR and captures attention.

Attention path: `keras.layers.MultiHeadAttention(..., return_attention_scores=True)`, which
computes softmax(Q K^T / sqrt(key_dim)) explicitly (the flash path is skipped when scores are
asked for).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN (TensorFlow's default on x86) halves the CPU pass: MiniLM-L6 at 512 tokens, 206 ms
# without it, 100 ms with it. It orders float sums its own way; attention still equals
# transformers' and the PyTorch backend's to 1e-5 (tests/test_pretrained.py, test_parity.py).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# What TensorFlow's C++ prints to fd 2 as it loads, past TF_CPP_MIN_LOG_LEVEL: notices that
# would break a log of one JSON object per line (the server's --log-format json).
_LOAD_NOTICES = re.compile(
    r"absl::InitializeLog|oneDNN custom operations are on|cpu_feature_guard|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler"
)


@contextmanager
def _load_notices_dropped() -> Iterator[None]:
    """Capture fd 2 while TensorFlow loads; write back every line but its load notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _LOAD_NOTICES.search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


with _load_notices_dropped():
    import keras
    import tensorflow as tf

import numpy as np  # noqa: E402

from neural_attn.backends.base import (  # noqa: E402
    Backend,
    BuiltModel,
    PreparedInput,
    padding_masked_layers,
    sample_input,
)
from neural_attn.backends.codegen import instantiate, render_call, render_module  # noqa: E402
from neural_attn.backends.streaming import Reduction, TileCut  # noqa: E402
from neural_attn.backends.tensorflow import blocks, one_graph  # noqa: E402
from neural_attn.backends.tensorflow.catalogue import constructor, variables  # noqa: E402
from neural_attn.backends.tensorflow.weights import read_keras  # noqa: E402
from neural_attn.backends.weight_files import check_neutral  # noqa: E402
from neural_attn.backends.weights import initial_weights  # noqa: E402
from neural_attn.dsl.ir import Network  # noqa: E402
from neural_attn.errors import InvalidInputError  # noqa: E402
from neural_attn.pooling import block_counts, pooled_length  # noqa: E402

# TF32 matmuls on Ampere+ GPUs round to 10 mantissa bits: attention must be float32-exact.
tf.config.experimental.enable_tensor_float_32_execution(False)

# The names the generated module has: keras and the building blocks.
_NAMESPACE: dict[str, Any] = {"keras": keras, **vars(blocks)}


def _graph(method: Callable[..., Any]) -> Any:
    """`method` as a tf.function, without TensorFlow's "N out of the last N calls triggered
    tf.function retracing" warning: it counts the traces of every function of one Python code
    object, so the first pass of a model of five blocks (each traced once, as designed) or a
    second model compiled printed it for every block after the fifth. A block that really traces
    again shows in the bench, not in a user's terminal. (TensorFlow turns the warning off the
    same way for the functions of a loaded SavedModel.)"""
    compiled = tf.function(method, reduce_retracing=True)
    compiled._omit_frequent_tracing_warning = True
    return compiled


def _compile_calls(layers: list[keras.layers.Layer]) -> None:
    """Each block gets a `compiled_call`, a tf.function of its whole call, which `blocks.apply`
    runs: one graph per block.

    Eagerly, Keras pays Python for every sub-layer and op: MiniLM-L6 at 128 tokens took 98 ms
    that way and 32 ms compiled, the same numbers (to float rounding); compiling the block's
    `__call__`, not only its `call`, also leaves Keras's own bookkeeping to the trace (1.5 of
    a 128-token encoder block's 5.3 ms). Blocks stay separate calls, so `blocks.apply` still
    gates and captures between them, one layer at a time; a residual block's body is compiled
    layer by layer for the same reason. (On a CPU, a pass that `one_graph` can take runs as
    one graph instead.) `reduce_retracing`: after a second sequence length the
    trace is shape-generic, not one per length.
    """
    for layer in layers:
        if isinstance(layer, blocks.ResidualBlock):
            _compile_calls(layer.body)
        else:
            # object.__setattr__: a function is not a layer for Keras to track.
            object.__setattr__(layer, "compiled_call", _graph(layer.__call__))
            # A block whose layer is longer than one tile runs from Python, tile by tile: its
            # projections, each tile and the rest of the block are graphs of their own.
            attention = getattr(layer, "attention", layer)
            if isinstance(attention, blocks.SelfAttention):
                for part in ("project", "tile"):
                    object.__setattr__(
                        attention, f"compiled_{part}", _graph(getattr(attention, part))
                    )
            if isinstance(layer, blocks.TransformerEncoderBlock):
                object.__setattr__(layer, "compiled_rest", _graph(layer.rest))


def _all_layers(layers: list[keras.layers.Layer]) -> Iterator[keras.layers.Layer]:
    """Every block, those inside residual blocks included."""
    for layer in layers:
        yield layer
        if isinstance(layer, blocks.ResidualBlock):
            yield from _all_layers(layer.body)


def _mask_heads(block: Any, mha: Any, mask: np.ndarray) -> Callable[[], None]:
    """Wrap `mha`'s output projection to weigh each head by `mask` [batch, heads]; run `block`
    eagerly meanwhile. Returns what undoes both."""
    compiled, original = getattr(block, "compiled_call", None), mha._output_dense
    object.__setattr__(block, "compiled_call", None)
    weights = keras.ops.convert_to_tensor(mask[:, None, :, None])

    def masked(context: Any, *args: Any, **kwargs: Any) -> Any:
        return original(context * keras.ops.cast(weights, context.dtype), *args, **kwargs)

    # object.__setattr__: a plain function is not a layer for Keras to track.
    object.__setattr__(mha, "_output_dense", masked)

    def undo() -> None:
        object.__setattr__(mha, "_output_dense", original)
        object.__setattr__(block, "compiled_call", compiled)

    return undo


class TensorFlowModel(BuiltModel):
    backend = "tensorflow"
    attention_path = "keras.layers.MultiHeadAttention(return_attention_scores=True)"
    gates_attention = True  # blocks.apply calls capture.gate() before every attention block

    def __init__(
        self,
        network: Network,
        *,
        seed: int,
        device: str,
        weights: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.network = network
        self.device = device
        chosen = initial_weights(network, seed) if weights is None else weights
        sample = sample_input(network, seed=seed, length=2)
        # Keras builds every variable in a first pass. Two positions build the same variables
        # as any length for nearly every network, and a pass at a fixed 16,384 tokens took 23 s
        # (eagerly, before anything is compiled); a network whose variables depend on the
        # length (a Flatten before a Dense) is built again at its own.
        try:
            self.model = self._new_model(sample[:, :2])
            fits = self._fits(chosen)
        except Exception:  # the short pass failed (a kernel longer than two positions)
            fits = False
        if not fits:
            self.model = self._new_model(sample)
        _compile_calls(self.model.blocks)
        # On a CPU, the whole pass as one graph where the network allows (one_graph.py).
        self._runner = self.model
        if self._tf_device == "/CPU:0" and one_graph.fits(network):
            self._runner = one_graph.OneGraph(self.model, _graph)
        self._masking = 0  # head_mask contexts open: their blocks run eagerly, one by one
        self.set_weights(chosen)

    def _new_model(self, sample: np.ndarray) -> Any:
        """The network's Keras model, its variables built by a pass of `sample`."""
        padding = padding_masked_layers(self.network)
        with tf.device(self._tf_device):
            model = blocks.NeuralModel(
                [
                    instantiate(constructor(layer, padding), _NAMESPACE)
                    for layer in self.network.layers
                ],
                name=self.network.name,
            )
            with warnings.catch_warnings():
                # A sample pooled to one position before an attention layer makes Keras warn of
                # a softmax over one key: a warning about this build's sample, not the input.
                warnings.filterwarnings("ignore", message="You are using a softmax over axis")
                model(sample)
        return model

    def _fits(self, weights: dict[str, np.ndarray]) -> bool:
        """Whether every variable has the shape of its neutral weight."""
        variables = self._all_variables()
        return variables.keys() == weights.keys() and all(
            tuple(var.shape) == np.shape(weights[key]) for key, var in variables.items()
        )

    @property
    def _tf_device(self) -> str:
        return "/GPU:0" if self.device.startswith("cuda") else "/CPU:0"

    def parameter_count(self) -> int:
        return int(self.model.count_params())

    def _pass(
        self,
        prepared: PreparedInput,
        capture: Any,
        should_stop: Callable[[], bool] | None,
    ) -> tf.Tensor | None:
        # No lock: passes of one model run side by side, each with its own capture and gate.
        runner = self.model if self._masking else self._runner
        with tf.device(self._tf_device):
            return runner.run(
                tf.convert_to_tensor(prepared.array),
                capture=capture,
                start=prepared.start,
                should_stop=should_stop,
            )

    @contextmanager
    def head_mask(self, masks: Mapping[str, np.ndarray]) -> Iterator[None]:
        """`BuiltModel.head_mask`: each named layer's `MultiHeadAttention._output_dense`, whose
        input is the context [batch, query, heads, key_dim], is wrapped for the duration, and
        the layer's call runs eagerly: a graph traced before the mask would never see it, and
        one traced with it would keep it (`_compile_calls`)."""
        layers = {layer.name: layer for layer in _all_layers(self.model.blocks)}
        undo: list[Callable[[], None]] = []
        self._masking += 1
        try:
            for name, mask in masks.items():
                block = layers.get(name)
                mha = getattr(getattr(block, "attention", block), "mha", None)
                if mha is None:
                    raise InvalidInputError(f"`{name}` is not an attention layer of this model")
                undo.append(_mask_heads(block, mha, np.asarray(mask, np.float32)))
            yield
        finally:
            for restore in reversed(undo):
                restore()
            self._masking -= 1

    def _to_numpy(self, tensor: tf.Tensor, reduction: Reduction | None = None) -> np.ndarray:
        if reduction is not None and not reduction.exact:
            with tf.device(self._tf_device):
                tensor = reduce_attention(tensor, reduction)
        return np.ascontiguousarray(tensor, dtype=np.float32)

    def _cut_to_numpy(self, tile: tf.Tensor, cut: TileCut) -> np.ndarray:
        with tf.device(self._tf_device):
            tile = cut_attention(tile, cut.head, cut.rows, cut.keys, 1, cut.key_block, cut.mode)
        return np.ascontiguousarray(tile, dtype=np.float32)

    def set_tile_elements(self, budget: int) -> None:
        for layer in _all_layers(self.model.blocks):
            attention = getattr(layer, "attention", layer)
            if isinstance(attention, blocks.SelfAttention):
                attention.tile_elements = budget

    def _all_variables(self) -> dict[str, Any]:
        built = {b.name: b for b in self.model.blocks}
        return {
            key: var
            for layer in self.network.layers
            for key, var in variables(layer, built[layer.name]).items()
        }

    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v.numpy()) for k, v in self._all_variables().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        check_neutral(self.network, weights)
        for key, var in self._all_variables().items():
            var.assign(np.asarray(weights[key], dtype=np.float32))

    def generated_code(self, network: Network | None = None) -> str:
        return generate_code(network or self.network)


def generate_code(network: Network) -> str:
    padding = padding_masked_layers(network)
    sample = sample_input(network, length=2)
    lines = [
        "def create_model():",
        '    """The network as a Keras model (random weights), built for INPUT_SHAPE."""',
        "    model = NeuralModel(",
        "        [",
        *(
            f"            {render_call(constructor(layer, padding), 3)},"
            for layer in network.layers
        ),
        "        ],",
        f"        name={network.name!r},",
        "    )",
        "    # Build every variable with a small sample of the input.",
        f"    model(keras.ops.zeros({sample.shape!r}, dtype={str(sample.dtype)!r}))",
        "    return model",
        "",
        "",
        'if __name__ == "__main__":',
        "    create_model().summary()",
    ]
    return render_module(
        backend="tensorflow",
        network=network,
        blocks_modules=[Path(blocks.__file__)],
        body="\n".join(lines),
    )


def reduce_attention(probs: tf.Tensor, reduction: Reduction) -> tf.Tensor:
    """One head, a window and block pooling of [batch, head, query, key], on probs' device."""
    _, _, q_len, k_len = probs.shape
    q0, q1, k0, k1 = reduction.window(q_len, k_len)
    bq, bk = reduction.blocks(q_len, k_len)
    return cut_attention(probs, reduction.head, (q0, q1), (k0, k1), bq, bk, reduction.pool_mode)


def cut_attention(
    probs: tf.Tensor,
    head: int | None,
    query: tuple[int, int],
    key: tuple[int, int],
    bq: int,
    bk: int,
    mode: str,
) -> tf.Tensor:
    """One head (None: all), query rows and keys [start, stop), then blocks of bq x bk pooled
    by `mode` (the last of an axis partial), of [batch, head, query, key]."""
    _, _, q_len, k_len = probs.shape
    if head is not None:
        probs = probs[:, head : head + 1]
    if (*query, *key) != (0, q_len, 0, k_len):
        probs = probs[:, :, query[0] : query[1], key[0] : key[1]]
    if bq == bk == 1:
        return probs
    batch, heads, rows, cols = probs.shape
    out_q, out_k = pooled_length(rows, bq), pooled_length(cols, bk)
    if (out_q * bq, out_k * bk) != (rows, cols):
        return _pool_partial_blocks(probs, bq, bk, mode)
    # One axis at a time: a 6-d reduction over two axes at once copies the layer first.
    reduce = tf.reduce_max if mode == "max" else tf.reduce_sum
    rows_pooled = reduce(tf.reshape(probs, (batch, heads, out_q, bq, out_k * bk)), axis=3)
    pooled = reduce(tf.reshape(rows_pooled, (batch, heads, out_q, out_k, bk)), axis=4)
    if mode == "max":
        return pooled
    return pooled / np.outer(block_counts(rows, bq), block_counts(cols, bk))


def _pool_partial_blocks(probs: tf.Tensor, bq: int, bk: int, mode: str) -> tf.Tensor:
    """Block pooling when the blocks do not divide the lengths, without padding (a copy of the
    layer): the whole blocks in one pooling op over the layer as it is, the partial last row and
    column of blocks (thin slices) in their own, each block's mean over the positions it has."""
    batch, heads, rows, cols = probs.shape
    images = tf.reshape(probs, (batch * heads, rows, cols, 1))  # NHWC, no copy
    pool = tf.nn.max_pool2d if mode == "max" else tf.nn.avg_pool2d
    whole_q, whole_k = rows // bq * bq, cols // bk * bk

    def pooled_row(band: tf.Tensor, height: int) -> tf.Tensor:
        parts = []
        if whole_k:
            parts.append(pool(band, (height, bk), (height, bk), "VALID"))
        if whole_k < cols:
            tail = band[:, :, whole_k:]
            parts.append(pool(tail, (height, cols - whole_k), (height, cols - whole_k), "VALID"))
        return tf.concat(parts, axis=2)

    bands = []
    if whole_q:
        bands.append(pooled_row(images, bq))  # VALID leaves out the partial last rows
    if whole_q < rows:
        bands.append(pooled_row(images[:, whole_q:], rows - whole_q))
    pooled = tf.concat(bands, axis=1)
    return tf.reshape(pooled, (batch, heads, pooled.shape[1], pooled.shape[2]))


class TensorFlowBackend(Backend):
    name = "tensorflow"
    tile_elements = blocks.TILE_ELEMENTS

    def build(
        self,
        network: Network,
        *,
        seed: int,
        device: str = "auto",
        weights: dict[str, np.ndarray] | None = None,
    ) -> BuiltModel:
        return TensorFlowModel(
            network, seed=seed, device=self.resolve_device(device), weights=weights
        )

    def gpu_available(self) -> bool:
        return bool(tf.config.list_physical_devices("GPU"))

    def framework_version(self) -> str:
        return str(tf.__version__)

    def read_weights(
        self, network: Network, content: bytes, fmt: str, *, name: str = ""
    ) -> dict[str, np.ndarray]:
        def scratch() -> TensorFlowModel:
            return TensorFlowModel(network, seed=0, device="cpu")

        return read_keras(network, content, fmt, name, scratch)


BACKEND = TensorFlowBackend()
