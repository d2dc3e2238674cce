"""The demo's picture of real heads: three of pretrained MiniLM-L6's heads on one sentence.

`make demo` imports the checkpoint (`neural-attn-client import`) and visualizes it with its own
tokenizer; this script takes three heads from that output directory and draws them side by side
with their pattern labels: the strongest previous-token head (layer 0 head 2), the head that
rests most on `[CLS]`, and the strongest next-token head.

    python examples/pretrained/minilm_figure.py attention_outputs/minilm [-o minilm_heads.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from neural_attn.client.render import plot_attention_heads

KINDS = ("previous token", "[CLS]", "next token")


def _target(kind: str, n: int) -> np.ndarray:
    rows = np.arange(n)
    if kind == "previous token":
        return np.maximum(rows - 1, 0)
    if kind == "next token":
        return np.minimum(rows + 1, n - 1)
    return np.zeros(n, dtype=int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outputs", type=Path, help="the --output-dir of the MiniLM run")
    parser.add_argument("-o", "--output", type=Path, help="default: OUTPUTS/minilm_heads.png")
    args = parser.parse_args()
    analysis = json.loads((args.outputs / "analysis.json").read_text(encoding="utf-8"))
    heads, labels = [], []
    with np.load(args.outputs / "attention_weights.npz") as npz:
        layers = {name: npz[name][0] for name in npz.files}  # (heads, q, k) of item 0
    for kind in KINDS:
        best = (-1.0, "", 0)
        for name, attention in layers.items():
            n = attention.shape[-1]
            scores = attention[:, np.arange(n), _target(kind, n)].mean(-1)
            h = int(scores.argmax())
            best = max(best, (float(scores[h]), name, h))
        score, name, h = best
        heads.append(layers[name][h])
        label = analysis["layers"][name]["pattern_per_head"][h]
        layer = name.rsplit("_", 1)[-1]
        labels.append(f"L{layer} H{h}, {kind} {score:.0%}: {label}")
    output = args.output or args.outputs / "minilm_heads.png"
    plot_attention_heads(
        np.stack(heads),
        tokens=analysis["tokens"],
        labels=labels,
        title="Pretrained MiniLM-L6 (all-MiniLM-L6-v2), its own word pieces (make demo)",
        output_path=output,
        dpi=110,
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
