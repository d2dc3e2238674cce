"""The layer registry: per canonical layer type its parameters (positional order, defaults,
value checks) and its shape function.

Shapes are per item (no batch dimension); ``None`` is a dynamic length. A shape function takes
the bound parameters and the input shape and returns the output shape, raising ``ShapeError``
with words a person understands. It may fill in a parameter that depends on the input (the
resolved ``key_dim`` of MultiHeadAttention).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ir import Name, Shape
from .values import ACTIVATIONS, ParamError, convert

__all__ = [
    "ACTIVATIONS",
    "LAYER_SPECS",
    "REQUIRED",
    "LayerSpec",
    "Param",
    "ParamError",
    "ShapeContext",
    "ShapeError",
    "format_shape",
    "snake_case",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One parameter: its canonical name, the kind of value it takes and its default."""

    name: str
    kind: str  # a key of values.CONVERTERS, or "choice" (one of `choices`)
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def convert(self, value: Any) -> Any:
        if self.kind == "choice":
            return _choice(self.choices, value)
        return convert(self.kind, value)


def _choice(choices: tuple[str, ...], value: Any) -> str:
    word = value.name if isinstance(value, Name) else value
    if not isinstance(word, str):
        raise ParamError(" or ".join(f'"{c}"' for c in choices))
    if word.lower() not in choices:
        close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
        raise ParamError(
            " or ".join(f'"{c}"' for c in choices),
            f"choose one of {', '.join(choices)}",
            unknown=word,
            suggestion=close[0] if close else None,
        )
    return word.lower()


class ShapeError(Exception):
    """A layer cannot take the shape it is given; ``message`` is complete, ``hint`` optional."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class ShapeContext:
    """What a shape function needs to word its errors."""

    type: str
    name: str  # this layer's name
    source: str  # "`conv2d_0` gives (26, 26, 32)" or "the input is (28, 28, 1)"
    first: bool  # first layer of the network

    def need(self, what: str, hint: str | None = None) -> ShapeError:
        return ShapeError(f"{self.type} needs {what} but {self.source}", hint)


ShapeFn = Callable[[dict[str, Any], Shape, ShapeContext], Shape]


@dataclass(frozen=True)
class LayerSpec:
    """A canonical layer type: parameters in positional order and the shape function."""

    type: str
    params: tuple[Param, ...]
    shape: ShapeFn
    snake: str
    has_body: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def signature(self) -> str:
        parts = [p.name if p.required else f"{p.name}={_py(p.default)}" for p in self.params]
        return f"{self.type}({', '.join(parts)})"


def snake_case(type_name: str) -> str:
    """Keras's rule: ``GlobalAveragePooling1D`` -> ``global_average_pooling1d``."""
    step = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", type_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", step).lower()


