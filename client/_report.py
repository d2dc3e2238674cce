"""What `neural-attn-client visualize` prints: a table for people or one JSON document.

Reports go to stdout and nothing else does (progress and warnings are on stderr), so
``--format json`` output can be piped straight into ``jq`` or ``json.load``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from neural_attn.client._client import CompileResult

__all__ = ["print_layer_table", "print_visualization"]


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dump(document: Mapping[str, Any]) -> None:
    json.dump(document, sys.stdout, indent=2, default=_plain)
    sys.stdout.write("\n")


def print_layer_table(compiled: CompileResult, *, fmt: str = "table") -> None:
    """The model's layers (without --attention): names, types, shapes, attention marked."""
    if fmt == "json":
        _dump(
            {
                "network": compiled.network_name,
                "backend": compiled.backend,
                "parameters": compiled.parameter_count,
                "attention_layers": list(compiled.attention_layers),
                "layers": [
                    {
                        "name": layer.name,
                        "type": layer.type,
                        "output_shape": list(layer.output_shape),
                        "attention": layer.is_attention,
                        "heads": layer.num_heads,
                    }
                    for layer in compiled.layers
                ],
            }
        )
        return
    print(f"{compiled.network_name} ({compiled.backend}, {compiled.parameter_count} params)")
    for layer in compiled.layers:
        mark = "  [attention]" if layer.is_attention else ""
        print(f"  {layer.name:<32} {layer.type:<24} {layer.output_shape}{mark}")
    print("add --attention to extract and draw attention")


def print_visualization(result: Mapping[str, Any], *, output_dir: str, fmt: str = "table") -> None:
    """The report of `visualize --attention`: per-head metrics and the files written."""
    compiled: CompileResult = result["model"]
    for warning in compiled.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in result.get("notes", ()):
        print(f"note: {note}", file=sys.stderr)
    if fmt == "json":
        _dump(
            {
                "network": compiled.network_name,
                "backend": compiled.backend,
                "model_id": compiled.model_id,
                "tokens": result.get("tokens"),
                "layers": result["analysis"]["layers"],
                "files": result["files"],
                "notes": result.get("notes", []),
            }
        )
        return
    print(result["summary"])
    print(f"\nOutputs in {output_dir}/:")
    for path in result["files"].values():
        print(f"  {path}")
