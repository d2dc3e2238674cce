"""The head-analysis subcommands of `neural-attn-client`:

    neural-attn-client analyze    model.neural [model options] [--data x.npy] [masks]
    neural-attn-client similarity model.neural ... [--threshold 0.3]
    neural-attn-client ablate     model.neural ... [--head LAYER:H ...] [--heads-per-pass N]
    neural-attn-client profile    model.neural ... --data a.npy [--data b.npy ...] [--batch-size N]
    neural-attn-client compare    model.neural --weights A --weights-b B | --model-b other.neural

Each takes visualize's model options (--backend, --weights, --server, --seed, ...), prints with
`--format table|json|csv` (json: one document on stdout), and reports progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from neural_attn import analysis
from neural_attn.analysis import Metric
from neural_attn.client._cli_common import check_file, client_for, load_data
from neural_attn.errors import InvalidInputError

Row = dict[str, Any]


def register(sub: Any, model_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the subcommands to `sub` (the CLI's subparsers); each sets `run`."""
    helps = {
        "analyze": "per-head metrics and labels, with padding / chosen positions masked",
        "similarity": "Jensen-Shannon distance between every pair of heads; redundant groups",
        "ablate": "zero each head before the output projection; rank heads by output change",
        "profile": "per-head metric distributions and label shares over many inputs",
        "compare": "per-head metric deltas and JS divergence between two checkpoints",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        model_options(p)
        p.add_argument(
            "--data",
            action="append" if name == "profile" else "store",
            required=name == "profile",
            help="input .npy: token ids (batch, seq) or features (batch, seq, d)"
            + ("; repeat for several files" if name == "profile" else ""),
        )
        p.add_argument("--format", choices=("table", "json", "csv"), default="table")
        p.add_argument("--sequence-length", type=int, default=0, help="sample input length")
        if name != "ablate":
            p.add_argument("--layer", action="append", help="only this attention layer (repeat)")
            p.add_argument(
                "--mask-padding", action="store_true", help="leave out padding positions"
            )
            p.add_argument("--padding-id", type=int, default=0, help="the padding token id")
            p.add_argument(
                "--exclude-positions",
                type=_positions,
                default=(),
                metavar="0,-1",
                help="positions to leave out (a CLS, a separator); -1 is the last",
            )
        p.set_defaults(run=_RUNS[name])
    sub.choices["similarity"].add_argument(
        "--threshold", type=float, default=0.0, help="redundancy: JS distance (default 0.3)"
    )
    ablate = sub.choices["ablate"]
    ablate.add_argument(
        "--head", action="append", type=_head, metavar="LAYER:H", help="ablate only these"
    )
    ablate.add_argument("--heads-per-pass", type=int, default=0, help="ablations per pass")
    sub.choices["profile"].add_argument(
        "--batch-size", type=int, default=0, help="items per forward pass on the server"
    )
    compare = sub.choices["compare"]
    compare.add_argument("--weights-b", help="the second checkpoint of the same model")
    compare.add_argument("--model-b", help="a second .neural model of the same architecture")
    compare.add_argument(
        "--backend-b", choices=("tensorflow", "pytorch"), help="default: --backend"
    )


def _positions(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"positions are integers like 0,-1; got {text!r}"
        ) from None


def _head(text: str) -> tuple[str, int]:
    layer, _, head = text.rpartition(":")
    if not layer or not head.isdigit():
        raise argparse.ArgumentTypeError("a head is LAYER:INDEX, e.g. multi_head_attention_0:1")
    return layer, int(head)


# -- plumbing ---------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    return client_for(args, announce=lambda line: _note(args, line))


def _note(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(f"... {line}", file=sys.stderr, flush=True)


def _progress(args: argparse.Namespace) -> Callable[[dict[str, Any]], None]:
    def show(update: dict[str, Any]) -> None:
        total = f"/{update['total']}" if update["total"] else ""
        _note(args, f"{update['stage']} {update['done']}{total}")

    return show


def _compile(client: Any, args: argparse.Namespace, file: str, **overrides: Any) -> Any:
    check_file(file)
    options = {
        "backend": args.backend,
        "seed": args.seed,
        "network": args.network,
        "weights": args.weights,
        "server_weights": args.server_weights,
        **overrides,
    }
    if options["weights"]:
        check_file(options["weights"])
    model = client.compile_file(file, **options)
    for warning in model.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return model


def _data(args: argparse.Namespace) -> np.ndarray | None:
    return load_data(args.data)


def _masks(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mask_padding": args.mask_padding,
        "padding_id": args.padding_id,
        "exclude_positions": args.exclude_positions,
    }


def _emit(args: argparse.Namespace, document: dict[str, Any], rows: list[Row], title: str) -> int:
    """JSON: the whole document; CSV: the rows; table: the title, rows and provenance."""
    if args.format == "json":
        json.dump(document, sys.stdout, indent=2, default=_plain)
        sys.stdout.write("\n")
        return 0
    if args.format == "csv":
        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        return 0
    print(title)
    if rows:
        columns = list(rows[0])
        cells = [[_cell(row[c]) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for r in cells:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    for key in ("provenance", "provenance_a", "provenance_b"):
        if key in document:
            print(_provenance_line(key, document[key]))
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _provenance_line(key: str, p: dict[str, Any]) -> str:
    sane = "rows sum to 1" if p["rows_sum_to_one"] else "ROWS DO NOT SUM TO 1"
    finite = "finite" if p["finite"] else "NaN/Inf PRESENT"
    masked = "; masked: " + ", ".join(p["masked"]) if p["masked"] else ""
    weights = f"weights {p['weights_sha256'][:12]}" if p["weights_sha256"] else "random init"
    return (
        f"{key}: {p['backend'] or p['source']}, {weights}, {p['dtype']}, {p['items']} item(s), "
        f"{sane} (max error {p['max_row_error']:.1e}), {finite}, "
        f"{p['fully_masked_rows']} fully masked row(s){masked}; attention: {p['attention_path']}"
    )


# -- the commands -----------------------------------------------------------------------------
def _analyze(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = _compile(client, args, args.file)
        result = client.analyze_heads(
            model=model,
            data=_data(args),
            layers=args.layer,
            sequence_length=args.sequence_length,
            **_masks(args),
        )
    rows = [
        {
            "layer": name,
            "head": h,
            **{c.column or c.key: m[c.key][h] for c in _columns() if c.is_label},
            **{c.column or c.key: m[c.key][h] for c in _columns() if not c.is_label},
        }
        for name, m in result["layers"].items()
        for h in range(m["num_heads"])
    ]
    return _emit(args, result, rows, f"per-head metrics of {args.file}")


def _columns() -> list[Metric]:
    """The metrics in `analyze`'s rows (labels first), as `analysis.METRICS` names them."""
    return [m for m in analysis.METRICS if m.column is not None]


def _similarity(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = _compile(client, args, args.file)
        result = client.head_similarity(
            model=model,
            data=_data(args),
            layers=args.layer,
            sequence_length=args.sequence_length,
            threshold=args.threshold,
            **_masks(args),
        )
    heads = result["heads"]
    rows = [
        {
            "head_a": f"{heads[p['a']]['layer']}:{heads[p['a']]['head']}",
            "head_b": f"{heads[p['b']]['layer']}:{heads[p['b']]['head']}",
            "js_distance": p["distance"],
            "same_layer": p["same_layer"],
            "redundant": p["distance"] <= result["threshold"],
        }
        for p in result["pairs"]
    ]
    groups = "; ".join(
        "{" + ", ".join(f"{h['layer']}:{h['head']}" for h in g) + "}" for g in result["groups"]
    )
    title = (
        f"JS distance between heads of {args.file} (0 same, 1 disjoint), closest first; "
        f"redundant (<= {result['threshold']:g}): {groups or 'none'}"
    )
    return _emit(args, result, rows, title)


def _ablate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = _compile(client, args, args.file)
        result = client.ablate_heads(
            model,
            _data(args),
            heads=args.head,
            heads_per_pass=args.heads_per_pass,
            sequence_length=args.sequence_length,
            progress=_progress(args),
        )
    rows = [
        {
            "rank": h["rank"],
            "head": f"{h['layer']}:{h['head']}",
            "pattern": h["pattern"],
            "kl": h["kl"],
            "l2": h["l2"],
            "relative_l2": h["relative_l2"],
        }
        for h in result["heads"]
    ]
    title = (
        f"heads of {args.file} by the output change when zeroed (ranked by {result['ranked_by']})"
    )
    return _emit(args, result, rows, title)


def _batches(paths: list[str], size: int) -> tuple[Iterator[np.ndarray], int]:
    """Each file's items in messages of at most `size` items, read one message at a time."""
    arrays = []
    for path in paths:
        check_file(path)
        try:
            arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: cannot read --data {path}: {exc}") from None
    total = sum(int(a.shape[0]) for a in arrays)

    def batches() -> Iterator[np.ndarray]:
        for array in arrays:
            for start in range(0, array.shape[0], size):
                yield np.ascontiguousarray(array[start : start + size])

    return batches(), total


def _profile(args: argparse.Namespace) -> int:
    batches, total = _batches(args.data, max(args.batch_size, 256))
    with _client(args) as client:
        model = _compile(client, args, args.file)
        result = client.profile_heads(
            model,
            batches,
            layers=args.layer,
            batch_size=args.batch_size,
            total_items=total,
            progress=_progress(args),
            **_masks(args),
        )
    rows = []
    for layer, heads in result["layers"].items():
        for h in heads:
            top = max(h["labels"], key=h["labels"].get)
            for metric, stat in h["metrics"].items():
                rows.append(
                    {
                        "head": f"{layer}:{h['head']}",
                        "samples": h["samples"],
                        "top_label": f"{top} {h['labels'][top]:.0%}",
                        "metric": metric,
                        "mean": stat["mean"],
                        "std": stat["std"],
                        **{f"q{float(q):g}": v for q, v in stat["quantiles"].items()},
                    }
                )
    if args.format == "table":
        shown = {m.key for m in analysis.METRICS if m.in_profile_table}
        rows = [r for r in rows if r["metric"] in shown]
    exact = "exact" if result["exact_quantiles"] else "estimated from a bounded sample"
    title = f"per-head profile of {args.file} over {result['samples']} samples (quantiles {exact})"
    return _emit(args, result, rows, title)


def _compare(args: argparse.Namespace) -> int:
    if not (args.weights_b or args.model_b):
        raise InvalidInputError(
            "compare needs a second checkpoint: --weights-b B (same model) or --model-b "
            "other.neural (a second model of the same architecture)"
        )
    with _client(args) as client:
        model_a = _compile(client, args, args.file)
        model_b = _compile(
            client,
            args,
            args.model_b or args.file,
            backend=args.backend_b or args.backend,
            weights=args.weights_b,
            server_weights=None,
        )
        result = client.compare_checkpoints(
            model_a,
            model_b,
            _data(args),
            layers=args.layer,
            sequence_length=args.sequence_length,
            **_masks(args),
        )
    rows = [
        {
            "rank": h["rank"],
            "head": f"{h['layer']}:{h['head']}",
            "js_distance": h["js_distance"],
            "js_divergence": h["js_divergence"],
            "pattern": f"{h['pattern_a']} -> {h['pattern_b']}",
            **{
                m.compare_column: h["metrics"][m.key]["delta"]
                for m in analysis.METRICS
                if m.compare_column
            },
        }
        for h in result["heads"]
    ]
    b = f"{args.model_b or args.file} ({args.weights_b or 'random init'})"
    title = (
        f"heads by JS distance between a={args.file} ({args.weights or 'random init'}) and b={b}"
    )
    if result["unmatched_layers"]:
        title += f"; not compared: {', '.join(result['unmatched_layers'])}"
    return _emit(args, result, rows, title)


_RUNS: dict[str, Callable[[argparse.Namespace], int]] = {
    "analyze": _analyze,
    "similarity": _similarity,
    "ablate": _ablate,
    "profile": _profile,
    "compare": _compare,
}

__all__ = ["register"]
