"""TensorFlow (Keras 3) backend: builds a `NeuralModel` from the IR and captures attention.

Attention path: `keras.layers.MultiHeadAttention(..., return_attention_scores=True)`, which
computes softmax(Q K^T / sqrt(key_dim)) explicitly (the flash path is skipped when scores are
asked for).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN reorders float sums; off, CPU results match the PyTorch backend more closely.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from neural_attn.backends import tf_layers  # noqa: E402
from neural_attn.backends.base import (  # noqa: E402
    Backend,
    BuiltModel,
    PreparedInput,
    padding_masked_layers,
    sample_input,
)
from neural_attn.backends.codegen import Call, instantiate, mark_padding, render_call, render_module  # noqa: E402
from neural_attn.backends.info import resolve_device  # noqa: E402
from neural_attn.backends.streaming import Reduction, block_counts  # noqa: E402
from neural_attn.backends.weight_files import check_neutral  # noqa: E402
from neural_attn.backends.weights import initial_weights  # noqa: E402
from neural_attn.dsl.ir import Layer, Network  # noqa: E402
from neural_attn.errors import InvalidInputError  # noqa: E402

# TF32 matmuls on Ampere+ GPUs round to 10 mantissa bits: attention must be float32-exact.
tf.config.experimental.enable_tensor_float_32_execution(False)

_SIMPLE = {
    "Dropout": "keras.layers.Dropout",
    "GlobalAveragePooling1D": "keras.layers.GlobalAveragePooling1D",
    "GlobalMaxPooling1D": "keras.layers.GlobalMaxPooling1D",
    "GlobalAveragePooling2D": "keras.layers.GlobalAveragePooling2D",
    "GlobalMaxPooling2D": "keras.layers.GlobalMaxPooling2D",
    "Flatten": "keras.layers.Flatten",
}
_POOLS = ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D")


def constructor(layer: Layer, padding: Collection[str] = ()) -> Call:
    """The constructor call for one IR layer; used by the builder and the code writer alike."""
    return mark_padding(_constructor(layer), layer, padding)


def _constructor(layer: Layer) -> Call:
    """The Keras constructor call for one IR layer (used by the builder and the code writer)."""
    name = {"name": layer.name}
    kind = layer.type
    if kind in ("Conv1D", "Conv2D"):
        return Call(
            f"keras.layers.{kind}",
            {
                "filters": layer["filters"],
                "kernel_size": layer["kernel_size"],
                "strides": layer["strides"],
                "padding": layer["padding"],
                "activation": layer["activation"],
                **name,
            },
        )
    if kind in _POOLS:
        return Call(
            f"keras.layers.{kind}",
            {
                "pool_size": layer["pool_size"],
                "strides": layer["strides"],
                "padding": layer["padding"],
                **name,
            },
        )
    if kind == "BatchNormalization":
        return Call(
            "keras.layers.BatchNormalization",
            {"momentum": float(layer["momentum"]), "epsilon": float(layer["epsilon"]), **name},
        )
    if kind == "Activation":
        return Call("keras.layers.Activation", {"activation": layer["activation"], **name})
    if kind in ("LSTM", "GRU", "SimpleRNN"):
        return Call(
            f"keras.layers.{kind}",
            {"units": layer["units"], "return_sequences": layer["return_sequences"], **name},
        )
    if kind == "ResidualConnection":
        return Call(
            "ResidualBlock",
            {
                "layers": [constructor(child) for child in layer.children],
                "shortcut": layer["shortcut"],
                **name,
            },
        )
    if kind == "PositionalEncoding":
        return Call(
            "PositionalEncoding", {"max_len": layer["max_len"], "kind": layer["kind"], **name}
        )
    if kind == "TransformerDecoder":
        return Call(
            "TransformerDecoderBlock",
            {
                "num_heads": layer["num_heads"],
                "ff_dim": layer["ff_dim"],
                "dropout": float(layer["dropout"]),
                "activation": layer["activation"],
                **name,
            },
        )
    return Call(*_core(layer))


def _core(layer: Layer) -> tuple[str, dict[str, Any]]:
    name = {"name": layer.name}
    kind = layer.type
    if kind in ("Dense", "Output"):
        return "keras.layers.Dense", {
            "units": layer["units"],
            "activation": layer["activation"],
            "use_bias": layer.get("use_bias", True),
            **name,
        }
    if kind == "Embedding":
        return "keras.layers.Embedding", {
            "input_dim": layer["input_dim"],
            "output_dim": layer["output_dim"],
            **name,
        }
    if kind == "LayerNormalization":
        return "keras.layers.LayerNormalization", {"epsilon": float(layer["epsilon"]), **name}
    if kind == "Dropout":
        return _SIMPLE[kind], {"rate": float(layer["rate"]), **name}
    if kind == "TransformerEncoder":
        return "TransformerEncoderBlock", {
            "num_heads": layer["num_heads"],
            "ff_dim": layer["ff_dim"],
            "dropout": float(layer["dropout"]),
            "activation": layer["activation"],
            **name,
        }
    if kind == "MultiHeadAttention":
        return "SelfAttention", {
            "num_heads": layer["num_heads"],
            "key_dim": layer["key_dim"],
            "dropout": float(layer["dropout"]),
            "causal": bool(layer["causal"]),
            "use_bias": bool(layer.get("use_bias", True)),
            **name,
        }
    if kind in _SIMPLE:
        return _SIMPLE[kind], name
    raise InvalidInputError(f"layer type {kind} (`{layer.name}`) is not built by this server yet")


# The names the generated module has: keras and the building blocks.
_NAMESPACE: dict[str, Any] = {"keras": keras, **vars(tf_layers)}


def _variables(layer: Layer, block: Any) -> dict[str, Any]:
    """Neutral parameter name -> Keras variable, for one layer."""

    def attention(prefix: str, sa: Any) -> dict[str, Any]:
        out = {}
        for part in ("query", "key", "value", "output"):
            dense = getattr(sa.mha, f"_{part}_dense")
            out[f"{prefix}{part}_kernel"] = dense.kernel
            if sa.use_bias:
                out[f"{prefix}{part}_bias"] = dense.bias
        return out

    def dense(prefix: str, d: Any) -> dict[str, Any]:
        return {f"{prefix}kernel": d.kernel, **({f"{prefix}bias": d.bias} if d.use_bias else {})}

    def norm(prefix: str, n: Any) -> dict[str, Any]:
        return {f"{prefix}gamma": n.gamma, f"{prefix}beta": n.beta}

    kind = layer.type
    if kind == "ResidualConnection":
        sublayers = {sub.name: sub for sub in block.body}
        return {
            f"{child.name}/{param}": var
            for child in layer.children
            for param, var in _variables(child, sublayers[child.name]).items()
        }
    if kind in ("Conv1D", "Conv2D"):
        return {"kernel": block.kernel, "bias": block.bias}
    if kind == "BatchNormalization":
        return {
            **norm("", block),
            "moving_mean": block.moving_mean,
            "moving_variance": block.moving_variance,
        }
    if kind in ("LSTM", "GRU", "SimpleRNN"):
        cell = block.cell
        return {"kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel, "bias": cell.bias}
    if kind == "PositionalEncoding":
        return {"embeddings": block.embeddings} if layer["kind"] == "learned" else {}
    if kind in ("Dense", "Output"):
        return dense("", block)
    if kind == "Embedding":
        return {"embeddings": block.embeddings}
    if kind == "LayerNormalization":
        return norm("", block)
    if kind == "MultiHeadAttention":
        return attention("", block)
    if kind in ("TransformerEncoder", "TransformerDecoder"):
        return {
            **attention("attention/", block.attention),
            **norm("attention_norm/", block.attention_norm),
            **dense("ffn_1/", block.ffn_1),
            **dense("ffn_2/", block.ffn_2),
            **norm("ffn_norm/", block.ffn_norm),
        }
    return {}


class TensorFlowModel(BuiltModel):
    backend = "tensorflow"
    attention_path = "keras.layers.MultiHeadAttention(return_attention_scores=True)"

    def __init__(self, network: Network, *, seed: int, device: str) -> None:
        padding = padding_masked_layers(network)
        self.network = network
        self.device = device
        self._lock = threading.Lock()
        with tf.device(self._tf_device):
            self.model = tf_layers.NeuralModel(
                [instantiate(constructor(layer, padding), _NAMESPACE) for layer in network.layers],
                name=network.name,
            )
            self.model(sample_input(network, seed=seed, length=2))  # builds every variable
        self.set_weights(initial_weights(network, seed))

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
        with self._lock, tf.device(self._tf_device):
            return self.model.run(
                tf.convert_to_tensor(prepared.array),
                capture=capture,
                start=prepared.start,
                should_stop=should_stop,
            )

    def _to_numpy(self, tensor: tf.Tensor, reduction: Reduction | None = None) -> np.ndarray:
        if reduction is not None and not reduction.exact:
            with tf.device(self._tf_device):
                tensor = reduce_attention(tensor, reduction)
        return np.ascontiguousarray(tensor, dtype=np.float32)

    def _all_variables(self) -> dict[str, Any]:
        blocks = {b.name: b for b in self.model.blocks}
        return {
            f"{layer.name}/{param}": var
            for layer in self.network.layers
            for param, var in _variables(layer, blocks[layer.name]).items()
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
        blocks_modules=[Path(tf_layers.__file__)],
        body="\n".join(lines),
    )


def reduce_attention(probs: tf.Tensor, reduction: Reduction) -> tf.Tensor:
    """One head, a window and block pooling of [batch, head, query, key], on probs' device."""
    _, _, q_len, k_len = probs.shape
    if reduction.head is not None:
        probs = probs[:, reduction.head : reduction.head + 1]
    q0, q1, k0, k1 = reduction.window(q_len, k_len)
    if (q0, q1, k0, k1) != (0, q_len, 0, k_len):
        probs = probs[:, :, q0:q1, k0:k1]
    bq, bk = reduction.blocks(q_len, k_len)
    if bq == bk == 1:
        return probs
    batch, heads, rows, cols = probs.shape
    out_q, out_k = -(-rows // bq), -(-cols // bk)
    if (out_q * bq, out_k * bk) != (rows, cols):
        # Zero padding changes neither a block's maximum nor its sum: probabilities are >= 0.
        # (It copies the layer: lengths that the block divides need no copy.)
        probs = tf.pad(probs, [[0, 0], [0, 0], [0, out_q * bq - rows], [0, out_k * bk - cols]])
    # One axis at a time: a 6-d reduction over two axes at once copies the layer first.
    reduce = tf.reduce_max if reduction.pool_mode == "max" else tf.reduce_sum
    rows_pooled = reduce(tf.reshape(probs, (batch, heads, out_q, bq, out_k * bk)), axis=3)
    pooled = reduce(tf.reshape(rows_pooled, (batch, heads, out_q, out_k, bk)), axis=4)
    if reduction.pool_mode == "max":
        return pooled
    return pooled / np.outer(block_counts(rows, bq), block_counts(cols, bk))


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def build(self, network: Network, *, seed: int, device: str = "auto") -> BuiltModel:
        return TensorFlowModel(network, seed=seed, device=resolve_device(self.name, device))


BACKEND = TensorFlowBackend()
