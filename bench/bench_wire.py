"""Section 3: the wire. 512 MiB of float32 attention (4 layers x 8 heads x 2,048², width 64,
PyTorch) streamed by ExtractAttention in 1 MiB chunks, against a bare gRPC server-streaming
method that sends the same number of bytes, pre-made, in the same chunk size (bench/_serve.py).

Both servers run in their own process on loopback; both clients read every message. MB/s is
bytes of attention ÷ wall time of the whole call: nothing is subtracted, so the served figure
includes the forward pass (reported on its own row, so the reader sees what part is compute).

    python bench/bench_wire.py [--seq 2048] [--layers 4] [--chunk 1048576]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import (
    MIB,
    Row,
    bare_stream,
    check,
    describe,
    drain,
    failed_row,
    interleaved,
    network_source,
    ratio_row,
    section_main,
    served,
)

SECTION = "3"
HEADS, WIDTH, FF = 8, 64, 128


def run(args: argparse.Namespace) -> list[Row]:
    from neural_attn.backends.base import get_backend
    from neural_attn.client import AttentionClient
    from neural_attn.dsl import compile_source

    dev = args.device
    seq, layers, chunk = args.seq, args.layers, args.chunk
    total = layers * HEADS * seq * seq * 4
    shape = f"{layers}x{HEADS}x{seq}²"
    source = network_source("Wire", seq=seq, width=WIDTH, heads=HEADS, ff=FF, layers=layers)
    net = compile_source(source, filename="wire.neural")
    names = [layer.name for _, layer in net.attention_sites]
    data = np.random.default_rng(0).standard_normal((1, seq, WIDTH)).astype(np.float32)
    rows: list[Row] = []
    mb = total / 1e6

    buffer = np.empty(total, dtype=np.uint8)

    with (
        served("neural", dev) as target,
        bare_stream(total, chunk) as bare,
        AttentionClient(target, timeout=600) as client,
    ):

        def bare_copy() -> None:
            at = 0
            for m in bare(b"", timeout=600):
                buffer[at : at + len(m)] = np.frombuffer(m, dtype=np.uint8)
                at += len(m)
            assert at == total, at

        try:
            compiled = client.compile(source, filename="wire.neural", backend="pytorch")

            def serve() -> None:
                n = 0
                for _, a in client.extract_attention(compiled, data, max_chunk_bytes=chunk):
                    n += a.nbytes
                    del a
                assert n == total, n

            fns = {
                "served": serve,
                "bare": lambda: drain(bare, total),
                "bare_copy": bare_copy,
            }
            model = get_backend("pytorch").build(net, seed=0, device=dev)
            fns["forward"] = lambda: model.forward(data, capture=names)
            t = interleaved(fns, budget_s=40.0 * args.budget, min_reps=3, max_reps=9)
        except Exception as exc:  # noqa: BLE001
            return [failed_row(SECTION, f"pytorch {shape} wire", describe(exc), device=dev)]

    s, b, bc, f = (t[k]["median_s"] for k in ("served", "bare", "bare_copy", "forward"))
    reps = t["served"]["reps"]
    ratio = b / s * 100  # served MB/s ÷ bare MB/s, in percent
    rows += [
        Row(
            SECTION,
            f"served ExtractAttention {shape} ({total / MIB:.0f} MiB)",
            mb / s,
            "MB/s",
            note=f"{s:.2f} s per call, median of {reps}, chunk {chunk // 1024} KiB",
            extra={"times_s": {k: v["all_s"] for k, v in t.items()}},
            device=dev,
        ),
        Row(
            SECTION,
            "bare gRPC stream, same bytes & chunk (receive only)",
            mb / b,
            "MB/s",
            note=f"{b:.2f} s per call",
            device=dev,
        ),
        Row(
            SECTION,
            "bare gRPC stream + copy into one array",
            mb / bc,
            "MB/s",
            note=f"{bc:.2f} s per call",
            device=dev,
        ),
        Row(
            SECTION,
            "served ÷ bare (throughput)",
            ratio,
            "%",
            ">= 80",
            check(ratio, ">= 80"),
            note="nothing subtracted: the served call includes the forward pass",
            device=dev,
        ),
        Row(
            SECTION,
            "in-process forward + capture, same model",
            f * 1e3,
            "ms",
            note=f"{f / s * 100:.0f} % of the served call's time",
            device=dev,
        ),
        Row(
            SECTION,
            "diagnosis: served less the forward pass, as throughput",
            mb / (s - f) if s > f else None,
            "MB/s",
            note=f"{b / (s - f) * 100:.0f} % of bare" if s > f else "served under forward",
            device=dev,
        ),
        ratio_row(
            SECTION,
            "diagnosis: served ÷ (forward + bare stream)",
            s,
            f + b,
            note="1.00: no cost beyond computing, then sending, each layer",
            device=dev,
        ),
    ]
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1 * MIB, help="chunk bytes (max_chunk_bytes)")


if __name__ == "__main__":
    section_main("3: the wire, served vs bare gRPC", run, add_args=add_args)
