"""What each IR layer type is to every backend: the one description both catalogues follow.

For each type in `dsl.layers.LAYER_SPECS`, `NEUTRAL` holds
- `args`: the IR parameters its constructor takes, in the order constructors take them (each
  backend's catalogue adds its own extras: TensorFlow the layer's name, PyTorch the input width);
- `shapes`: its parameters' neutral names and shapes (layouts in `backends.weights`).

A backend's `CATALOGUE` (`backends/tensorflow/catalogue.py`, `backends/pytorch/catalogue.py`)
says, per type, which constructor takes those arguments and where each neutral parameter lives
in the built block. Adding a layer type is its spec in `LAYER_SPECS`, one entry here and one in
each catalogue; tests/backends/test_catalogue.py fails while one is missing.

The parameter maps of the blocks both backends share (dense, norm, attention, the encoder's
composition of them) are written once below, over a backend's way of reaching its variables.
Nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from neural_attn.dsl.ir import Layer
from neural_attn.dsl.layers import LAYER_SPECS
from neural_attn.errors import InvalidInputError

_Entry = TypeVar("_Entry")

WeightShapes = dict[str, tuple[int, ...]]
# A built block -> neutral parameter name -> the framework variable (or tuple of them) holding it.
ParamMap = Callable[[Any], dict[str, Any]]


def no_parameters(block: Any) -> dict[str, Any]:
    """The ParamMap of a block without weights."""
    return {}


def built_by(catalogue: Mapping[str, _Entry], layer: Layer) -> _Entry:
    """`layer`'s entry in a backend's catalogue; a type it lacks is refused by name."""
    try:
        return catalogue[layer.type]
    except KeyError:
        raise InvalidInputError(
            f"layer type {layer.type} (`{layer.name}`) is not built by this server yet"
        ) from None


def width(layer: Layer) -> int:
    """The size of the layer's input's last axis, which its parameters and constructors need."""
    known = layer.input_shape[-1] if layer.input_shape else None
    if known is None:
        raise InvalidInputError(
            f"{layer.type} `{layer.name}` needs a known size of its input's last axis; "
            f"it gets {layer.input_shape}"
        )
    return int(known)


def _no_parameters(layer: Layer) -> WeightShapes:
    return {}


@dataclass(frozen=True)
class NeutralType:
    """One layer type as every backend sees it."""

    args: tuple[str, ...] = ()
    shapes: Callable[[Layer], WeightShapes] = _no_parameters


_FLOAT_KINDS = ("rate", "pos_float", "unit_float")


def arguments(layer: Layer) -> dict[str, Any]:
    """The neutral constructor arguments of one layer (plain literals, floats as floats)."""
    params = {p.name: p for p in LAYER_SPECS[layer.type].params}
    out: dict[str, Any] = {}
    for name in NEUTRAL[layer.type].args:
        param = params.get(name)  # None: set by resolve.py, not by the user (a shortcut)
        if param is None or param.required:
            value = layer[name]
        else:
            value = layer.get(name, param.default)
        kind = param.kind if param is not None else ""
        if kind in _FLOAT_KINDS:
            value = float(value)
        elif kind == "bool":
            value = bool(value)
        out[name] = value
    return out


def layer_weight_shapes(layer: Layer) -> WeightShapes:
    """The parameters of one layer, in a fixed order, without the layer-name prefix."""
    return NEUTRAL[layer.type].shapes(layer)


# ------------------------------------------------------------------------------- shapes


def _dense(prefix: str, fan_in: int, units: int, use_bias: bool = True) -> WeightShapes:
    shapes: WeightShapes = {f"{prefix}kernel": (fan_in, units)}
    if use_bias:
        shapes[f"{prefix}bias"] = (units,)
    return shapes


def _norm(prefix: str, size: int) -> WeightShapes:
    return {f"{prefix}gamma": (size,), f"{prefix}beta": (size,)}


def _attention(prefix: str, d_model: int, heads: int, key_dim: int, use_bias: bool) -> WeightShapes:
    shapes: WeightShapes = {}
    for part in ("query", "key", "value"):
        shapes[f"{prefix}{part}_kernel"] = (d_model, heads, key_dim)
        if use_bias:
            shapes[f"{prefix}{part}_bias"] = (heads, key_dim)
    shapes[f"{prefix}output_kernel"] = (heads, key_dim, d_model)
    if use_bias:
        shapes[f"{prefix}output_bias"] = (d_model,)
    return shapes


def _encoder_shapes(layer: Layer) -> WeightShapes:
    d, heads, ff = width(layer), layer["num_heads"], layer["ff_dim"]
    return {
        **_attention("attention/", d, heads, d // heads, True),
        **_norm("attention_norm/", d),
        **_dense("ffn_1/", d, ff),
        **_dense("ffn_2/", ff, d),
        **_norm("ffn_norm/", d),
    }


def _recurrent_shapes(gates: int) -> Callable[[Layer], WeightShapes]:
    def shapes(layer: Layer) -> WeightShapes:
        units = layer["units"]
        # A GRU (reset_after) has an input and a recurrent bias.
        bias = (2, gates * units) if layer.type == "GRU" else (gates * units,)
        return {
            "kernel": (width(layer), gates * units),
            "recurrent_kernel": (units, gates * units),
            "bias": bias,
        }

    return shapes


def weight_shapes_of(layers: Iterable[Layer]) -> WeightShapes:
    """Every parameter of these layers, keyed ``layer/param``, in their order."""
    return {
        f"{layer.name}/{param}": shape
        for layer in layers
        for param, shape in layer_weight_shapes(layer).items()
    }


def _residual_shapes(layer: Layer) -> WeightShapes:
    return weight_shapes_of(layer.children)


def _conv_shapes(layer: Layer) -> WeightShapes:
    filters = layer["filters"]
    return {"kernel": (*layer["kernel_size"], width(layer), filters), "bias": (filters,)}


def _positional_shapes(layer: Layer) -> WeightShapes:
    d = width(layer)
    return {"embeddings": (layer["max_len"], d)} if layer["kind"] == "learned" else {}


def _dense_shapes(layer: Layer) -> WeightShapes:
    return _dense("", width(layer), layer["units"], layer.get("use_bias", True))


def _attention_shapes(layer: Layer) -> WeightShapes:
    return _attention(
        "", width(layer), layer["num_heads"], layer["key_dim"], layer.get("use_bias", True)
    )


def _batch_norm_shapes(layer: Layer) -> WeightShapes:
    d = width(layer)
    return {**_norm("", d), "moving_mean": (d,), "moving_variance": (d,)}


_CONV = NeutralType(("filters", "kernel_size", "strides", "padding", "activation"), _conv_shapes)
_POOL = NeutralType(("pool_size", "strides", "padding"))
_DENSE = NeutralType(("units", "activation", "use_bias"), _dense_shapes)
_ENCODER = NeutralType(
    ("num_heads", "ff_dim", "dropout", "activation", "norm_first", "epsilon"), _encoder_shapes
)

NEUTRAL: dict[str, NeutralType] = {
    "Embedding": NeutralType(
        ("input_dim", "output_dim"),
        lambda layer: {"embeddings": (layer["input_dim"], layer["output_dim"])},
    ),
    "TransformerEncoder": _ENCODER,
    "TransformerDecoder": _ENCODER,
    "PositionalEncoding": NeutralType(("max_len", "kind"), _positional_shapes),
    "MultiHeadAttention": NeutralType(
        ("num_heads", "key_dim", "dropout", "causal", "use_bias"), _attention_shapes
    ),
    "LayerNormalization": NeutralType(("epsilon",), lambda layer: _norm("", width(layer))),
    "Dense": _DENSE,
    "Output": _DENSE,
    "Dropout": NeutralType(("rate",)),
    "GlobalAveragePooling1D": NeutralType(),
    "GlobalMaxPooling1D": NeutralType(),
    "GlobalAveragePooling2D": NeutralType(),
    "GlobalMaxPooling2D": NeutralType(),
    "Flatten": NeutralType(),
    "BatchNormalization": NeutralType(("momentum", "epsilon"), _batch_norm_shapes),
    "Activation": NeutralType(("activation",)),
    # Its body's constructors go in a `layers` argument that each catalogue writes its own way.
    "ResidualConnection": NeutralType(("shortcut",), _residual_shapes),
    "Conv1D": _CONV,
    "Conv2D": _CONV,
    "MaxPooling1D": _POOL,
    "MaxPooling2D": _POOL,
    "AveragePooling1D": _POOL,
    "AveragePooling2D": _POOL,
    "LSTM": NeutralType(("units", "return_sequences"), _recurrent_shapes(4)),
    "GRU": NeutralType(("units", "return_sequences"), _recurrent_shapes(3)),
    "SimpleRNN": NeutralType(("units", "return_sequences"), _recurrent_shapes(1)),
}


# ------------------------------------------------------------------- shared parameter maps


def linear(kernel: Any, bias: Any | None, prefix: str = "") -> dict[str, Any]:
    """A kernel and its bias (None: the layer has none) under their neutral names."""
    return {f"{prefix}kernel": kernel, **({f"{prefix}bias": bias} if bias is not None else {})}


def attention(part: Callable[[str], tuple[Any, Any | None]]) -> dict[str, Any]:
    """Self-attention's parameters; `part("query")` -> (kernel, bias or None), likewise key,
    value and output."""
    out: dict[str, Any] = {}
    for name in ("query", "key", "value", "output"):
        out.update(linear(*part(name), prefix=f"{name}_"))
    return out


def encoder(*, attention: ParamMap, norm: ParamMap, dense: ParamMap) -> ParamMap:
    """The encoder (and decoder) block's parameters from the maps of its sub-blocks, which both
    backends' blocks call `attention`, `attention_norm`, `ffn_1`, `ffn_2` and `ffn_norm`."""
    parts = (
        ("attention", attention),
        ("attention_norm", norm),
        ("ffn_1", dense),
        ("ffn_2", dense),
        ("ffn_norm", norm),
    )

    def params(block: Any) -> dict[str, Any]:
        return {
            f"{name}/{param}": var
            for name, reach in parts
            for param, var in reach(getattr(block, name)).items()
        }

    return params


def walk(
    layer: Layer,
    block: Any,
    maps: Callable[[str], ParamMap],
    children: Callable[[Any], dict[str, Any]],
    prefix: str = "",
) -> Iterator[tuple[str, Layer, str, Any]]:
    """(key, layer, param, variable) for every parameter of `layer` built as `block`, into a
    residual block's body; `maps(type)` is a catalogue's parameter map, `children(block)` a
    residual block's sub-blocks by layer name."""
    if layer.type == "ResidualConnection":
        inner = children(block)
        for child in layer.children:
            yield from walk(child, inner[child.name], maps, children, f"{prefix}{child.name}/")
        return
    for param, var in maps(layer.type)(block).items():
        yield f"{prefix}{param}", layer, param, var
