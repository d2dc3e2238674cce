"""`neural-attn-client`: visualize the attention of a .neural model from the command line.

    neural-attn-client visualize model.neural --attention [--backend tensorflow|pytorch]
        [--data input.npy] [--tokens "The,cat,sat"] [--layer NAME] [--head N]
        [--server host:port] [--output-dir DIR] [--dtype float16] [--window Q0:Q1,K0:K1]
        [--npz-max-bytes SIZE | --no-npz]
        [--text "The cat sat" --vocab vocab.txt | --tokenizer DIR] [--figure-format png,svg,pdf]
        [--dpi N]
        [--format table|json] [--quiet]

Without --server (or $NEURAL_ATTN_SERVER) an embedded server runs in this process.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neural_attn.client._cli_common import (
    check_file,
    client_for,
    load_data,
    model_options,
    token_option,
)
from neural_attn.client._progress import NPZ_MAX_BYTES
from neural_attn.errors import NeuralAttnError

if TYPE_CHECKING:
    from neural_attn.client.attention_visualizer import AttentionVisualizer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neural-attn-client", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    _visualize_parser(sub)
    e = sub.add_parser(
        "export-weights",
        help="write a model's weights (e.g. converted from --weights) as a neutral .npz or "
        ".safetensors",
    )
    model_options(e)
    e.add_argument(
        "-o",
        "--output",
        required=True,
        help="the file to write: *.safetensors for safetensors, else a neutral .npz",
    )
    i = sub.add_parser("info", help="what a server runs: backends, devices, limits")
    i.add_argument("--server", help="host:port (default: embedded)")
    token_option(i)
    from neural_attn.client._analysis_cli import register

    register(sub, model_options)  # analyze, similarity, ablate, profile, compare
    from neural_attn.client._import_cli import register as register_import

    register_import(sub)
    return p


def _visualize_parser(sub: Any) -> None:
    """`visualize`: what to extract and how it travels, then the text and the outputs."""
    v = sub.add_parser("visualize", help="compile a .neural file and draw its attention")
    model_options(v)
    v.add_argument(
        "--attention",
        action="store_true",
        help="extract and draw attention (without it: print the layer table)",
    )
    v.add_argument("--data", help="input .npy: token ids (batch, seq) or features (batch, seq, d)")
    v.add_argument("--tokens", help="comma-separated token labels, one per position")
    v.add_argument("--layer", help="only this attention layer, e.g. transformer_encoder_1")
    v.add_argument("--head", type=int, help="draw this head instead of the mean of heads")
    v.add_argument("--batch-index", type=int, default=0, help="which item of a batch to draw")
    v.add_argument("--output-dir", default="attention_outputs")
    v.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="attention on the wire and in the npz: float32 (exact, default) or float16 (half "
        "the bytes)",
    )
    v.add_argument(
        "--window",
        type=_window,
        metavar="Q0:Q1,K0:K1",
        help="attention_weights.npz holds only this query range x key range, exact (e.g. "
        "0:256,: ; an empty bound is the start or the end)",
    )
    v.add_argument(
        "--npz-max-bytes",
        type=_bytes,
        default=NPZ_MAX_BYTES,
        metavar="SIZE",
        help="write attention_weights.npz only when it takes at most SIZE (e.g. 500M, 64G; "
        "none: any size; default 2G); over it, the CLI says how big it would be",
    )
    v.add_argument(
        "--no-npz",
        action="store_true",
        help="skip attention_weights.npz: only pooled attention and metrics leave the server",
    )
    _visualize_text_and_outputs(v)


def _visualize_text_and_outputs(v: argparse.ArgumentParser) -> None:
    v.add_argument(
        "--text",
        help='text to tokenize with --vocab into token ids and axis labels (e.g. "The cat sat"); '
        "for models that start with Embedding",
    )
    v.add_argument("--vocab", help="vocab.txt for --text: one token a line, its id the line number")
    v.add_argument(
        "--tokenizer",
        help="a checkpoint's own tokenizer for --text: the folder `import` wrote (tokenizer.json "
        "through the tokenizers library, or WordPiece vocab.txt), or one of those files; ids "
        "and special tokens as transformers' AutoTokenizer makes them",
    )
    v.add_argument(
        "--figure-format",
        action="append",
        metavar="png|svg|pdf",
        help="figure file formats, repeatable or a comma list (default png); pdf also writes "
        "attention_figures.pdf, a page per figure",
    )
    v.add_argument("--dpi", type=int, default=100, help="figure resolution (default 100)")
    v.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="console report: a table (default) or one JSON document on stdout",
    )


def _bytes(text: str) -> int | None:
    """'2G' -> 2 * 1024**3 (K, M, G, T: binary units; a plain number is bytes); 'none' -> None."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    if value == "NONE":
        return None
    scale = 1024 ** (" KMGT".index(value[-1]) if value and value[-1] in "KMGT" else 0)
    try:
        size = float(value.rstrip("KMGT")) * scale
    except ValueError:
        size = -1.0
    if not math.isfinite(size) or size < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: write bytes or a number with K, M, G or T (e.g. 500M, "
            "64G), or none"
        )
    return int(size)


