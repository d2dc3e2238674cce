"""`make bench`: every benchmark section, each in a fresh process, then one table and
bench/results.json. Benchmarks measure; they never assert timings (and a failed row says why).

    python bench/run_all.py                      # all sections (about 10 minutes on 2 cores)
    python bench/run_all.py --only 2,3           # some sections
    python bench/run_all.py --budget 0.3         # fewer repetitions, a quicker look

Sections (each runnable alone as `python bench/bench_*.py`):
    0 bench_extract.py   the example model, served vs plain forward (the original `make bench`)
    1 bench_cli_long.py  2 x 8 x 4,096² through the installed CLI: completes, wall, peak RSS
    2 bench_overhead.py  served ÷ floors in clean processes (pass, plain MHA, bare gRPC), 128, 1,024
    3 bench_wire.py      512 MiB through ExtractAttention vs a bare gRPC stream
    4 bench_layers.py    12 layers in one pass vs 12 x one layer vs one sub-model per layer
    5 bench_pretrained.py  MiniLM-L6: served ÷ transformers at 128, 512; the page vs bertviz
    6 bench_any_length.py  the CLI at 32,768 (PyTorch) and 16,384 (TF) tokens; tiled ÷ whole

Where CUDA is present (torch.cuda.is_available()) sections 0, 2, 3 and 4 run again with the
models on the GPU, and their rows are kept apart in the table and in results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH, Row, cuda_available, machine, print_table, wait_until_quiet

SECTIONS = {
    "0": "bench_extract.py",
    "1": "bench_cli_long.py",
    "2": "bench_overhead.py",
    "3": "bench_wire.py",
    "4": "bench_layers.py",
    "5": "bench_pretrained.py",
    "6": "bench_any_length.py",
}
GPU_SECTIONS = ("0", "2", "3", "4")  # section 1's CLI picks the GPU itself (device auto)
ORDER = ("1", "6", "2", "3", "4", "5", "0")  # the long CLI first, on a quiet machine
# Sections timing both frameworks run once per backend, each in a fresh process: a process that
# has run TensorFlow can slow PyTorch's next passes (thread pools fighting over the cores).
PER_BACKEND = ("0", "2", "4", "5")
BACKENDS = ("pytorch", "tensorflow")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated sections, e.g. 2,3")
    parser.add_argument("--budget", default="1.0", help="scale repetitions (e.g. 0.3 for a look)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU pass")
    parser.add_argument("--output", default=str(BENCH / "results.json"))
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each section, wait up to this many seconds for the CPU to be < 25%% busy",
    )
    args = parser.parse_args()
    chosen = [s for s in ORDER if not args.only or s in args.only.split(",")]
    gpu = cuda_available() and not args.no_gpu
    devices = ["cpu", "cuda"] if gpu else ["cpu"]
    runs: list[tuple[str, str, str]] = []  # (section, device, backend or "")
    for device in devices:
        for s in chosen:
            if device == "cuda" and s not in GPU_SECTIONS:
                continue
            if s in PER_BACKEND:
                # TensorFlow here is the CPU build: on the GPU pass only PyTorch runs.
                names = BACKENDS if device == "cpu" else ("pytorch",)
                runs += [(s, device, b) for b in names]
            else:
                runs.append((s, device, ""))
    info = machine()
    print(
        f"neural-attn bench: {info['date']}, {info['cores']} cores, {info['cpu']}, "
        f"{info['memory_gib']} GiB; GPU: {info['cuda'] or 'no GPU here'}",
        flush=True,
    )
    started = time.perf_counter()
    rows: list[Row] = []
    loads: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for section, device, backend in runs:
            out = Path(tmp) / f"{section}-{device}-{backend}.json"
            cmd = [
                sys.executable,
                str(BENCH / SECTIONS[section]),
                "--json",
                str(out),
                "--device",
                device,
                "--budget",
                args.budget,
                *(["--backends", backend] if backend else []),
            ]
            busy, waited = wait_until_quiet(args.quiet_wait)
            t0 = time.perf_counter()
            load = os.getloadavg()[0]
            rc = subprocess.call(cmd, cwd=str(BENCH.parent))
            took = time.perf_counter() - t0
            loads[f"{section}-{device}-{backend}".rstrip("-")] = {
                "before": load,
                "after": os.getloadavg()[0],
                "cpu_busy_at_start": round(busy, 2),
                "waited_for_quiet_s": round(waited, 1),
            }
            got = [Row(**r) for r in json.loads(out.read_text())] if out.exists() else []
            if rc != 0 or not got:
                got.append(
                    Row(
                        section,
                        f"section {section} ({SECTIONS[section]})",
                        None,
                        note=f"FAILED: the section exited with status {rc}",
                        device=device,
                    )
                )
            print(
                f"[section {section} {backend} on {device}: {took:.0f} s; load average (1 min) "
                f"{load:.2f} before, {os.getloadavg()[0]:.2f} after; CPU {busy:.0%} busy at "
                f"the start, after waiting {waited:.0f} s for quiet]",
                flush=True,
            )
            rows += got
    total = time.perf_counter() - started
    print("\n" + "=" * 100)
    print(
        f"neural-attn bench, {info['date']}; {info['cores']} cores, {info['cpu']}; "
        f"commit {info.get('commit', '?')}; {total / 60:.1f} min"
    )
    print_table(rows)
    if not gpu:
        print("\n== GPU rows ==\nno GPU here (torch.cuda.is_available() is False)")
    Path(args.output).write_text(
        json.dumps(
            {
                "machine": info,
                "gpu": info["cuda"] or "no GPU here",
                "elapsed_s": round(total, 1),
                "load_average_1min": loads,
                "rows": [r.__dict__ for r in rows],
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
