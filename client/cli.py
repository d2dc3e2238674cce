"""`neural-attn-client`: visualize the attention of a .neural model from the command line.

    neural-attn-client visualize model.neural --attention [--backend tensorflow|pytorch]
        [--data input.npy] [--tokens "The,cat,sat"] [--layer NAME] [--head N]
        [--server host:port] [--output-dir DIR]

Without --server (or $NEURAL_ATTN_SERVER) an embedded server runs in this process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from neural_attn.errors import NeuralAttnError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neural-attn-client", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("visualize", help="compile a .neural file and draw its attention")
    v.add_argument("file", help="the .neural model file")
    v.add_argument(
        "--attention",
        action="store_true",
        help="extract and draw attention (without it: print the layer table)",
    )
    v.add_argument("--backend", choices=("tensorflow", "pytorch"), default="tensorflow")
    v.add_argument("--data", help="input .npy: token ids (batch, seq) or features (batch, seq, d)")
    v.add_argument("--tokens", help="comma-separated token labels, one per position")
    v.add_argument("--layer", help="only this attention layer, e.g. transformer_encoder_1")
    v.add_argument("--head", type=int, help="draw this head instead of the mean of heads")
    v.add_argument("--server", help="host:port of a neural-attn server (default: embedded)")
    v.add_argument("--output-dir", default="attention_outputs")
    v.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    v.add_argument("--network", help="which network, when the file defines several")
    v.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _load_data(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read --data {path}: {exc}") from None


def _visualize(args: argparse.Namespace) -> int:
    from neural_attn.client.visualizer import AttentionVisualizer

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"... {line}", file=sys.stderr, flush=True)

    if not Path(args.file).is_file():
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return 2
    tokens = [t.strip() for t in args.tokens.split(",")] if args.tokens else None
    server = args.server or os.environ.get("NEURAL_ATTN_SERVER")
    viz = AttentionVisualizer(
        None, args.backend, server=server, seed=args.seed, network=args.network, progress=progress
    )
    if not args.attention:
        compiled = viz.client.compile_file(
            args.file, backend=args.backend, seed=args.seed, network=args.network
        )
        print(f"{compiled.network_name} ({compiled.backend}, {compiled.parameter_count} params)")
        for layer in compiled.layers:
            mark = "  [attention]" if layer.is_attention else ""
            print(f"  {layer.name:<32} {layer.type:<24} {layer.output_shape}{mark}")
        print("add --attention to extract and draw attention")
        return 0
    result = viz.visualize_from_dsl(
        args.file,
        _load_data(args.data),
        backend=args.backend,
        layer_name=args.layer,
        head_index=args.head,
        tokens=tokens,
        output_dir=args.output_dir,
    )
    for warning in result["model"].warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(result["summary"])
    print(f"\nOutputs in {args.output_dir}/:")
    for path in result["files"].values():
        print(f"  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _visualize(args)
    except NeuralAttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
