"""Neural DSL front end: parse ``.neural`` text, resolve it into a typed ``Network``.

    >>> from neural_attn.dsl import compile_source
    >>> net = compile_source("network N { input: (8, 16) layers: Dense(4) }")
    >>> net.layers[0].name, net.layers[0].output_shape
    ('dense_0', (8, 4))

Every failure is a ``neural_attn.errors.DSLError`` (``DSLSyntaxError`` or
``DSLSemanticError``) with file, line, column and the offending line; no lark object or
exception leaves this package.
"""

from __future__ import annotations

from .api import compile_file, compile_source, network_to_dict, parse
from .ir import HPO, Arg, Call, Layer, LayerCall, Macro, Name, Network, NetworkDecl, Pos, Program
from .layers import LAYER_SPECS, LayerSpec, Param

__all__ = [
    "HPO",
    "LAYER_SPECS",
    "Arg",
    "Call",
    "Layer",
    "LayerCall",
    "LayerSpec",
    "Macro",
    "Name",
    "Network",
    "NetworkDecl",
    "Param",
    "Pos",
    "Program",
    "compile_file",
    "compile_source",
    "network_to_dict",
    "parse",
]
