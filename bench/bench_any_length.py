"""Section 6: any length. Exact attention in tiles of query rows, through the installed CLI.

    neural-attn-client visualize FILE --attention --backend B --output-dir TMP --quiet

on bench/models/long_32768.neural (2 encoders x 8 heads x 32,768 token ids, width 64: 32 GiB of
float32 attention per layer if it were whole) with PyTorch, and long_16384.neural with
TensorFlow, as child processes with the embedded server; each against the same file cut to 16
tokens (the RSS baseline). The exact npz is over the CLI's budget at these lengths, so the run
writes the page, figures, metrics and the pooled rollout, and says how big the npz would be.

Reported: completes, wall time, peak RSS above the 16-token run (target <= 1 GiB), and the wall
time against the tiled forward pass alone (every layer's tiles handed over and dropped; a fresh
process; target <= 3x for PyTorch at 32,768, reported for TensorFlow). Then at 4,096 tokens
(long_4096.neural): the forward pass in tiles (the backend's own tile size) against the same
pass computing each layer whole (today's path below the tile budget), in fresh processes that
alternate, three of each, so that one path can serve every length (target <= 1.0, no slower).

    python bench/bench_any_length.py [--timeout 1500] [--rss-cap-gib 6] [--only pytorch]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import MIB, MODELS, ROOT, Row, check, cuda_available, failed_row, section_main
from bench_cli_long import CLI, measured

SECTION = "6"
CASES = {"pytorch": MODELS / "long_32768.neural", "tensorflow": MODELS / "long_16384.neural"}
WHOLE_4096 = MODELS / "long_4096.neural"
RATIO_TARGET = "<= 3"  # the PyTorch run's CLI wall time against its tiled forward pass
ROUNDS = 3  # tiled and whole forward passes at 4,096, alternating fresh processes


def _short(model: Path, directory: Path) -> Path:
    """`model` cut to 16 tokens: the same architecture, the baseline's RSS."""
    length = model.stem.split("_")[-1]
    path = directory / f"{model.stem}_16.neural"
    path.write_text(model.read_text().replace(f"({length},)", "(16,)"))
    return path


def forward_child(backend: str, model: str, repeats: int, tile_elements: int) -> None:
    """In a fresh process: median wall time of one pass with every attention layer's tiles
    handed over and dropped (`tile_elements` > 0 sets the tile budget); printed as JSON."""
    import resource
    import statistics
    import time

    import numpy as np

    from neural_attn.backends.base import get_backend
    from neural_attn.dsl import compile_file

    net = compile_file(model)
    names = [layer.name for _, layer in net.attention_sites]
    shape = net.input_shape
    rng = np.random.default_rng(0)
    if len(shape) == 1:
        data = rng.integers(0, 1000, size=(1, shape[0]))
    else:
        data = rng.standard_normal((1, *shape)).astype(np.float32)
    built = get_backend(backend).build(net, seed=0, device="auto")
    if tile_elements:
        built.set_tile_elements(tile_elements)
    times, tiles = [], 0
    for i in range(repeats + 1):
        start = time.perf_counter()
        tiles = sum(1 for _ in built.stream(data, capture=names))
        if i or not repeats:
            times.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "median_s": statistics.median(times),
                "reps": len(times),
                "tiles": tiles,
                "peak_rss": usage.ru_maxrss * 1024,
            }
        )
    )


