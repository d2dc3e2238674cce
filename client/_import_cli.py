"""`neural-attn-client import CKPT_DIR -o OUT_DIR`: a Hugging Face checkpoint as a .neural file."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the `import` command to the CLI's subparsers."""
    p = sub.add_parser(
        "import",
        help="turn a Hugging Face checkpoint folder (BERT, RoBERTa, DistilBERT, GPT-2) into "
        "model.neural + neutral model.safetensors + its tokenizer files",
    )
    p.add_argument("checkpoint", help="the folder: config.json, model.safetensors, tokenizer")
    p.add_argument("-o", "--output", required=True, help="the folder to write (created)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from neural_attn.client._checkpoint import import_checkpoint

    report = import_checkpoint(args.checkpoint, args.output)
    print(report.summary())
    has_tokenizer = any(f in report.files for f in ("tokenizer.json", "vocab.txt"))
    given = f'--tokenizer {args.output} --text "..."' if has_tokenizer else "--data ids.npy"
    print(
        f"next: neural-attn-client visualize {args.output}/model.neural --weights "
        f"{args.output}/model.safetensors {given} --attention"
    )
    return 0
