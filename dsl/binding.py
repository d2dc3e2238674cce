"""Binding a layer call's arguments to its parameters: the spec's positional order, defaults,
value checks, HPO defaults, ``name=`` overrides. Mixed into the resolver of ``resolve.py``."""

from __future__ import annotations

import difflib
import re
from typing import Any

from neural_attn.errors import DSLSemanticError

from .ir import HPO, Arg, LayerCall, Macro, Pos
from .layers import LAYER_SPECS, UNSAFE_LAYERS, LayerSpec
from .values import ParamError, describe, plain, substitute_hpo

__all__ = ["Binder"]

MAX_NAME_LENGTH = 128  # names travel in every attention chunk
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Binder:
    """Layer lookup and argument binding; the host class gives ``error`` and ``macros``."""

    macros: dict[str, Macro]

    def error(self, message: str, pos: Pos | None, hint: str | None = None) -> DSLSemanticError:
        raise NotImplementedError

    def _spec(self, call: LayerCall) -> LayerSpec:
        if call.type in UNSAFE_LAYERS:
            raise self.error(
                f"`{call.type}` layers run arbitrary code, which this service never does",
                call.pos,
                hint="express the computation with built-in layers",
            )
        spec = LAYER_SPECS.get(call.type)
        if spec is not None:
            return spec
        known = [*LAYER_SPECS, *self.macros]
        by_lower = {k.lower(): k for k in known}
        close = (
            [by_lower[call.type.lower()]]
            if call.type.lower() in by_lower
            else difflib.get_close_matches(call.type, known, n=1, cutoff=0.6)
        )
        message = f"unknown layer `{call.type}`"
        if close:
            message += f"; did you mean `{close[0]}`?"
        return_hint = "known layers: " + ", ".join(sorted(LAYER_SPECS))
        raise self.error(message, call.pos, hint=return_hint)

    # ------------------------------------------------------------------ binding

    def _bind(
        self, call: LayerCall, spec: LayerSpec
    ) -> tuple[dict[str, Any], list[tuple[str, HPO]], str | None]:
        names = spec.names
        positional = [a for a in call.args if a.name is None]
        if len(positional) > len(names):
            extra = positional[len(names)]
            if not names:
                raise self.error(f"{spec.type} takes no arguments", extra.pos)
            raise self.error(
                f"{spec.type} takes at most {len(names)} positional "
                f"argument{'s' if len(names) > 1 else ''}, got {len(positional)}",
                extra.pos,
                hint=f"the parameters are {spec.signature()}",
            )
        given: dict[str, Arg] = dict(zip(names, positional, strict=False))
        explicit: str | None = None
        for arg in call.args:
            if arg.name is None:
                continue
            if arg.name == "name":
                explicit = self._explicit_name(arg)
                continue
            if arg.name not in names:
                close = difflib.get_close_matches(arg.name, names, n=1, cutoff=0.6)
                message = f"unknown parameter `{arg.name}` for {spec.type}"
                if close:
                    message += f"; did you mean `{close[0]}`?"
                hint = (
                    f"the parameters are {spec.signature()}"
                    if names
                    else f"{spec.type} takes no parameters"
                )
                raise self.error(message, arg.pos, hint=hint)
            if arg.name in given:
                raise self.error(
                    f"`{arg.name}` of {spec.type} is given twice: "
                    f"positionally and as `{arg.name}=`",
                    arg.pos,
                )
            given[arg.name] = arg
        params: dict[str, Any] = {}
        search: list[tuple[str, HPO]] = []
        for param in spec.params:
            bound = given.get(param.name)
            if bound is None:
                if param.required:
                    raise self.error(
                        f"{spec.type} needs `{param.name}`",
                        call.pos,
                        hint=f"the parameters are {spec.signature()}",
                    )
                params[param.name] = param.default
                continue
            found: list[tuple[str, HPO]] = []
            value = substitute_hpo(bound.value, param.name, found)
            try:
                params[param.name] = param.convert(value)
            except ParamError as exc:
                if exc.unknown is not None:
                    message = f"unknown {param.name} `{exc.unknown}` for {spec.type}"
                    if exc.suggestion:
                        message += f"; did you mean `{exc.suggestion}`?"
                else:
                    message = (
                        f"`{param.name}` of {spec.type} must be {exc.expected}, "
                        f"got {describe(value)}"
                    )
                if found:
                    message += " (the default of its HPO search space)"
                raise self.error(message, bound.pos, hint=exc.hint) from None
            search.extend(found)
        return params, search, explicit

    def _explicit_name(self, arg: Arg) -> str:
        value = plain(arg.value)
        if not isinstance(value, str) or not _IDENT.match(value):
            raise self.error(
                "a layer name must be letters, digits and `_` (not starting with a digit), "
                f"got {describe(arg.value)}",
                arg.pos,
            )
        if len(value) > MAX_NAME_LENGTH:
            raise self.error(
                f"a layer name may have at most {MAX_NAME_LENGTH} characters; this one has "
                f"{len(value)}",
                arg.pos,
            )
        return value
