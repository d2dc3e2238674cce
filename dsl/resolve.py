"""Syntax IR to a resolved ``Network``: expansion, binding, naming, shapes, validation.

The passes, in order:
1. expand macros, ``* N`` and ``TransformerEncoder/Decoder(num_layers=N)`` into one plan per
   layer;
2. bind arguments to parameter names (positional by the spec's order), fill defaults, check
   values, replace HPO expressions by their default;
3. name layers (snake_case type + index per type, in file order; ``name=`` overrides);
4. infer per-item shapes from the declared input, refusing what cannot be built.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from neural_attn.errors import DSLLimitError, DSLSemanticError
from neural_attn.limits import MAX_LAYERS, MAX_NESTING

from .binding import Binder
from .ir import (
    HPO,
    Arg,
    Layer,
    LayerCall,
    Macro,
    Network,
    NetworkDecl,
    Pos,
    Program,
    Shape,
    walk_layers,
)
from .layers import LAYER_SPECS, LayerSpec, ShapeContext, ShapeError, format_shape
from .syntax_errors import source_line
from .values import (
    describe,
    format_value,
    hpo_choice_words,
    plain,
    substitute_hpo,
)

__all__ = ["MAX_LAYERS", "MAX_NESTING", "resolve_network"]

_STACKED = ("TransformerEncoder", "TransformerDecoder")  # num_layers=N expands to N blocks
_DEVICE = re.compile(r"(cpu|gpu|cuda|mps|tpu|auto)(:[0-9]+)?\Z", re.IGNORECASE)


@dataclass
class _Plan:
    """One layer after expansion and binding, before naming and shapes."""

    call: LayerCall
    spec: LayerSpec
    params: dict[str, Any]
    search: list[tuple[str, HPO]]
    explicit_name: str | None
    device: str | None
    trail: tuple[tuple[str, Pos], ...]  # the macros it came through, with where each was used
    children: list[_Plan] = field(default_factory=list)
    name: str = ""


def resolve_network(
    program: Program, decl: NetworkDecl, *, max_layers: int = MAX_LAYERS
) -> Network:
    """Resolve one network of a parsed program, expanding to at most ``max_layers`` layers."""
    return _Resolver(program, decl, max_layers=max_layers).run()


class _Resolver(Binder):
    def __init__(self, program: Program, decl: NetworkDecl, *, max_layers: int) -> None:
        self.program = program
        self.decl = decl
        self.count = 0
        self.nesting = 0
        self.max_layers = max_layers
        self.macros: dict[str, Macro] = {}
        for macro in program.macros:
            if macro.name in self.macros:
                first = self.macros[macro.name].pos.line
                raise self.error(
                    f"macro `{macro.name}` is defined twice (first on line {first})", macro.pos
                )
            if macro.name in LAYER_SPECS:
                raise self.error(
                    f"`define {macro.name}` would hide the {macro.name} layer",
                    macro.pos,
                    hint="give the macro another name",
                )
            self.macros[macro.name] = macro

    def error(self, message: str, pos: Pos | None, hint: str | None = None) -> DSLSemanticError:
        return DSLSemanticError(
            message,
            filename=self.program.filename,
            line=pos.line if pos else None,
            column=pos.column if pos else None,
            source_line=source_line(self.program.source, pos.line) if pos else None,
            hint=hint,
        )

    def run(self) -> Network:
        decl = self.decl
        input_shape = self._input_shape()
        if not decl.layers:
            raise self.error(
                f"network `{decl.name}` has no layers",
                decl.pos,
                hint="add `layers:` followed by at least one layer",
            )
        plans = self._expand(decl.layers, (), ())
        self._name(plans)
        source = f"the input is {format_shape(input_shape)}"
        layers, _, _ = self._infer(plans, input_shape, source, True)
        warnings: list[str] = []
        for layer in walk_layers(layers):
            for path, hpo in layer.search_space:
                warnings.append(_hpo_warning(f"`{layer.name}`: {path}", hpo))
        sections, search = self._sections(warnings)
        return Network(
            name=decl.name,
            filename=self.program.filename,
            pos=decl.pos,
            input_shape=input_shape,
            layers=tuple(layers),
            warnings=tuple(warnings),
            search_space=tuple(search),
            **sections,
        )

    # ------------------------------------------------------------------ input and sections

    def _input_shape(self) -> Shape:
        decl = self.decl
        dims = decl.input_shape
        if not dims:
            raise self.error(
                f"network `{decl.name}` has no input shape",
                decl.input_pos,
                hint="declare one, e.g. `input: (28, 28, 1)`, "
                "or `input: (None, 512)` for a dynamic length",
            )
        if len(dims) >= 3 and dims[0] is None:
            dims = dims[1:]  # a leading None is the batch dimension
        for dim in dims:
            if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
                raise self.error(
                    "input dimensions must be whole numbers of at least 1 or None, "
                    f"got {describe(dim)}",
                    decl.input_pos,
                )
        return tuple(dims)  # type: ignore[arg-type]

    def _sections(self, warnings: list[str]) -> tuple[dict[str, Any], list[tuple[str, HPO]]]:
        out: dict[str, Any] = {}
        search: list[tuple[str, HPO]] = []
        for key, value, _pos in self.decl.sections:
            if key in ("train", "execution", "execute"):
                canon = "execution" if key == "execute" else key
                entries = []
                assert isinstance(value, tuple)
                for entry in value:
                    assert isinstance(entry, Arg)
                    entries.append(
                        (
                            entry.name,
                            self._section_value(f"{canon}.{entry.name}", entry.value, search),
                        )
                    )
                out[canon] = tuple(entries)
            else:
                resolved = self._section_value(key, value, search)
                if key == "metrics":
                    resolved = resolved if isinstance(resolved, tuple) else (resolved,)
                out[key] = resolved
        for path, hpo in search:
            warnings.append(_hpo_warning(path, hpo))
        return out, search

    def _section_value(self, path: str, value: Any, search: list[tuple[str, HPO]]) -> Any:
        return plain(substitute_hpo(value, path, search))

    # ------------------------------------------------------------------ expansion

    def _expand(
        self,
        calls: tuple[LayerCall, ...],
        trail: tuple[tuple[str, Pos], ...],
        using: tuple[str, ...],
    ) -> list[_Plan]:
        plans: list[_Plan] = []
        for call in calls:
            plans.extend(self._expand_one(call, trail, using))
        return plans

    def _expand_one(
        self, call: LayerCall, trail: tuple[tuple[str, Pos], ...], using: tuple[str, ...]
    ) -> list[_Plan]:
        if call.repeat < 1:
            raise self.error(
                f"`* {call.repeat}` repeats `{call.type}` no times",
                call.pos,
                hint="use a count of 1 or more",
            )
        if call.device is not None and not _DEVICE.match(call.device):
            raise self.error(
                f'unknown device "{call.device}" for `{call.type}`',
                call.pos,
                hint='write "cpu", "cuda", "cuda:0", "gpu:1", "mps" or "auto"',
            )
        macro = self.macros.get(call.type)
        if macro is not None:
            return self._expand_macro(call, macro, trail, using)
        spec = self._spec(call)
        if call.children and not spec.has_body:
            raise self.error(
                f"`{call.type}` cannot have a body `{{ ... }}`: "
                "only ResidualConnection groups layers",
                call.pos,
                hint=f"write the layers of the body after `{call.type}(...)`, one after another; "
                "to reuse a group of layers, `define Name { ... }` it",
            )
        if spec.has_body and not call.children:
            raise self.error(
                f"{call.type} needs a body: `{call.type} {{ Conv2D(...) ... }}`", call.pos
            )
        params, search, explicit = self._bind(call, spec)
        copies = call.repeat
        if spec.type in _STACKED and params["num_layers"] > 1:
            copies *= params["num_layers"]  # one block per layer, each named and captured apart
            params["num_layers"] = 1
        plans: list[_Plan] = []
        for _ in range(copies):
            self._count(call)
            plan = _Plan(call, spec, dict(params), list(search), explicit, call.device, trail)
            if call.children:
                self._nest(call)
            plan.children = self._expand(call.children, trail, using)
            if call.children:
                self.nesting -= 1
            plans.append(plan)
        return plans

    def _expand_macro(
        self,
        call: LayerCall,
        macro: Macro,
        trail: tuple[tuple[str, Pos], ...],
        using: tuple[str, ...],
    ) -> list[_Plan]:
        if call.args:
            raise self.error(
                f"macro `{macro.name}` takes no arguments",
                call.args[0].pos,
                hint=f"write `{macro.name}` or `{macro.name}()`",
            )
        if call.children:
            raise self.error(f"macro `{macro.name}` cannot have a body `{{ ... }}`", call.pos)
        if macro.name in using:
            cycle = " -> ".join((*using[using.index(macro.name) :], macro.name))
            raise self.error(f"macro `{macro.name}` uses itself ({cycle})", call.pos)
        if not macro.body:
            raise self.error(f"macro `{macro.name}` has no layers", macro.pos)
        plans: list[_Plan] = []
        for _ in range(call.repeat):
            body = self._expand(macro.body, (*trail, (macro.name, call.pos)), (*using, macro.name))
            for plan in body:
                plan.device = plan.device or call.device
            plans.extend(body)
        return plans

    def _nest(self, call: LayerCall) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.error(
                f"layer bodies nest more than {MAX_NESTING} deep here",
                call.pos,
                hint="flatten the bodies: a residual block rarely needs another inside it",
            )

    def _count(self, call: LayerCall) -> None:
        self.count += 1
        if self.count > self.max_layers:
            pos = call.pos
            raise DSLLimitError(
                f"this network expands to more than {self.max_layers:,} layers (blocks' included)",
                filename=self.program.filename,
                line=pos.line,
                column=pos.column,
                source_line=source_line(self.program.source, pos.line),
                hint="lower the `* N` counts or num_layers",
            )

    # ------------------------------------------------------------------ naming

    def _name(self, plans: list[_Plan]) -> None:
        counters: Counter[str] = Counter()
        seen: dict[str, _Plan] = {}

        def visit(items: list[_Plan]) -> None:
            for plan in items:
                if plan.explicit_name is not None:
                    plan.name = plan.explicit_name
                else:
                    plan.name = f"{plan.spec.snake}_{counters[plan.spec.snake]}"
                    counters[plan.spec.snake] += 1
                if plan.name in seen:
                    first = seen[plan.name]
                    raise self.error(
                        f"two layers are named `{plan.name}` ({first.spec.type} on line "
                        f"{first.call.pos.line} and {plan.spec.type} on line {plan.call.pos.line})",
                        plan.call.pos,
                        hint="`* N` and num_layers repeat a `name=`; give each layer its own name"
                        if first.call is plan.call
                        else "give each layer its own name",
                    )
                seen[plan.name] = plan
                visit(plan.children)

        visit(plans)

    # ------------------------------------------------------------------ shapes

    def _infer(
        self, plans: list[_Plan], shape: Shape, source: str, first: bool
    ) -> tuple[list[Layer], Shape, str]:
        layers: list[Layer] = []
        for plan in plans:
            layer = self._infer_one(plan, shape, source, first and not layers)
            layers.append(layer)
            shape = layer.output_shape
            source = f"`{layer.name}` gives {format_shape(shape)}"
        return layers, shape, source

    def _infer_one(self, plan: _Plan, shape: Shape, source: str, first: bool) -> Layer:
        spec = plan.spec
        if spec.has_body:
            return self._residual(plan, shape, source, first)
        ctx = ShapeContext(spec.type, plan.name, source, first)
        params = dict(plan.params)
        in_shape = shape
        try:
            if spec.type == "Embedding":
                in_shape = self._embedding_input(plan, shape, source, first)
            out = spec.shape(params, in_shape, ctx)
        except ShapeError as exc:
            raise self.error(exc.message, plan.call.pos, hint=self._hint(exc.hint, plan)) from None
        return self._layer(plan, params, in_shape, out)

    def _layer(
        self,
        plan: _Plan,
        params: dict[str, Any],
        shape: Shape,
        out: Shape,
        children: tuple[Layer, ...] = (),
    ) -> Layer:
        return Layer(
            name=plan.name,
            type=plan.spec.type,
            params=tuple(params.items()),
            pos=plan.call.pos,
            input_shape=shape,
            output_shape=out,
            children=children,
            device=plan.device,
            search_space=tuple(plan.search),
        )

    def _embedding_input(self, plan: _Plan, shape: Shape, source: str, first: bool) -> Shape:
        """Embedding takes token ids: a declared (seq,) or, by convention, (seq, output_dim)."""
        dim = plan.params["output_dim"]
        if not first:
            raise ShapeError(
                f"Embedding must be the first layer (it takes token ids) but {source}",
                "move Embedding to the top of `layers:`",
            )
        if len(shape) == 2 and shape[1] != dim:
            raise ShapeError(
                f"the declared input {format_shape(shape)} has {shape[1]} features but Embedding "
                f"`{plan.name}` outputs {dim} (output_dim)",
                f"declare `input: ({shape[0]},)` for token ids, or `input: ({shape[0]}, {dim})`",
            )
        if len(shape) not in (1, 2):
            raise ShapeError(
                f"Embedding needs token ids (steps,) or a declared (steps, {dim}) input "
                f"but {source}"
            )
        return shape[:1]

    def _residual(self, plan: _Plan, shape: Shape, source: str, first: bool) -> Layer:
        """Children in sequence plus a shortcut: the identity when the body keeps the shape,
        else the last child taken as a projection of the block's input."""
        kids = plan.children
        main, out, main_source = self._infer(kids[:-1], shape, source, first)
        tail: Layer | None = None
        tail_error: DSLSemanticError | None = None
        try:
            tail = self._infer_one(kids[-1], out, main_source, first and not main)
        except DSLSemanticError as exc:
            tail_error = exc
        if tail is not None and tail.output_shape == shape:
            return self._layer(plan, {"shortcut": "identity"}, shape, shape, (*main, tail))
        if main:
            try:
                proj = self._infer_one(kids[-1], shape, source, first)
            except DSLSemanticError:
                proj = None
            if proj is not None and proj.output_shape == out:
                return self._layer(plan, {"shortcut": "projection"}, shape, out, (*main, proj))
        if tail_error is not None:
            raise tail_error
        assert tail is not None
        raise self.error(
            f"ResidualConnection `{plan.name}`: its body turns {format_shape(shape)} into "
            f"{format_shape(tail.output_shape)}, which cannot be added back to its input",
            plan.call.pos,
            hint="keep the shape through the body, or end the body with a projection layer "
            "(e.g. a 1x1 Conv2D) that maps the block's input to the body's output shape",
        )

    def _hint(self, hint: str | None, plan: _Plan) -> str | None:
        if not plan.trail:
            return hint
        macro, pos = plan.trail[-1]
        where = f"(in macro `{macro}`, used on line {pos.line})"
        return f"{hint} {where}" if hint else where


def _hpo_warning(where: str, hpo: HPO) -> str:
    return (
        f"{where} = {format_value(hpo)}; this build uses {format_value(hpo.default)} "
        f"({hpo_choice_words(hpo)})"
    )