def format_shape(shape: Shape) -> str:
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _py(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


# ---------------------------------------------------------------------------------- shapes


def _same(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    return shape


def _dense(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    if shape[-1] is None:
        raise ctx.need("a known number of features in the last axis")
    return (*shape[:-1], p["units"])


def _embedding(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    # The caller has already reduced a declared (seq, output_dim) input to token ids (seq,).
    if len(shape) != 1:
        raise ctx.need("token ids of shape (steps,)")
    return (shape[0], p["output_dim"])


def _sequence(ctx: ShapeContext, shape: Shape) -> int:
    if len(shape) != 2:
        raise ctx.need("a (steps, features) input")
    if shape[1] is None:
        raise ctx.need("a known number of features")
    return shape[1]


def _heads(ctx: ShapeContext, heads: int, width: int) -> None:
    if width % heads:
        divisors = [n for n in range(1, min(width, 64) + 1) if width % n == 0]
        raise ShapeError(
            f"num_heads={heads} does not divide the model width {width} of {ctx.type} "
            f"`{ctx.name}` ({ctx.source})",
            f"{width} features cannot be split across {heads} heads; "
            f"pick num_heads among {', '.join(map(str, divisors))}",
        )


def _transformer(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    _heads(ctx, p["num_heads"], _sequence(ctx, shape))
    return shape


def _attention(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    width = _sequence(ctx, shape)
    if p["key_dim"] is None:
        _heads(ctx, p["num_heads"], width)
        p["key_dim"] = width // p["num_heads"]
    return shape


def _positional(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    _sequence(ctx, shape)
    steps, max_len = shape[0], p["max_len"]
    if max_len is not None and steps is not None and steps > max_len:
        raise ShapeError(
            f"PositionalEncoding `{ctx.name}` covers max_len={max_len} positions but the "
            f"sequence has {steps} ({ctx.source})",
            "raise max_len, or leave it out so that it follows the sequence length",
        )
    if max_len is None:
        if steps is None and p["kind"] == "learned":
            raise ctx.need(
                "a fixed sequence length or max_len (a learned encoding has one row per position)",
                'give PositionalEncoding(max_len=N, kind="learned") or declare a fixed length '
                "in `input:`",
            )
        p["max_len"] = steps
    return shape


def _global1d(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    if len(shape) != 2:
        raise ctx.need("a (steps, features) input")
    return (shape[1],)


def _global2d(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    if len(shape) != 3:
        raise ctx.need("a (height, width, channels) input")
    return (shape[2],)


def _flatten(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    if any(d is None for d in shape):
        raise ctx.need(
            "fixed sizes on every axis",
            "a dynamic length (None) has no fixed product; pool over it instead "
            "(GlobalAveragePooling1D) or declare a fixed length in `input:`",
        )
    return (math.prod(d for d in shape if d is not None),)


def _window(n: int | None, size: int, stride: int, padding: str, ctx: ShapeContext) -> int | None:
    if n is None:
        return None
    if padding == "same":
        return -(-n // stride)
    if n < size:
        raise ShapeError(
            f"{ctx.type} `{ctx.name}`: the window {size} is larger than the input size {n} "
            f"({ctx.source})",
            'use padding="same" or a smaller window',
        )
    return (n - size) // stride + 1


def _spatial(dims: int, size_key: str) -> ShapeFn:
    what = "a (steps, channels) input" if dims == 1 else "a (height, width, channels) input"

    def shape_fn(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
        if len(shape) != dims + 1:
            raise ctx.need(what)
        size = p[size_key]
        strides = p["strides"] if p["strides"] is not None else size
        out = [_window(shape[i], size[i], strides[i], p["padding"], ctx) for i in range(dims)]
        channels = p["filters"] if "filters" in p else shape[-1]
        if channels is None:
            raise ctx.need("a known number of channels")
        return (*out, channels)

    return shape_fn


def _recurrent(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    _sequence(ctx, shape)
    return (shape[0], p["units"]) if p["return_sequences"] else (p["units"],)


def _body_only(p: dict[str, Any], shape: Shape, ctx: ShapeContext) -> Shape:
    raise ShapeError(f"{ctx.type} takes its shape from its body")  # resolve.py handles it


# ---------------------------------------------------------------------------------- registry


def _spec(type_name: str, shape: ShapeFn, *params: Param, has_body: bool = False) -> LayerSpec:
    return LayerSpec(type_name, params, shape, snake_case(type_name), has_body)


_ACT = Param("activation", "activation", None)
# The encoder's and decoder's LayerNorms: after each residual sum (post-norm, the default) or
# before each sub-layer (norm_first, GPT-2's pre-norm), with their epsilon (BERT 1e-12, GPT-2 1e-5).
_BLOCK_NORM = (Param("norm_first", "bool", False), Param("epsilon", "pos_float", 1e-6))
_SPECS = [
    _spec(
        "Embedding",
        _embedding,
        Param("input_dim", "pos_int"),
        Param("output_dim", "pos_int"),
        Param("mask_zero", "bool", False),
    ),
    _spec(
        "TransformerEncoder",
        _transformer,
        Param("num_heads", "pos_int"),
        Param("ff_dim", "pos_int"),
        Param("dropout", "rate", 0.1),
        Param("num_layers", "pos_int", 1),
        Param("activation", "activation", "relu"),
        Param("use_attention_mask", "bool", False),
        *_BLOCK_NORM,
    ),
    _spec(
        "TransformerDecoder",
        _transformer,
        Param("num_heads", "pos_int"),
        Param("ff_dim", "pos_int"),
        Param("dropout", "rate", 0.1),
        Param("num_layers", "pos_int", 1),
        Param("activation", "activation", "relu"),
        *_BLOCK_NORM,
    ),
    _spec(
        "PositionalEncoding",
        _positional,
        Param("max_len", "opt_pos_int", None),
        Param("kind", "choice", "sinusoidal", choices=("sinusoidal", "learned")),
    ),
    _spec(
        "MultiHeadAttention",
        _attention,
        Param("num_heads", "pos_int"),
        Param("key_dim", "opt_pos_int", None),
        Param("dropout", "rate", 0.0),
        Param("causal", "bool", False),
        Param("use_bias", "bool", True),
    ),
    _spec("LayerNormalization", _same, Param("epsilon", "pos_float", 0.001)),
    _spec("Dense", _dense, Param("units", "pos_int"), _ACT, Param("use_bias", "bool", True)),
    _spec("Output", _dense, Param("units", "pos_int"), _ACT, Param("use_bias", "bool", True)),
    _spec("Dropout", _same, Param("rate", "rate")),
    _spec("GlobalAveragePooling1D", _global1d),
    _spec("GlobalMaxPooling1D", _global1d),
    _spec("GlobalAveragePooling2D", _global2d),
    _spec("GlobalMaxPooling2D", _global2d),
    _spec("Flatten", _flatten),
    _spec(
        "BatchNormalization",
        _same,
        Param("momentum", "unit_float", 0.99),
        Param("epsilon", "pos_float", 0.001),
    ),
    _spec("Activation", _same, Param("activation", "activation")),
    # No user parameters; the resolved layer carries params (("shortcut", "identity" |
    # "projection"),): out = body(x) + x, or body(x) + children[-1](x) where the last child
    # is the projection applied to the block's input (resolve.py, _residual).
    _spec("ResidualConnection", _body_only, has_body=True),
]
for _dims in (1, 2):
    _SPECS.append(
        _spec(
            f"Conv{_dims}D",
            _spatial(_dims, "kernel_size"),
            Param("filters", "pos_int"),
            Param("kernel_size", f"size{_dims}"),
            Param("strides", f"size{_dims}", (1,) * _dims),
            Param("padding", "padding", "valid"),
            _ACT,
        )
    )
    for _kind in ("Max", "Average"):
        _SPECS.append(
            _spec(
                f"{_kind}Pooling{_dims}D",
                _spatial(_dims, "pool_size"),
                Param("pool_size", f"size{_dims}"),
                Param("strides", f"opt_size{_dims}", None),
                Param("padding", "padding", "valid"),
            )
        )
for _rnn in ("LSTM", "GRU", "SimpleRNN"):
    _SPECS.append(
        _spec(_rnn, _recurrent, Param("units", "pos_int"), Param("return_sequences", "bool", False))
    )

LAYER_SPECS: dict[str, LayerSpec] = {spec.type: spec for spec in _SPECS}

# Layers that would run user code; the server never executes user text.
UNSAFE_LAYERS = frozenset({"Lambda", "TFOpLambda", "CustomLayer", "PythonFunction"})
