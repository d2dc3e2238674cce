"""Text to syntax IR: the cached lark parser and the transformer that builds ``Program``.

Only syntax is checked here (plus the shape of ``HPO(...)`` expressions, whose default must be
known to build the node). Meaning (layer types, parameters, shapes) is ``resolve.py``'s job.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedInput

from neural_attn.errors import DSLError, DSLSyntaxError

from .ir import HPO, Arg, Call, LayerCall, Macro, Name, NetworkDecl, Pos, Program, Value
from .syntax_errors import error_from_lark, source_line

__all__ = ["parse"]

# Values beyond these sizes are refused rather than risk Python's int/str conversion limits.
_MAX_DIGITS = 100
_MAX_NAME_SHOWN = 80  # longer names are cut in messages
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}
HPO_KINDS = ("choice", "range", "log_range")


# The grammar's unnamed literals: kept by lark (keep_all_tokens) so that every rule's first and
# last token are in its tree, which gives positions without lark's propagate_positions (40% of
# the time of a parse); dropped from the children our rule methods see.
PUNCTUATION = frozenset(
    {"LPAR", "RPAR", "LSQB", "RSQB", "LBRACE", "RBRACE", "COMMA", "COLON", "SEMICOLON"}
    | {"EQUAL", "STAR", "AT", "MINUS"}
)


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", keep_all_tokens=True)


def _first_token(tree: Tree[Token]) -> Token | None:
    """The first token of a subtree (its position is where the rule's text starts)."""
    node: Any = tree
    while isinstance(node, Tree):
        if not node.children:
            return None
        node = node.children[0]
    return node if isinstance(node, Token) else None


class _Where:
    """Where a rule's text starts (its first token, brackets included), found on demand."""

    __slots__ = ("_tree",)

    def __init__(self, tree: Tree[Token]) -> None:
        self._tree = tree

    def _first(self) -> Token:
        token = _first_token(self._tree)
        assert token is not None, "every rule that asks where it is has a token"
        return token

    @property
    def line(self) -> int:
        return int(self._first().line or 1)

    @property
    def column(self) -> int:
        return int(self._first().column or 1)

    @property
    def start_pos(self) -> int:
        return int(self._first().start_pos or 0)


def parse(source: str, *, filename: str = "<string>") -> Program:
    """Parse Neural DSL text into a ``Program`` (syntax only, nothing resolved).

    Time is linear in the length of the text (about a second per MiB). A UTF-8 byte-order
    mark at the start (Windows editors write one) is not part of the program.
    """
    source = source.removeprefix("\ufeff")
    with _collector_paused():
        try:
            tree = _lark().parse(source)
        except UnexpectedInput as exc:
            raise error_from_lark(exc, source, filename) from None
        except LarkError as exc:  # pragma: no cover - lark raises UnexpectedInput for bad text
            raise DSLSyntaxError(f"could not parse this file ({exc})", filename=filename) from None
        except RecursionError:
            raise _too_deep(filename) from None
        try:
            return _ToIR(source, filename).transform(tree)
        except RecursionError:
            raise _too_deep(filename) from None


class _CollectorPause:
    """Pause Python's cyclic garbage collector while parses run.

    A parse makes hundreds of thousands of small tree objects and no cycles; each collection
    those allocations trigger walks the whole growing tree, which more than doubled the time of
    a large file. Concurrent parses overlap: the last one out switches the collector back on,
    if it was on when the first one came in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._was_enabled:
                    gc.enable()


_collector_paused = _CollectorPause()


def _too_deep(filename: str) -> DSLSyntaxError:
    return DSLSyntaxError(
        "values are nested too deeply to read (too many brackets inside brackets)",
        filename=filename,
    )


def _pos(item: Any) -> Pos:
    """Position of a token or of a rule's meta."""
    return Pos(item.line, item.column)


class _Args(list[Arg]):
    """The arguments of a layer or call, as written (a marker type for ``layer``)."""


class _Suffix:
    def __init__(self, kind: str, value: Any, pos: Pos) -> None:
        self.kind, self.value, self.pos = kind, value, pos


class _ToIR:
    """Lark tree to syntax IR; every method is named after the grammar rule it builds and takes
    the rule's meta (positions) and its children, already built."""

    def __init__(self, source: str, filename: str) -> None:
        self.source = source
        self.filename = filename

    def transform(self, tree: Tree[Token]) -> Program:
        # Our own walk rather than lark's Transformer with v_args(meta=True), which builds a
        # wrapper per node (a third of the time on a large file) and wraps our errors.
        def build(node: Tree[Token]) -> Any:
            children = [
                build(c) if isinstance(c, Tree) else c
                for c in node.children
                if not (isinstance(c, Token) and c.type in PUNCTUATION)
            ]
            return getattr(self, node.data)(_Where(node), children)

        program: Program = build(tree)
        return program

    def _error(self, message: str, pos: Pos, hint: str | None = None) -> DSLError:
        return DSLSyntaxError(
            message,
            filename=self.filename,
            line=pos.line,
            column=pos.column,
            source_line=source_line(self.source, pos.line),
            hint=hint,
        )

    # ------------------------------------------------------------------ program

    def start(self, meta: Any, children: list[Any]) -> Program:
        macros = tuple(c for c in children if isinstance(c, Macro))
        networks = tuple(c for c in children if isinstance(c, NetworkDecl))
        return Program(self.filename, self.source, macros, networks)

    def macro(self, meta: Any, children: list[Any]) -> Macro:
        _kw, name, *body = children
        return Macro(str(name), tuple(body), _pos(meta))

    def network(self, meta: Any, children: list[Any]) -> NetworkDecl:
        _kw, name, *sections = children
        seen: dict[str, Pos] = {}
        input_shape: tuple[Value, ...] = ()
        input_pos = _pos(meta)
        layers: tuple[LayerCall, ...] = ()
        others: list[tuple[str, Value, Pos]] = []
        for key, value, pos in sections:
            canon = "execution" if key == "execute" else key
            if canon in seen:
                first = seen[canon]
                raise self._error(
                    f"`{key}` is given twice in network `{name}` (first on line {first.line})",
                    pos,
                    hint="keep one of them",
                )
            seen[canon] = pos
            if key == "input":
                input_shape = value if isinstance(value, tuple) else (value,)
                input_pos = pos
            elif key == "layers":
                layers = value
            else:
                others.append((key, value, pos))
        return NetworkDecl(str(name), _pos(meta), input_shape, input_pos, layers, tuple(others))

    # ------------------------------------------------------------------ sections

    def input_section(self, meta: Any, children: list[Any]) -> tuple[str, Value, Pos]:
        return ("input", children[1], _pos(meta))

    def layers_section(self, meta: Any, children: list[Any]) -> tuple[str, Any, Pos]:
        return ("layers", tuple(children[1:]), _pos(meta))

    def value_section(self, meta: Any, children: list[Any]) -> tuple[str, Value, Pos]:
        return (str(children[0]), children[1], _pos(meta))

    def block_section(self, meta: Any, children: list[Any]) -> tuple[str, Value, Pos]:
        key = str(children[0])
        entries: tuple[Arg, ...] = tuple(children[1:])
        seen: set[str] = set()
        for entry in entries:
            if entry.name in seen:
                raise self._error(f"`{entry.name}` is given twice in the `{key}` block", entry.pos)
            seen.add(str(entry.name))
        return (key, entries, _pos(meta))

    def entry(self, meta: Any, children: list[Any]) -> Arg:
        return Arg(str(children[0]), children[1], _pos(children[0]))

    # ------------------------------------------------------------------ layers

    def layer(self, meta: Any, children: list[Any]) -> LayerCall:
        name, *rest = children
        args: _Args | None = None
        found: dict[str, _Suffix] = {}
        for item in rest:
            if isinstance(item, _Args):
                args = item
            elif isinstance(item, _Suffix):
                if item.kind in found:
                    words = {"repeat": "`* N`", "device": "`@ device`", "body": "a `{ ... }` body"}
                    raise self._error(f"`{name}` has {words[item.kind]} twice", item.pos)
                found[item.kind] = item
        return LayerCall(
            type=str(name),
            args=tuple(args or ()),
            pos=_pos(name),
            repeat=found["repeat"].value if "repeat" in found else 1,
            children=found["body"].value if "body" in found else (),
            device=found["device"].value if "device" in found else None,
            has_parens=args is not None,
        )

    def repeat(self, meta: Any, children: list[Any]) -> _Suffix:
        return _Suffix("repeat", self._int(children[0]), _pos(meta))

    def device(self, meta: Any, children: list[Any]) -> _Suffix:
        return _Suffix("device", self._unquote(children[0]), _pos(meta))

    def body(self, meta: Any, children: list[Any]) -> _Suffix:
        return _Suffix("body", tuple(children), _pos(meta))

    def arguments(self, meta: Any, children: list[Any]) -> _Args:
        args = _Args(children)
        seen_named: set[str] = set()
        for arg in args:
            if arg.name is None and seen_named:
                owner = self._owner_of(meta)
                raise self._error(
                    f"a positional argument cannot follow named ones in the arguments of {owner}",
                    arg.pos,
                    hint="put positional arguments first, or name this one",
                )
            if arg.name is not None:
                if arg.name in seen_named:
                    owner = self._owner_of(meta)
                    raise self._error(
                        f"`{arg.name}` is given twice in the arguments of {owner}", arg.pos
                    )
                seen_named.add(arg.name)
        return args

    def _owner_of(self, meta: Any) -> str:
        # The name right before the `(` that opens these arguments, for messages only. Read
        # backwards from the bracket, never by splitting the source: that made parsing
        # quadratic in the number of lines.
        i = meta.start_pos
        while i > 0 and self.source[i - 1] in " \t\r":
            i -= 1
        end = i
        while i > 0 and (self.source[i - 1].isalnum() or self.source[i - 1] == "_"):
            i -= 1
        word = self.source[i:end][:_MAX_NAME_SHOWN]
        return f"`{word}`" if word else "this call"

    def kwarg(self, meta: Any, children: list[Any]) -> Arg:
        return Arg(str(children[0]), children[1], _pos(children[0]))

    def posarg(self, meta: Any, children: list[Any]) -> Arg:
        return Arg(None, children[0], _pos(meta))

    # ------------------------------------------------------------------ values

    def string(self, meta: Any, children: list[Any]) -> str:
        return self._unquote(children[0])

    def integer(self, meta: Any, children: list[Any]) -> int:
        return self._int(children[0])

    def real(self, meta: Any, children: list[Any]) -> float:
        return self._float(children[0])

    def neg_integer(self, meta: Any, children: list[Any]) -> int:
        return -self._int(children[0])

    def neg_real(self, meta: Any, children: list[Any]) -> float:
        return -self._float(children[0])

    def true(self, meta: Any, children: list[Any]) -> bool:
        return True

    def false(self, meta: Any, children: list[Any]) -> bool:
        return False

    def none(self, meta: Any, children: list[Any]) -> None:
        return None

    def name(self, meta: Any, children: list[Any]) -> Name:
        return Name(str(children[0]), _pos(children[0]))

    def tuple_value(self, meta: Any, children: list[Any]) -> tuple[Value, ...]:
        return tuple(children)

    def list_value(self, meta: Any, children: list[Any]) -> tuple[Value, ...]:
        return tuple(children)

    def call(self, meta: Any, children: list[Any]) -> Call | HPO:
        func, args = str(children[0]), children[1]
        positional = tuple(a.value for a in args if a.name is None)
        named = tuple((a.name, a.value) for a in args if a.name is not None)
        if func == "HPO":
            return self._hpo(positional, named, _pos(meta))
        return Call(func, positional, named, _pos(meta))

    def _hpo(self, args: tuple[Value, ...], kwargs: Any, pos: Pos) -> HPO:
        form = "choice(a, b, ...), range(low, high, step=s) or log_range(low, high)"
        inner = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(inner, Call) or inner.func not in HPO_KINDS:
            raise self._error(f"`HPO(...)` takes one search space: {form}", pos)
        kind, values, named = inner.func, inner.args, dict(inner.kwargs)
        if kind == "choice":
            if not values or named:
                raise self._error("`HPO(choice(...))` needs at least one value to choose", pos)
            return HPO(kind, values, inner.kwargs, values[0], pos)
        allowed = {"step"} if kind == "range" else set()
        numbers = [v for v in values if _is_number(v)]
        extra = set(named) - allowed
        max_args = 3 if kind == "range" else 2
        if extra or len(numbers) != len(values) or not 2 <= len(values) <= max_args:
            raise self._error(f"`HPO({kind}(...))` takes two numbers, low and high: {form}", pos)
        low, high = values[0], values[1]
        step = named.get("step", values[2] if len(values) == 3 else None)
        if low > high:  # type: ignore[operator]
            raise self._error(f"`HPO({kind}({low}, {high}))`: low is above high", pos)
        if step is not None and (not _is_number(step) or step <= 0):  # type: ignore[operator]
            raise self._error(f"`HPO({kind}(...))`: `step` must be a number above 0", pos)
        if kind == "log_range" and low <= 0:  # type: ignore[operator]
            raise self._error("`HPO(log_range(low, high))` needs low above 0", pos)
        return HPO(kind, values, inner.kwargs, low, pos)

    # ------------------------------------------------------------------ tokens

    def _int(self, tok: Token) -> int:
        if len(tok) > _MAX_DIGITS:
            raise self._error(f"this number has more than {_MAX_DIGITS} digits", _pos(tok))
        return int(tok)

    def _float(self, tok: Token) -> float:
        if len(tok) > _MAX_DIGITS:
            raise self._error(f"this number has more than {_MAX_DIGITS} digits", _pos(tok))
        return float(tok)

    def _unquote(self, tok: Token) -> str:
        body, out, i = str(tok)[1:-1], [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body):
                nxt = body[i + 1]
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
