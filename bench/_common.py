"""Shared pieces of the benchmarks: timing, servers in their own process, rows and the table.

Benchmarks measure; they never assert. Every timing is the median of several warm repetitions;
figures that are compared with each other are measured side by side, interleaved round by round,
so that load from elsewhere on the machine falls on both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MODELS = BENCH / "models"
MIB = 1024 * 1024

Fn = Callable[[], Any]


# -- timing -----------------------------------------------------------------------------------
def interleaved(
    fns: dict[str, Fn],
    *,
    budget_s: float = 6.0,
    min_reps: int = 3,
    max_reps: int = 25,
    sync: Fn | None = None,
) -> dict[str, dict[str, Any]]:
    """Median wall time of each function, measured round by round, each round starting one
    function later (A B C, B C A, C A B, ...): what one call leaves behind (a server's OpenMP
    threads still spinning for a few ms after its pass) falls on every function alike.

    One warm-up call each first (not counted); the number of rounds follows from the warm-up
    times and `budget_s`, between `min_reps` and `max_reps`. `sync` (e.g. cuda synchronize) is
    called before each clock read. A function marked `self_timed` (a `CleanFloor`) returns
    the seconds it measured itself, and that is what counts.
    """

    def timed(fn: Fn) -> float:
        if sync:
            sync()
        start = time.perf_counter()
        result = fn()
        if sync:
            sync()
        if getattr(fn, "self_timed", False):
            return float(result)
        return time.perf_counter() - start

    warm = {name: timed(fn) for name, fn in fns.items()}
    per_round = max(sum(warm.values()), 1e-6)
    reps = int(min(max_reps, max(min_reps, budget_s // per_round)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(reps):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            times[name].append(timed(fns[name]))
    return {
        name: {"median_s": statistics.median(ts), "reps": len(ts), "all_s": ts}
        for name, ts in times.items()
    }


# -- rows ------------------------------------------------------------------------------------
@dataclass
class Row:
    section: str
    label: str
    value: float | None  # None: the row failed or is text only
    unit: str = ""  # "ms", "s", "MiB", "MB/s", "x" (ratio), ""
    target: str = ""  # e.g. "<= 1.15"
    met: bool | None = None
    note: str = ""
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def check(value: float | None, target: str) -> bool | None:
    """Whether `value` meets a target written "<= x" or ">= x"."""
    if value is None or not target:
        return None
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def ratio_row(section: str, label: str, num: float | None, den: float | None, **kw: Any) -> Row:
    value = num / den if num and den else None
    target = kw.pop("target", "")
    return Row(section, label, value, "x", target, check(value, target), **kw)


def failed_row(section: str, label: str, why: str, **kw: Any) -> Row:
    return Row(section, label, None, note=f"FAILED: {why}", **kw)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:240]


def fmt_value(row: Row) -> str:
    if row.value is None:
        return "—"
    v = row.value
    if row.unit == "bool":
        return "yes" if v else "NO"
    if row.unit == "x":
        return f"{v:.2f}"
    if row.unit == "%":
        return f"{v:.0f} %"
    if row.unit in ("ms",):
        return f"{v:,.1f} ms"
    if row.unit == "s":
        return f"{v:,.2f} s"
    if row.unit in ("MiB", "MB/s", "MiB/s"):
        return f"{v:,.1f} {row.unit}"
    if row.unit == "MB":
        return f"{v:,.3f} MB" if v < 10 else f"{v:,.1f} MB"
    if row.unit == "B":
        return f"{v:,.0f} B"
    return f"{v:g} {row.unit}".strip()


def status(row: Row) -> str:
    if row.met is True:
        return "met"
    if row.met is False:
        return "MISSED"
    return ""


def print_table(rows: list[Row], *, file: Any = None) -> None:
    file = file or sys.stdout
    groups = [("CPU", [r for r in rows if r.device == "cpu"])]
    gpu = [r for r in rows if r.device != "cpu"]
    if gpu:
        groups.append(("GPU", gpu))
    for title, group in groups:
        if not group:
            continue
        width = max(len(r.label) for r in group) + 2
        print(f"\n== {title} rows ==", file=file)
        print(f"{'sec':<5}{'row':<{width}}{'value':>16}  {'target':<10}{'':<8}note", file=file)
        for r in group:
            print(
                f"{r.section:<5}{r.label:<{width}}{fmt_value(r):>16}  {r.target:<10}"
                f"{status(r):<8}{r.note}",
                file=file,
                flush=True,
            )


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem,
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
        info["cuda"] = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["commit"] = commit + (" (+ uncommitted changes)" if dirty else "")
    return info


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over `seconds` (from /proc/stat), whoever keeps them busy."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_quiet(max_wait_s: float, threshold: float = 0.25) -> tuple[float, float]:
    """Wait (at most `max_wait_s`) until under `threshold` of the CPU is busy; returns the last
    busy fraction seen and the seconds waited. Benchmarks on a shared machine start quiet."""
    start = time.perf_counter()
    busy = cpu_busy()
    while busy >= threshold and time.perf_counter() - start < max_wait_s:
        busy = cpu_busy(2.0)
    return busy, time.perf_counter() - start


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


# -- servers in their own process ------------------------------------------------------------
@contextlib.contextmanager
def served(kind: str, *args: str) -> Iterator[str]:
    """Start `bench/_serve.py KIND ARGS` (a real gRPC server in its own process); yield its
    "127.0.0.1:port". It stops when its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_serve.py"), kind, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            proc.wait(timeout=30)
            raise RuntimeError(f"the {kind} server did not start (rc {proc.returncode})")
        yield f"127.0.0.1:{int(line.split()[1])}"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """End a helper process that stops when its stdin closes (killed after 20 s)."""
    if proc.stdin:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class CleanFloor:
    """A floor in a clean process of its own (`bench/_floor_worker.py SPEC`): calling it runs
    the floor once there and returns the seconds that took, timed in that process.
    `threads` is what that process reported of its threads once it was warm."""

    self_timed = True

    def __init__(self, **spec: Any) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(BENCH / "_floor_worker.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("READY "):
            self.close()
            rc = self._proc.returncode
            raise RuntimeError(f"the {spec['kind']} floor did not start (rc {rc})")
        self.threads: dict[str, Any] = json.loads(line.split(" ", 1)[1])

    def __call__(self) -> float:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("run\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline()
        if not answer.strip():
            raise RuntimeError(f"the floor process ended (rc {self._proc.poll()})")
        return float(answer)

    def close(self) -> None:
        _stop(self._proc)

    def __enter__(self) -> CleanFloor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def thread_note(threads: dict[str, Any]) -> str:
    """A process's thread counts as one short note."""
    return ", ".join(f"{k} {v}" for k, v in threads.items() if k != "loaded") + (
        f"; loaded: {'+'.join(threads.get('loaded', [])) or 'numpy only'}"
    )


@contextlib.contextmanager
def bare_stream(total: int, chunk: int) -> Iterator[Callable[..., Iterator[bytes]]]:
    """A bare gRPC server (`_serve.py bare`) in its own process; yields the call that streams
    its `total` bytes in `chunk`-byte messages: the floor of the wire for those bytes."""
    import grpc
    from _serve import BARE_METHOD

    options = [("grpc.max_receive_message_length", 512 * MIB)]
    with (
        served("bare", str(total), str(chunk)) as target,
        grpc.insecure_channel(target, options=options) as channel,
    ):
        yield channel.unary_stream(BARE_METHOD, request_serializer=None, response_deserializer=None)


def drain(call: Callable[..., Iterator[bytes]], total: int) -> None:
    """One call of a `bare_stream`, every message received and dropped."""
    received = sum(len(m) for m in call(b"", timeout=600))
    assert received == total, received


def network_source(name: str, *, seq: int, width: int, heads: int, ff: int, layers: int) -> str:
    return (
        f"network {name} {{\n  input: ({seq}, {width})\n  layers:\n"
        f"    TransformerEncoder(num_heads={heads}, ff_dim={ff}) * {layers}\n}}\n"
    )


# -- running a section -----------------------------------------------------------------------
def section_main(
    title: str,
    run: Callable[[argparse.Namespace], list[Row]],
    *,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> list[Row]:
    """The `python bench/bench_x.py` entry: run, print the table, write --json if asked."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--json", help="append the rows to this JSON file")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="where the models run"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="scale the time each measurement may take (more repetitions)",
    )
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    print(f"# {title} [{args.device}]", flush=True)
    try:
        rows = run(args)
    except Exception as exc:  # a broken section reports itself and the others go on
        traceback.print_exc()
        rows = [failed_row(title.split(":")[0], title, describe(exc), device=args.device)]
    print_table(rows)
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(old + [asdict(r) for r in rows], indent=1))
    return rows