def _forward(backend: str, model: Path, *, repeats: int, tile_elements: int, timeout: float):
    argv = [sys.executable, __file__, "--forward-child", backend, str(model)]
    argv += ["--repeats", str(repeats), "--tile-elements", str(tile_elements)]
    child = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if child.returncode != 0:
        tail = [line for line in child.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"rc {child.returncode}: {tail[-1] if tail else ''}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _cli(backend: str, model: Path, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-any-"))
    try:
        cmd = [str(CLI), "visualize", str(model), "--attention", "--backend", backend]
        cmd += ["--output-dir", str(out), "--quiet"]
        print(f"running: {' '.join(cmd)}", flush=True)
        run = measured(cmd, timeout=args.timeout, rss_cap=int(args.rss_cap_gib * 2**30))
        run["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"  {model.name}: { ({k: v for k, v in run.items() if k != 'rss_samples'}) }", flush=True)
    return run


def _length_rows(backend: str, model: Path, args: argparse.Namespace, dev: str) -> list[Row]:
    length = int(model.stem.split("_")[-1])
    what = f"CLI 2x8x{length:,}², d=64, {backend}, embedded"
    with tempfile.TemporaryDirectory() as scratch:
        short = _cli(backend, _short(model, Path(scratch)), args)
    long = _cli(backend, model, args)
    ok = long["rc"] == 0 and not long["stopped"]
    why = long["stopped"] or f"exit status {long['rc']}: {long['last_stderr']}"
    above = (long["peak_rss"] - short["peak_rss"]) / MIB
    rows = [
        Row(
            SECTION,
            f"{what}: completes",
            float(ok),
            "bool",
            "yes",
            ok,
            "yes" if ok else f"NO — {why}",
            dev,
        ),
        Row(
            SECTION,
            f"  {length:,} tokens: wall time",
            long["wall_s"],
            "s",
            note="" if ok else "until it stopped",
            device=dev,
            extra={"files": long["files"]},
        ),
        Row(
            SECTION,
            f"  {length:,} tokens: peak RSS above the 16-token run",
            above,
            "MiB",
            "<= 1024",
            check(above, "<= 1024") if ok else False,
            f"16 tokens: {short['peak_rss'] / MIB:.0f} MiB, {length:,}: "
            f"{long['peak_rss'] / MIB:.0f} MiB",
            dev,
            extra={"rss_mib_over_time": long["rss_samples"][::10]},
        ),
    ]
    try:
        alone = _forward(backend, model, repeats=0, tile_elements=0, timeout=args.timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return [
            *rows,
            failed_row(SECTION, f"  {length:,} tokens: tiled forward alone", str(exc), device=dev),
        ]
    ratio = long["wall_s"] / alone["median_s"]
    target = RATIO_TARGET if backend == "pytorch" else ""  # TensorFlow's 16k: completes, bounded
    rows += [
        Row(
            SECTION,
            f"  {length:,} tokens: tiled forward pass alone",
            alone["median_s"],
            "s",
            note=f"{alone['tiles']} tiles, one pass, fresh process, peak RSS "
            f"{alone['peak_rss'] / MIB:.0f} MiB",
            device=dev,
        ),
        Row(
            SECTION,
            f"  {length:,} tokens: CLI wall ÷ tiled forward alone",
            ratio,
            "x",
            target,
            (check(ratio, target) if ok else False) if target else None,
            "one pass for the metrics, the rollout and the pooled view, every tile reduced; "
            "the 16-token run's time included",
            dev,
        ),
    ]
    return rows


def _tiled_vs_whole(args: argparse.Namespace, dev: str) -> list[Row]:
    rows = []
    for backend in ("pytorch", "tensorflow"):
        try:
            kw = {"repeats": 3, "timeout": args.timeout}
            runs: dict[int, list[dict]] = {0: [], 2**40: []}  # tile budget: default, whole
            for _ in range(ROUNDS):  # alternating, so drift on the machine falls on both
                for budget, done in runs.items():
                    done.append(_forward(backend, WHOLE_4096, tile_elements=budget, **kw))
            tiled, whole = (_median_run(runs[budget]) for budget in (0, 2**40))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            rows.append(
                failed_row(SECTION, f"4,096 tokens, {backend}: tiled ÷ whole", str(exc), device=dev)
            )
            continue
        ratio = tiled["median_s"] / whole["median_s"]
        rows.append(
            Row(
                SECTION,
                f"4,096 tokens, {backend}: tiled ÷ whole-layer forward",
                ratio,
                "x",
                "<= 1.0",
                check(ratio, "<= 1.0"),
                f"tiled {tiled['median_s']:.2f} s ({tiled['tiles']} tiles), whole "
                f"{whole['median_s']:.2f} s ({whole['tiles']}); the median of {ROUNDS} fresh "
                "processes, alternating, each the median of 3 passes",
                dev,
            )
        )
    return rows


def _median_run(runs: list[dict]) -> dict:
    """The run whose median time is the median of `runs`' (an odd number of them)."""
    return sorted(runs, key=lambda run: run["median_s"])[len(runs) // 2]


def run(args: argparse.Namespace) -> list[Row]:
    dev = "cuda" if cuda_available() else "cpu"
    rows: list[Row] = []
    for backend, model in CASES.items():
        if args.only and backend != args.only:
            continue
        try:
            rows += _length_rows(backend, model, args, dev)
        except Exception as exc:  # one backend's failure leaves the other's rows
            rows.append(failed_row(SECTION, f"CLI {model.name}, {backend}", str(exc), device=dev))
    rows += _tiled_vs_whole(args, dev)
    return rows


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=1500.0)
    parser.add_argument("--rss-cap-gib", type=float, default=6.0)
    parser.add_argument("--only", choices=tuple(CASES), help="one backend's long run")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--forward-child":
        parsed = argparse.ArgumentParser()
        parsed.add_argument("backend")
        parsed.add_argument("model")
        parsed.add_argument("--repeats", type=int, default=0)
        parsed.add_argument("--tile-elements", type=int, default=0)
        a = parsed.parse_args(sys.argv[2:])
        forward_child(a.backend, a.model, a.repeats, a.tile_elements)
    else:
        section_main("6: any length, exact attention in tiles", run, add_args=_args)
