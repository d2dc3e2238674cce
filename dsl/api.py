"""The front door: ``parse``, ``compile_source``, ``compile_file``, ``network_to_dict``."""

from __future__ import annotations

import difflib
import os
from typing import Any

from neural_attn.errors import DSLError, DSLSemanticError

from .ir import Layer, Network, NetworkDecl, Program
from .parser import parse
from .resolve import MAX_LAYERS, resolve_network
from .syntax_errors import source_line
from .values import to_json

__all__ = ["compile_file", "compile_source", "network_to_dict", "parse"]


def compile_source(
    source: str,
    *,
    filename: str = "<string>",
    network: str | None = None,
    max_layers: int = MAX_LAYERS,
) -> Network:
    """Parse, resolve, infer shapes and validate; return the network ready to build.

    Args:
        network: the network to pick when the file defines several (by name).
        max_layers: refuse a network that expands to more layers (blocks' included).
    """
    program = parse(source, filename=filename)
    decl = _pick(program, network)
    try:
        return resolve_network(program, decl, max_layers=max_layers)
    except RecursionError:
        raise DSLSemanticError(
            "this network nests too deeply to resolve", filename=filename
        ) from None


def compile_file(path: str | os.PathLike[str], *, network: str | None = None) -> Network:
    """``compile_source`` on the UTF-8 text of ``path`` (messages name the file)."""
    filename = os.fspath(path)
    try:
        with open(filename, encoding="utf-8") as handle:
            source = handle.read()
    except UnicodeDecodeError as exc:
        raise DSLError(
            f"this file is not UTF-8 text ({exc.reason} at byte {exc.start})", filename=filename
        ) from None
    except OSError as exc:
        raise DSLError(f"cannot read this file: {exc.strerror or exc}", filename=filename) from None
    return compile_source(source, filename=filename, network=network)


def _pick(program: Program, wanted: str | None) -> NetworkDecl:
    decls = program.networks

    def error(message: str, decl: NetworkDecl | None, hint: str | None = None) -> DSLSemanticError:
        pos = decl.pos if decl else None
        return DSLSemanticError(
            message,
            filename=program.filename,
            line=pos.line if pos else None,
            column=pos.column if pos else None,
            source_line=source_line(program.source, pos.line) if pos else None,
            hint=hint,
        )

    if not decls:
        raise error(
            "this file defines no network",
            None,
            hint="a model is written `network Name { input: (...) layers: ... }`",
        )
    names = ", ".join(d.name for d in decls)
    matches = [d for d in decls if d.name == wanted] if wanted is not None else list(decls)
    if wanted is not None and not matches:
        close = difflib.get_close_matches(wanted, [d.name for d in decls], n=1, cutoff=0.6)
        extra = f"; did you mean `{close[0]}`?" if close else ""
        raise error(f"no network named `{wanted}` in this file (it defines {names}){extra}", None)
    if len(matches) == 1:
        return matches[0]
    lines = " and ".join(str(d.pos.line) for d in matches)
    if wanted is not None:
        raise error(
            f"{len(matches)} networks are named `{wanted}` (lines {lines}), "
            "so the name is ambiguous",
            matches[1],
            hint="rename one of them so that --network can pick it",
        )
    counts: dict[str, int] = {}
    for d in decls:
        counts[d.name] = counts.get(d.name, 0) + 1
    message = f"this file defines {len(decls)} networks ({names}); pick one with --network NAME"
    hint = None
    shared = [name for name, n in counts.items() if n > 1]
    if shared:
        message += f", but `{shared[0]}` names {counts[shared[0]]} of them"
        hint = f"rename one of the networks named `{shared[0]}` so that --network can pick it"
    raise error(message, decls[1], hint=hint)


def network_to_dict(network: Network) -> dict[str, Any]:
    """The resolved network as plain JSON data, without positions or file name.

    Key order is fixed, so ``json.dumps(d, sort_keys=True)`` is a stable content hash input.
    """
    return {
        "name": network.name,
        "input_shape": list(network.input_shape),
        "layers": [_layer_to_dict(layer) for layer in network.layers],
        "loss": to_json(network.loss),
        "optimizer": to_json(network.optimizer),
        "metrics": [to_json(m) for m in network.metrics],
        "train": {k: to_json(v) for k, v in network.train},
        "execution": {k: to_json(v) for k, v in network.execution},
        "warnings": list(network.warnings),
    }


def _layer_to_dict(layer: Layer) -> dict[str, Any]:
    return {
        "name": layer.name,
        "type": layer.type,
        "params": {k: to_json(v) for k, v in layer.params},
        "input_shape": list(layer.input_shape),
        "output_shape": list(layer.output_shape),
        "children": [_layer_to_dict(child) for child in layer.children],
        "device": layer.device,
    }
