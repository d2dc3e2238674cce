"""The TensorFlow catalogue: for each IR layer type, the Keras constructor that builds it and
where its neutral parameters (`backends.neutral`) live in the built layer.

One table, `CATALOGUE`; the constructor takes the type's neutral arguments and the layer's name.
The builder and the code generator both construct layers from `constructor(layer)`. Framework
free: constructors are names in the generated module (keras and `blocks`), variables are read
off built layers by attribute.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from neural_attn.backends import neutral
from neural_attn.backends.codegen import Call, mark_padding
from neural_attn.backends.neutral import ParamMap, no_parameters
from neural_attn.dsl.ir import Layer


@dataclass(frozen=True)
class Entry:
    """How one layer type is built: a constructor name and its parameter map."""

    constructor: str
    parameters: ParamMap = no_parameters


def _dense(block: Any) -> dict[str, Any]:
    return neutral.linear(block.kernel, block.bias if block.use_bias else None)


def _norm(block: Any) -> dict[str, Any]:
    return {"gamma": block.gamma, "beta": block.beta}


def _attention(block: Any) -> dict[str, Any]:
    def part(name: str) -> tuple[Any, Any | None]:
        dense = getattr(block.mha, f"_{name}_dense")
        return dense.kernel, dense.bias if block.use_bias else None

    return neutral.attention(part)


def _conv(block: Any) -> dict[str, Any]:
    return {"kernel": block.kernel, "bias": block.bias}


def _recurrent(block: Any) -> dict[str, Any]:
    cell = block.cell
    return {"kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel, "bias": cell.bias}


def _batch_norm(block: Any) -> dict[str, Any]:
    return {
        **_norm(block),
        "moving_mean": block.moving_mean,
        "moving_variance": block.moving_variance,
    }


def _embeddings(block: Any) -> dict[str, Any]:
    return {"embeddings": block.embeddings}


def _positional(block: Any) -> dict[str, Any]:
    return _embeddings(block) if block.kind == "learned" else {}


_ENCODER = neutral.encoder(attention=_attention, norm=_norm, dense=_dense)

CATALOGUE: dict[str, Entry] = {
    "Embedding": Entry("keras.layers.Embedding", _embeddings),
    "TransformerEncoder": Entry("TransformerEncoderBlock", _ENCODER),
    "TransformerDecoder": Entry("TransformerDecoderBlock", _ENCODER),
    "PositionalEncoding": Entry("PositionalEncoding", _positional),
    "MultiHeadAttention": Entry("SelfAttention", _attention),
    "LayerNormalization": Entry("keras.layers.LayerNormalization", _norm),
    "Dense": Entry("keras.layers.Dense", _dense),
    "Output": Entry("keras.layers.Dense", _dense),
    "Dropout": Entry("keras.layers.Dropout"),
    "GlobalAveragePooling1D": Entry("keras.layers.GlobalAveragePooling1D"),
    "GlobalMaxPooling1D": Entry("keras.layers.GlobalMaxPooling1D"),
    "GlobalAveragePooling2D": Entry("keras.layers.GlobalAveragePooling2D"),
    "GlobalMaxPooling2D": Entry("keras.layers.GlobalMaxPooling2D"),
    "Flatten": Entry("keras.layers.Flatten"),
    "BatchNormalization": Entry("keras.layers.BatchNormalization", _batch_norm),
    "Activation": Entry("keras.layers.Activation"),
    # Its body's parameters are found by `neutral.walk` through `children`.
    "ResidualConnection": Entry("ResidualBlock"),
    "Conv1D": Entry("keras.layers.Conv1D", _conv),
    "Conv2D": Entry("keras.layers.Conv2D", _conv),
    "MaxPooling1D": Entry("keras.layers.MaxPooling1D"),
    "MaxPooling2D": Entry("keras.layers.MaxPooling2D"),
    "AveragePooling1D": Entry("keras.layers.AveragePooling1D"),
    "AveragePooling2D": Entry("keras.layers.AveragePooling2D"),
    "LSTM": Entry("keras.layers.LSTM", _recurrent),
    "GRU": Entry("keras.layers.GRU", _recurrent),
    "SimpleRNN": Entry("keras.layers.SimpleRNN", _recurrent),
}


def _call(layer: Layer) -> Call:
    found = neutral.built_by(CATALOGUE, layer)
    kwargs: dict[str, Any] = {}
    if layer.children:
        kwargs["layers"] = [_call(child) for child in layer.children]
    kwargs.update(neutral.arguments(layer))
    if kwargs.get("activation") == "gelu_tanh" and not found.constructor.startswith("Transformer"):
        # Keras has no name for GPT-2's GELU: Keras layers get the function (blocks.gelu_tanh);
        # the encoder blocks resolve their activation name themselves.
        kwargs["activation"] = Call("activation", {"name": "gelu_tanh"})
    kwargs["name"] = layer.name
    return Call(found.constructor, kwargs)


def constructor(layer: Layer, padding: Collection[str] = ()) -> Call:
    """The constructor call for one IR layer; used by the builder and the code writer alike."""
    return mark_padding(_call(layer), layer, padding)


def variables(layer: Layer, block: Any) -> dict[str, Any]:
    """Neutral key (`layer/param`) -> Keras variable, for one top-level layer built as `block`."""
    return {
        key: var
        for key, _, _, var in neutral.walk(
            layer,
            block,
            lambda kind: CATALOGUE[kind].parameters,
            lambda residual: {sub.name: sub for sub in residual.body},
            f"{layer.name}/",
        )
    }
