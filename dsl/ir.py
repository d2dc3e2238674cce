"""The typed model IR: frozen dataclasses holding tuples, every node with its source position.

Two layers of IR:
- the *syntax* nodes (``LayerCall``, ``NetworkDecl``, ``Program``) are the file as written;
- the *resolved* nodes (``Layer``, ``Network``) are what backends build: macros and ``* N``
  expanded, positional arguments bound to parameter names, defaults filled in, HPO expressions
  replaced by a concrete value (the search space kept beside it), names assigned and per-item
  shapes inferred (shapes never include the batch dimension; ``None`` is a dynamic length).

Nothing here imports lark; no lark ``Tree``/``Token`` ever reaches these nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

Shape: TypeAlias = tuple[int | None, ...]


@dataclass(frozen=True)
class Pos:
    """A source position: 1-based line and column."""

    line: int
    column: int


@dataclass(frozen=True)
class Name:
    """An unquoted identifier used as a value, e.g. ``activation=relu`` or ``optimizer: Adam``."""

    name: str
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Call:
    """A call used as a value, e.g. ``Adam(learning_rate=1e-3)`` or ``ExponentialDecay(...)``."""

    func: str
    args: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HPO:
    """A hyper-parameter search space: ``HPO(choice(...))``, ``HPO(range(a, b, step=s))``,
    ``HPO(log_range(a, b))``. ``default`` is the concrete value a visualization build takes."""

    kind: str  # "choice" | "range" | "log_range"
    args: tuple[Value, ...]
    kwargs: tuple[tuple[str, Value], ...]
    default: Value
    pos: Pos | None = field(default=None, compare=False)


# A value as written: numbers, strings, booleans, None, tuples/lists, names, calls, HPO.
Value: TypeAlias = int | float | str | bool | None | tuple[Any, ...] | Name | Call | HPO


@dataclass(frozen=True)
class Arg:
    """One argument as written: ``name`` is None for a positional one."""

    name: str | None
    value: Value
    pos: Pos


@dataclass(frozen=True)
class LayerCall:
    """A layer (or macro use) as written, before expansion."""

    type: str
    args: tuple[Arg, ...]
    pos: Pos
    repeat: int = 1
    children: tuple[LayerCall, ...] = ()
    device: str | None = None
    has_parens: bool = True


@dataclass(frozen=True)
class Macro:
    """``define Name { ... }``."""

    name: str
    body: tuple[LayerCall, ...]
    pos: Pos


@dataclass(frozen=True)
class NetworkDecl:
    """A ``network Name { ... }`` block as written."""

    name: str
    pos: Pos
    input_shape: tuple[Value, ...]
    input_pos: Pos
    layers: tuple[LayerCall, ...]
    # Every other section (loss, optimizer, metrics, train, execution, ...) in file order.
    sections: tuple[tuple[str, Value, Pos], ...] = ()


@dataclass(frozen=True)
class Program:
    """A whole parsed file."""

    filename: str
    source: str
    macros: tuple[Macro, ...]
    networks: tuple[NetworkDecl, ...]


@dataclass(frozen=True)
class Layer:
    """A resolved layer, ready to build.

    ``params`` holds every parameter of the layer type by its canonical name, defaults filled in,
    concrete values only (HPO replaced by its default; the search space is in ``search_space``).
    """

    name: str  # e.g. "transformer_encoder_0"; the same in every backend
    type: str  # canonical type, e.g. "TransformerEncoder"
    params: tuple[tuple[str, Any], ...]
    pos: Pos
    input_shape: Shape
    output_shape: Shape
    children: tuple[Layer, ...] = ()
    device: str | None = None
    search_space: tuple[tuple[str, HPO], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        return default

    def __getitem__(self, key: str) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        raise KeyError(f"{self.type} has no parameter {key!r}")

    @property
    def is_attention(self) -> bool:
        return self.type in ATTENTION_TYPES

    def walk(self) -> Iterator[Layer]:
        """This layer, then every layer inside it (ResidualConnection bodies), in file order."""
        yield from walk_layers((self,))

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)


def walk_layers(layers: Iterable[Layer]) -> Iterator[Layer]:
    """Every layer of `layers` and inside them, depth first, in file order (the one IR walk)."""
    for layer in layers:
        yield layer
        yield from walk_layers(layer.children)


# Layer types whose forward pass produces attention probabilities.
ATTENTION_TYPES = frozenset({"TransformerEncoder", "TransformerDecoder", "MultiHeadAttention"})


@dataclass(frozen=True)
class Network:
    """A resolved network: what the backends build and the server caches."""

    name: str
    filename: str
    pos: Pos
    input_shape: Shape  # per item, without the batch dimension
    layers: tuple[Layer, ...]
    loss: Value = None
    optimizer: Value = None
    metrics: tuple[Value, ...] = ()
    train: tuple[tuple[str, Value], ...] = ()
    execution: tuple[tuple[str, Value], ...] = ()
    warnings: tuple[str, ...] = ()
    # HPO expressions met outside layers (optimizer, train, ...), by path such as
    # "optimizer.learning_rate"; each was replaced by its default in the fields above.
    search_space: tuple[tuple[str, HPO], ...] = ()

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def attention_layers(self) -> tuple[Layer, ...]:
        """Every attention layer in order, those inside blocks (ResidualConnection) included."""
        return tuple(layer for _, layer in self.attention_sites)

    @property
    def attention_sites(self) -> tuple[tuple[int, Layer], ...]:
        """(index of the top-level layer that holds it, attention layer), in order."""
        return tuple(
            (i, found)
            for i, layer in enumerate(self.layers)
            for found in layer.walk()
            if found.is_attention
        )

    def walk(self) -> Iterator[Layer]:
        """Every layer, those inside blocks included, depth first in file order."""
        return walk_layers(self.layers)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)
