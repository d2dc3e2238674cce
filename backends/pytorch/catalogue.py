"""The PyTorch catalogue: for each IR layer type, the torch constructor that builds it and
where its neutral parameters (`backends.neutral`) live in the built module.

One table, `CATALOGUE`; the constructor takes the type's neutral arguments (some under torch's
own keywords, `rename`), after the input width when it needs one (`width`, its keyword). Each
parameter is stored in torch's layout (`layout`, see `backends.pytorch.weights`). The builder and
the code generator both construct modules from `constructor(layer)`. Framework free:
constructors are names in the generated module (`nn` and the blocks modules), parameters are read
off built modules by attribute.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from neural_attn.backends import neutral
from neural_attn.backends.codegen import Call, mark_padding
from neural_attn.backends.neutral import ParamMap, no_parameters
from neural_attn.dsl.ir import Layer

# How neutral arrays become torch tensors (`weights.to_torch`): a kernel (in, out) becomes a
# Linear weight (out, in) unless the layer is a convolution or a GRU.
LINEAR, CONV, GRU = "linear", "conv", "gru"


@dataclass(frozen=True)
class Entry:
    """How one layer type is built: a constructor name, its keywords, its parameter map."""

    constructor: str
    parameters: ParamMap = no_parameters
    width: str | None = None  # the keyword that takes the input's last axis, if any
    rename: Mapping[str, str] = field(default_factory=dict)  # neutral argument -> keyword
    layout: str = LINEAR


def _dense(block: Any) -> dict[str, Any]:
    return neutral.linear(block.linear.weight, block.linear.bias)


def _norm(block: Any) -> dict[str, Any]:
    return {"gamma": block.weight, "beta": block.bias}


def _attention(block: Any) -> dict[str, Any]:
    def part(name: str) -> tuple[Any, Any | None]:
        linear = getattr(block, name)
        return linear.weight, linear.bias

    return neutral.attention(part)


def _conv(block: Any) -> dict[str, Any]:
    return {"kernel": block.conv.weight, "bias": block.conv.bias}


def _recurrent(block: Any) -> dict[str, Any]:
    return {"kernel": block.weight_ih, "recurrent_kernel": block.weight_hh, "bias": block.bias}


def _gru(block: Any) -> dict[str, Any]:
    gru = block.gru
    return {
        "kernel": gru.weight_ih_l0,
        "recurrent_kernel": gru.weight_hh_l0,
        "bias": (gru.bias_ih_l0, gru.bias_hh_l0),
    }


def _batch_norm(block: Any) -> dict[str, Any]:
    return {
        "gamma": block.gamma,
        "beta": block.beta,
        "moving_mean": block.moving_mean,
        "moving_variance": block.moving_variance,
    }


def _positional(block: Any) -> dict[str, Any]:
    return {"embeddings": block.embeddings} if block.kind == "learned" else {}


_ENCODER = neutral.encoder(attention=_attention, norm=_norm, dense=_dense)

CATALOGUE: dict[str, Entry] = {
    "Embedding": Entry(
        "nn.Embedding",
        lambda block: {"embeddings": block.weight},
        rename={"input_dim": "num_embeddings", "output_dim": "embedding_dim"},
    ),
    "TransformerEncoder": Entry("TransformerEncoderBlock", _ENCODER, width="d_model"),
    "TransformerDecoder": Entry("TransformerDecoderBlock", _ENCODER, width="d_model"),
    "PositionalEncoding": Entry("PositionalEncoding", _positional, width="d_model"),
    "MultiHeadAttention": Entry("SelfAttention", _attention, width="d_model"),
    "LayerNormalization": Entry(
        "nn.LayerNorm", _norm, width="normalized_shape", rename={"epsilon": "eps"}
    ),
    "Dense": Entry("Dense", _dense, width="in_features"),
    "Output": Entry("Dense", _dense, width="in_features"),
    "Dropout": Entry("nn.Dropout", rename={"rate": "p"}),
    "GlobalAveragePooling1D": Entry("GlobalAveragePooling1D"),
    "GlobalMaxPooling1D": Entry("GlobalMaxPooling1D"),
    "GlobalAveragePooling2D": Entry("GlobalAveragePooling2D"),
    "GlobalMaxPooling2D": Entry("GlobalMaxPooling2D"),
    "Flatten": Entry("nn.Flatten"),
    "BatchNormalization": Entry("BatchNormalization", _batch_norm, width="num_features"),
    "Activation": Entry("Activation"),
    # Its body's parameters are found by `neutral.walk` through `children`.
    "ResidualConnection": Entry("Residual"),
    "Conv1D": Entry("Conv1D", _conv, width="in_channels", layout=CONV),
    "Conv2D": Entry("Conv2D", _conv, width="in_channels", layout=CONV),
    "MaxPooling1D": Entry("MaxPooling1D"),
    "MaxPooling2D": Entry("MaxPooling2D"),
    "AveragePooling1D": Entry("AveragePooling1D"),
    "AveragePooling2D": Entry("AveragePooling2D"),
    "LSTM": Entry("LSTM", _recurrent, width="input_size"),
    "GRU": Entry("GRU", _gru, width="input_size", layout=GRU),
    "SimpleRNN": Entry("SimpleRNN", _recurrent, width="input_size"),
}


def _call(layer: Layer) -> Call:
    found = neutral.built_by(CATALOGUE, layer)
    kwargs: dict[str, Any] = {}
    if layer.children:
        kwargs["layers"] = [(child.name, _call(child)) for child in layer.children]
    if found.width is not None:
        kwargs[found.width] = neutral.width(layer)
    for name, value in neutral.arguments(layer).items():
        kwargs[found.rename.get(name, name)] = value
    return Call(found.constructor, kwargs)


def constructor(layer: Layer, padding: Collection[str] = ()) -> Call:
    """The constructor call for one IR layer; used by the builder and the code writer alike."""
    return mark_padding(_call(layer), layer, padding)


def parameters(layer: Layer, block: Any) -> dict[str, tuple[str, Any]]:
    """Neutral key (`layer/param`) -> (layout, torch tensor or tuple of them), for one
    top-level layer built as `block`."""
    return {
        key: (CATALOGUE[inner.type].layout, tensors)
        for key, inner, _, tensors in neutral.walk(
            layer,
            block,
            lambda kind: CATALOGUE[kind].parameters,
            lambda residual: dict(residual.layers.items()),
            f"{layer.name}/",
        )
    }
