"""Section 2: served warm ExtractAttention ÷ floors, each measured in a clean process of its own.

Models `TransformerEncoder(num_heads=8, ff_dim=512) * L` at width 256, batch 1: 3 layers at 128
tokens and 4 layers at 1,024 tokens, in both backends. Four things are timed side by side,
interleaved round by round:

- served: `AttentionClient.extract_attention` against a real gRPC server in its own process
  (`bench/_serve.py`, i.e. `create_server`) on loopback, warm (model compiled and run once),
  every layer consumed into numpy, from this process (which loads no framework);
- project pass: the project's own model, `stream()` layer by layer on its pass thread as the
  server runs it, with no gRPC;
- plain floor: no project code, `torch.nn.MultiheadAttention(need_weights=True,
  average_attn_weights=False)` / Keras 3 `MultiHeadAttention(return_attention_scores=True)`
  blocks of the same shape (bench/_floors.py), so the ratio cannot hide a slow capture;
- bare stream: the same bytes in the same chunks from a bare gRPC server (`_serve.py bare`).

The last three each run in a fresh process with nothing else loaded (`bench/_floor_worker.py`,
timed there), so no floor pays for a busy process; each row's note gives that process's
thread counts.

    python bench/bench_overhead.py [--sizes 128,1024] [--backends pytorch,tensorflow]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import (
    MIB,
    CleanFloor,
    Row,
    describe,
    failed_row,
    interleaved,
    network_source,
    ratio_row,
    section_main,
    served,
    thread_note,
)
from _floor_worker import threads

SECTION = "2"
WIDTH, HEADS, FF = 256, 8, 512
SIZES = {128: (3, "<= 1.15"), 1024: (4, "<= 1.3")}  # tokens: (layers, served ÷ pass target)
FLOOR_TARGET = "<= 1.3"  # served ÷ plain floor
WIRE_TARGET = {1024: "<= 1.15"}  # served ÷ (pass + bare stream), by tokens


def _tf_on_gpu() -> bool:
    try:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except ImportError:
        return False


def run(args: argparse.Namespace) -> list[Row]:
    from neural_attn.client import AttentionClient
    from neural_attn.server.config import ServerConfig

    rows: list[Row] = []
    dev = args.device
    backends = [b for b in args.backends.split(",") if b]
    if dev == "cuda" and "tensorflow" in backends and not _tf_on_gpu():
        rows.append(
            failed_row(SECTION, "tensorflow on GPU", "TensorFlow sees no GPU here", device=dev)
        )
        backends.remove("tensorflow")
    print(f"this process (served calls' client): {thread_note(threads())}", flush=True)
    chunk = ServerConfig().default_chunk_bytes
    with served("neural", dev) as target, AttentionClient(target, timeout=600) as client:
        for seq in [int(s) for s in args.sizes.split(",") if s]:
            for backend in backends:
                rows += _size(client, backend, seq, chunk, dev, args.budget)
    return rows


def _size(client, backend: str, seq: int, chunk: int, dev: str, budget: float) -> list[Row]:
    layers, pass_target = SIZES.get(seq, (4, "<= 1.3"))
    label = f"{backend} {layers}x{HEADS}x{seq}²"
    source = network_source(
        f"Overhead{seq}", seq=seq, width=WIDTH, heads=HEADS, ff=FF, layers=layers
    )
    data = np.random.default_rng(0).standard_normal((1, seq, WIDTH)).astype(np.float32)
    total = layers * HEADS * seq * seq * 4  # float32 bytes of every layer
    shape = {"seq": seq, "width": WIDTH, "layers": layers, "heads": HEADS, "ff": FF}
    floor_kind = "torch" if backend == "pytorch" else "keras"
    try:
        compiled = client.compile(source, filename=f"overhead_{seq}.neural", backend=backend)

        def serve() -> None:
            got = sum(1 for _ in client.extract_attention(compiled, data))
            assert got == layers, got

        with (
            served("bare", str(total), str(chunk)) as bare_target,
            CleanFloor(kind="bare", target=bare_target, total=total) as bare,
            CleanFloor(kind="project", backend=backend, source=source, device=dev, **shape) as own,
            CleanFloor(kind=floor_kind, device=dev, **shape) as floor,
        ):
            fns = {"served": serve, "pass": own, "floor": floor, "bare": bare}
            t = interleaved(
                fns,
                budget_s=(20.0 if seq <= 128 else 40.0) * budget,
                min_reps=3,
                max_reps=40,
            )
            notes = {k: thread_note(f.threads) for k, f in fns.items() if k != "served"}
    except Exception as exc:  # noqa: BLE001 - report and go on
        return [failed_row(SECTION, label, describe(exc), device=dev)]
    s, p, f, b = (t[k]["median_s"] for k in ("served", "pass", "floor", "bare"))
    floor_name = "torch MHA" if backend == "pytorch" else "keras MHA"
    common = {"device": dev}
    return [
        Row(
            SECTION,
            f"{label}: served ExtractAttention",
            s * 1e3,
            "ms",
            note=f"median of {t['served']['reps']}; {total / MIB:.0f} MiB attention",
            extra={"times_s": {k: v["all_s"] for k, v in t.items()}},
            **common,
        ),
        Row(
            SECTION,
            f"{label}: project pass, stream() (clean process)",
            p * 1e3,
            "ms",
            note=notes["pass"],
            **common,
        ),
        Row(
            SECTION,
            f"{label}: plain {floor_name} floor (clean process)",
            f * 1e3,
            "ms",
            note=notes["floor"],
            **common,
        ),
        Row(
            SECTION,
            f"{label}: bare gRPC stream of the same bytes (clean process)",
            b * 1e3,
            "ms",
            note=f"{total / MIB:.1f} MiB in {chunk // 1024} KiB messages; {notes['bare']}",
            **common,
        ),
        ratio_row(SECTION, f"{label}: served ÷ project pass", s, p, target=pass_target, **common),
        ratio_row(SECTION, f"{label}: served ÷ plain floor", s, f, target=FLOOR_TARGET, **common),
        ratio_row(
            SECTION,
            f"{label}: project pass ÷ plain floor",
            p,
            f,
            note="cost of the project's capture",
            **common,
        ),
        ratio_row(
            SECTION,
            f"{label}: served ÷ (project pass + bare stream)",
            s,
            p + b,
            target=WIRE_TARGET.get(seq, ""),
            note="1.00: no cost beyond computing, then sending, each layer",
            **common,
        ),
    ]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="128,1024", help="sequence lengths (128 and/or 1024)")
    p.add_argument("--backends", default="pytorch,tensorflow")


if __name__ == "__main__":
    section_main("2: served ExtractAttention vs floors in clean processes", run, add_args=add_args)
