"""Values as written: checking and normalizing them for a parameter kind, HPO defaults,
display in messages, and the JSON form used by ``network_to_dict``."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

from .ir import HPO, Call, Name

__all__ = [
    "ACTIVATIONS",
    "CONVERTERS",
    "ParamError",
    "convert",
    "describe",
    "format_value",
    "plain",
    "substitute_hpo",
    "to_json",
]

ACTIVATIONS = (
    "linear",
    "relu",
    "gelu",  # exact, with erf (BERT's "gelu")
    "gelu_tanh",  # the tanh approximation (GPT-2's "gelu_new")
    "tanh",
    "sigmoid",
    "softmax",
    "elu",
    "selu",
    "swish",
    "silu",
    "leaky_relu",
    "softplus",
    "softsign",
)
PADDINGS = ("valid", "same")


class ParamError(Exception):
    """A value does not fit its parameter: ``expected`` says what would."""

    def __init__(
        self,
        expected: str,
        hint: str | None = None,
        *,
        unknown: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(expected)
        self.expected, self.hint = expected, hint
        # For a name outside a fixed set ("relux"): the name and the closest known one.
        self.unknown, self.suggestion = unknown, suggestion


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _word(v: Any) -> str | None:
    """A string or an unquoted name, as text; None for anything else."""
    if isinstance(v, Name):
        return v.name
    return v if isinstance(v, str) else None


def _pos_int(v: Any) -> int:
    if not _is_int(v) or v < 1:
        raise ParamError("a whole number of at least 1")
    return int(v)


def _opt_pos_int(v: Any) -> int | None:
    return None if v is None else _pos_int(v)


def _rate(v: Any) -> float:
    if not _is_number(v) or not 0 <= v < 1:
        raise ParamError("a number from 0 up to (not including) 1")
    return float(v)


def _unit_float(v: Any) -> float:
    if not _is_number(v) or not 0 <= v <= 1:
        raise ParamError("a number from 0 to 1")
    return float(v)


def _pos_float(v: Any) -> float:
    if not _is_number(v) or v <= 0:
        raise ParamError("a number above 0")
    return float(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ParamError("true or false")
    return v


def _activation(v: Any) -> str | None:
    word = _word(v)
    if v is None or (word is not None and word.lower() in ("linear", "none")):
        return None
    if word is None:
        raise ParamError("an activation name such as relu or softmax")
    if word.lower() not in ACTIVATIONS:
        close = difflib.get_close_matches(word.lower(), ACTIVATIONS, n=1, cutoff=0.6)
        raise ParamError(
            "a known activation",
            f"known activations: {', '.join(ACTIVATIONS)}, None",
            unknown=word,
            suggestion=close[0] if close else None,
        )
    return word.lower()


def _padding(v: Any) -> str:
    word = _word(v)
    if word is None or word.lower() not in PADDINGS:
        raise ParamError('"valid" or "same"')
    return word.lower()


def _size(n: int, optional: bool) -> Callable[[Any], tuple[int, ...] | None]:
    words = "a whole number" if n == 1 else f"a whole number or a tuple of {n} whole numbers"

    def conv(v: Any) -> tuple[int, ...] | None:
        if v is None and optional:
            return None
        items = v if isinstance(v, tuple) else (v,)
        if len(items) == 1:
            items = items * n
        if len(items) != n or not all(_is_int(i) and i >= 1 for i in items):
            raise ParamError(f"{words} (each at least 1)" + (" or None" if optional else ""))
        return tuple(items)

    return conv


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "pos_int": _pos_int,
    "opt_pos_int": _opt_pos_int,
    "rate": _rate,
    "unit_float": _unit_float,
    "pos_float": _pos_float,
    "bool": _bool,
    "activation": _activation,
    "padding": _padding,
    "size1": _size(1, False),
    "size2": _size(2, False),
    "opt_size1": _size(1, True),
    "opt_size2": _size(2, True),
}


def convert(kind: str, value: Any) -> Any:
    """Check and normalize ``value`` for a parameter kind; raise ``ParamError`` if it won't do."""
    try:
        return CONVERTERS[kind](value)
    except ParamError as exc:
        if isinstance(value, Call) and value.func in ("choice", "range", "log_range"):
            exc.hint = f"write a search space as HPO({format_value(value)})"
        raise


# ---------------------------------------------------------------------------------- HPO


def substitute_hpo(value: Any, path: str, found: list[tuple[str, HPO]]) -> Any:
    """``value`` with every HPO replaced by its default; each HPO met is appended to ``found``
    with its path (``learning_rate``, ``kernel_size[0]``, ``learning_rate.decay_rate``)."""
    if isinstance(value, HPO):
        found.append((path, value))
        return substitute_hpo(value.default, path, found)
    if isinstance(value, tuple):
        return tuple(substitute_hpo(v, f"{path}[{i}]", found) for i, v in enumerate(value))
    if isinstance(value, Call):
        args = tuple(substitute_hpo(v, f"{path}[{i}]", found) for i, v in enumerate(value.args))
        kwargs = tuple((k, substitute_hpo(v, f"{path}.{k}", found)) for k, v in value.kwargs)
        return Call(value.func, args, kwargs, value.pos)
    return value


def hpo_choice_words(hpo: HPO) -> str:
    return {"choice": "the first choice", "range": "the low end", "log_range": "the low end"}.get(
        hpo.kind, "its default"
    )


# ---------------------------------------------------------------------------------- display


def format_value(value: Any) -> str:
    """The value as a person would write it in a .neural file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Name):
        return value.name
    if isinstance(value, tuple):
        inner = ", ".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, Call | HPO):
        args = [format_value(v) for v in value.args]
        args += [f"{k}={format_value(v)}" for k, v in value.kwargs]
        text = f"{value.kind if isinstance(value, HPO) else value.func}({', '.join(args)})"
        return f"HPO({text})" if isinstance(value, HPO) else text
    return repr(value)


def describe(value: Any) -> str:
    """How a message names a value it refuses."""
    if isinstance(value, str):
        return f"the string {format_value(value)}"
    if isinstance(value, Name):
        return f"the name `{value.name}`"
    if isinstance(value, Call):
        return f"the call `{format_value(value)}`"
    if isinstance(value, tuple):
        return f"the tuple `{format_value(value)}`"
    return f"`{format_value(value)}`"


def plain(value: Any) -> Any:
    """Unquoted names become strings (``optimizer: Adam`` == ``optimizer: "Adam"``)."""
    if isinstance(value, Name):
        return value.name
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, Call):
        args = tuple(plain(v) for v in value.args)
        return Call(value.func, args, tuple((k, plain(v)) for k, v in value.kwargs), value.pos)
    return value


def to_json(value: Any) -> Any:
    """A JSON-able form: tuples are lists, calls are {"call", "args", "kwargs"} objects."""
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Name):
        return value.name
    if isinstance(value, Call):
        return {
            "call": value.func,
            "args": [to_json(v) for v in value.args],
            "kwargs": {k: to_json(v) for k, v in value.kwargs},
        }
    if isinstance(value, HPO):  # never left in a resolved network; kept for completeness
        return {"hpo": value.kind, "args": [to_json(v) for v in value.args]}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