def _window(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """'Q0:Q1,K0:K1' -> ((q0, q1), (k0, k1)); an empty start is 0, an empty stop the end (0)."""
    try:
        query, key = text.split(",")
        bounds = [
            tuple(int(b) if b.strip() else 0 for b in part.split(":")) for part in (query, key)
        ]
        (q0, q1), (k0, k1) = bounds
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a window: write Q0:Q1,K0:K1, e.g. 0:256,: (empty: start / end)"
        ) from None
    return (q0, q1), (k0, k1)


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    def progress(line: str) -> None:
        if not getattr(args, "quiet", False):
            from tqdm import tqdm

            # tqdm.write: a line printed while a bar is drawn (the npz's, on its own thread,
            # while the figures are drawn) goes above the bar instead of through it
            tqdm.write(f"... {line}", file=sys.stderr)

    return progress


def _visualizer(args: argparse.Namespace) -> AttentionVisualizer:
    from neural_attn.client.attention_visualizer import AttentionVisualizer

    progress = _progress(args)
    return AttentionVisualizer(
        None,
        args.backend,
        client=client_for(args, announce=progress),
        seed=args.seed,
        network=args.network,
        weights=args.weights,
        server_weights=args.server_weights,
        token=args.token,
        progress=progress,
        progress_bar=bool(getattr(args, "attention", False)) and not args.quiet,
    )


def _visualize(args: argparse.Namespace) -> int:
    check_file(args.file)
    if args.weights:
        check_file(args.weights)
    if args.vocab:
        check_file(args.vocab)
    if args.vocab and args.tokenizer:
        raise SystemExit("error: give --vocab or --tokenizer, not both")
    tokenize = args.vocab
    if args.tokenizer:
        from neural_attn.client._tokenize import PretrainedTokenizer

        tokenize = PretrainedTokenizer.load(args.tokenizer)
    tokens = [t.strip() for t in args.tokens.split(",")] if args.tokens else None
    viz = _visualizer(args)
    if not args.attention:
        from neural_attn.client._report import print_layer_table

        print_layer_table(viz.compile(args.file, args.backend), fmt=args.format)
        return 0
    result = viz.visualize_from_dsl(
        args.file,
        load_data(args.data),
        backend=args.backend,
        layer_name=args.layer,
        head_index=args.head,
        tokens=tokens,
        output_dir=args.output_dir,
        batch_index=args.batch_index,
        dtype=args.dtype,
        write_npz=not args.no_npz,
        npz_window=args.window,
        npz_max_bytes=args.npz_max_bytes,
        text=args.text,
        tokenize=tokenize,
        figure_formats=args.figure_format or ("png",),
        dpi=args.dpi,
    )
    from neural_attn.client._report import print_visualization

    print_visualization(result, output_dir=args.output_dir, fmt=args.format)
    return 0


def _export_weights(args: argparse.Namespace) -> int:
    check_file(args.file)
    viz = _visualizer(args)
    options = viz.compile_options(args.backend)
    fmt = "safetensors" if args.output.lower().endswith(".safetensors") else "npz"
    content = viz.client.export_weights(
        Path(args.file).read_text(encoding="utf-8"),
        filename=args.file,
        export_format=fmt,
        **options,
    )
    Path(args.output).write_bytes(content)
    print(f"wrote {args.output} ({len(content)} bytes, neutral .{fmt}: loads into either backend)")
    return 0


def _info(args: argparse.Namespace) -> int:
    client = client_for(args)
    target = client.target
    with client:
        info = client.server_info()
    print(f"neural-attn server {info['version']} at {target}")
    for name, backend in info["backends"].items():
        state = (
            f"{backend['version']} on {backend['device']}"
            if backend["available"]
            else (f"unavailable: {backend['detail']}")
        )
        print(f"  {name:<12} {state}")
    print(
        f"  max sequence length {info['max_sequence_length']}, "
        f"weights directory {'on' if info['weights_directory'] else 'off'}"
    )
    return 0


_COMMANDS = {"visualize": _visualize, "export-weights": _export_weights, "info": _info}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run = _COMMANDS.get(args.command) or args.run
        return run(args)
    except NeuralAttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
