"""The demo's one picture: a previous-token, a first-token and an anti-diagonal head, side by side.

`make demo` visualizes two trained toy models (`trained/previous_and_first` and
`trained/reverse`) on the same sentence; this script takes one head of each kind from their
outputs and draws them in one figure with their pattern labels (the README's picture):

    python examples/attention_examples/demo_figure.py attention_outputs [-o demo_heads.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from neural_attn.client.render import plot_attention_heads

LAYER = "multi_head_attention_0"
# (run directory, head, what it learned to do)
HEADS = (
    ("", "previous token"),
    ("", "first token"),
    ("reverse", "reverse order"),
)


def _run(directory: Path) -> tuple[np.ndarray, dict, list[str]]:
    analysis = json.loads((directory / "analysis.json").read_text(encoding="utf-8"))
    with np.load(directory / "attention_weights.npz") as npz:
        attention = npz[LAYER][0]
    return attention, analysis["layers"][LAYER], analysis["tokens"]


def _strongest(metrics: dict, attention: np.ndarray, kind: str) -> int:
    """The head that does `kind` best, by where its rows put their weight."""
    n = attention.shape[-1]
    rows = np.arange(n)
    target = {
        "previous token": np.maximum(rows - 1, 0),
        "first token": np.zeros(n, dtype=int),
        "reverse order": n - 1 - rows,
    }[kind]
    return int(np.argmax([head[rows, target].mean() for head in attention]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outputs", type=Path, help="the demo's --output-dir")
    parser.add_argument("-o", "--output", type=Path, help="default: OUTPUTS/demo_heads.png")
    args = parser.parse_args()
    heads, labels, tokens = [], [], None
    for sub, kind in HEADS:
        attention, metrics, tokens = _run(args.outputs / sub)
        h = _strongest(metrics, attention, kind)
        heads.append(attention[h])
        labels.append(f"{kind}: {metrics['pattern_per_head'][h]}")
    output = args.output or args.outputs / "demo_heads.png"
    plot_attention_heads(
        np.stack(heads),
        tokens=tokens,
        labels=labels,
        title="Trained toy models (make demo)",
        output_path=output,
        dpi=110,
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
