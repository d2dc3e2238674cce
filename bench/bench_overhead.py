"""Section 2: served warm ExtractAttention ÷ an in-process forward pass that materializes attention.

Models `TransformerEncoder(num_heads=8, ff_dim=512) * L` at width 256, batch 1: 3 layers at 128
tokens and 4 layers at 1,024 tokens, in both backends. Three things are timed side by side:

- served: `AttentionClient.extract_attention` against a real gRPC server in its own process
  (`bench/_serve.py`, i.e. `create_server`) on loopback, warm (model compiled and run once),
  every layer consumed into numpy;
- project forward: `get_backend(b).build(net, seed=0).forward(data, capture=all layers)` in this
  process: the project's own model, attention materialized as numpy;
- plain floor: no project code, `torch.nn.MultiheadAttention(need_weights=True,
  average_attn_weights=False)` / Keras 3 `MultiHeadAttention(return_attention_scores=True)`
  blocks of the same shape (bench/_floors.py), so the ratio cannot hide a slow capture.

    python bench/bench_overhead.py [--sizes 128,1024] [--backends pytorch,tensorflow]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import (
    MIB,
    Row,
    bare_stream,
    describe,
    drain,
    failed_row,
    interleaved,
    network_source,
    ratio_row,
    section_main,
    served,
)

SECTION = "2"
WIDTH, HEADS, FF = 256, 8, 512
SIZES = {128: (3, "<= 1.15"), 1024: (4, "<= 1.3")}  # tokens: (layers, target)


def _sync(device: str):
    if device != "cuda":
        return None
    import torch

    return torch.cuda.synchronize


def _tf_on_gpu() -> bool:
    try:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except ImportError:
        return False


def run(args: argparse.Namespace) -> list[Row]:
    from _floors import keras_floor, torch_floor

    from neural_attn.backends.base import get_backend
    from neural_attn.backends.streaming import on_pass_thread
    from neural_attn.client import AttentionClient
    from neural_attn.dsl import compile_source
    from neural_attn.server.config import ServerConfig

    rows: list[Row] = []
    later: list[tuple] = []
    dev = args.device
    backends = [b for b in args.backends.split(",") if b]
    if dev == "cuda" and "tensorflow" in backends and not _tf_on_gpu():
        rows.append(
            failed_row(SECTION, "tensorflow on GPU", "TensorFlow sees no GPU here", device=dev)
        )
        backends.remove("tensorflow")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with served("neural", dev) as target, AttentionClient(target, timeout=600) as client:
        for seq in sizes:
            layers, target_ratio = SIZES.get(seq, (4, "<= 1.3"))
            shape = f"{layers}x{HEADS}x{seq}²"
            source = network_source(
                f"Overhead{seq}", seq=seq, width=WIDTH, heads=HEADS, ff=FF, layers=layers
            )
            net = compile_source(source, filename=f"overhead_{seq}.neural")
            names = [layer.name for _, layer in net.attention_sites]
            data = np.random.default_rng(0).standard_normal((1, seq, WIDTH)).astype(np.float32)
            attention_mib = layers * HEADS * seq * seq * 4 / MIB
            for backend in backends:
                label = f"{backend} {shape}"
                try:
                    compiled = client.compile(
                        source, filename=f"overhead_{seq}.neural", backend=backend
                    )
                    model = get_backend(backend).build(net, seed=0, device=dev)
                    floor = (
                        torch_floor(data, layers=layers, heads=HEADS, ff=FF, device=dev)
                        if backend == "pytorch"
                        else keras_floor(data, layers=layers, heads=HEADS, ff=FF)
                    )

                    def serve(c=compiled, data=data, names=names) -> None:
                        got = {name: a for name, a in client.extract_attention(c, data)}
                        assert len(got) == len(names), sorted(got)

                    def forward(m=model, data=data, names=names) -> None:
                        _, kept = m.forward(data, capture=names)
                        assert len(kept) == len(names)

                    # The floor runs on the thread the project's passes run on: torch work
                    # from a second thread would give this process a second OpenMP team and
                    # slow every pass in it, the project's and the floor's alike.
                    fns = {
                        "served": serve,
                        "forward": forward,
                        "floor": lambda f=floor: on_pass_thread(f),
                    }
                    t = interleaved(
                        fns,
                        budget_s=(15.0 if seq <= 128 else 30.0) * args.budget,
                        min_reps=3,
                        max_reps=40,
                        sync=_sync(dev),
                    )
                    if hasattr(model, "stream"):  # measured later, see below
                        later.append((label, model, serve, data, names, seq))
                except Exception as exc:  # noqa: BLE001 - report and go on
                    rows.append(failed_row(SECTION, label, describe(exc), device=dev))
                    continue
                s, f, p = (t[k]["median_s"] for k in ("served", "forward", "floor"))
                reps = t["served"]["reps"]
                floor_name = "torch MHA" if backend == "pytorch" else "keras MHA"
                common = {"device": dev}
                rows += [
                    Row(
                        SECTION,
                        f"{label}: served ExtractAttention",
                        s * 1e3,
                        "ms",
                        note=f"median of {reps}; {attention_mib:.0f} MiB attention",
                        extra={"times_s": {k: v["all_s"] for k, v in t.items()}},
                        **common,
                    ),
                    Row(SECTION, f"{label}: project forward + capture", f * 1e3, "ms", **common),
                    Row(SECTION, f"{label}: plain {floor_name} floor", p * 1e3, "ms", **common),
                    ratio_row(
                        SECTION,
                        f"{label}: served ÷ project forward",
                        s,
                        f,
                        target=target_ratio,
                        **common,
                    ),
                    ratio_row(
                        SECTION,
                        f"{label}: served ÷ plain floor",
                        s,
                        p,
                        target=target_ratio,
                        note="same target, stricter floor",
                        **common,
                    ),
                    ratio_row(
                        SECTION,
                        f"{label}: project forward ÷ plain floor",
                        f,
                        p,
                        note="cost of the project's capture",
                        **common,
                    ),
                ]
                del floor
        # Diagnosis, after every main row: the server's pass in-process (`stream()`, layer by layer
        # on the pass thread, as the server runs it) against the served call.
        chunk = ServerConfig().default_chunk_bytes
        for label, model, serve, data, names, seq in later:
            total = len(names) * HEADS * seq * seq * 4  # float32 bytes of every layer
            try:

                def stream(m=model, data=data, names=names) -> None:
                    n = 0
                    for _, a in m.stream(data, capture=names):
                        n += 1
                        del a
                    assert n == len(names)

                with bare_stream(total, chunk) as bare:
                    diag = interleaved(
                        {
                            "stream": stream,
                            "served": serve,
                            "bare": lambda bare=bare, total=total: drain(bare, total),
                        },
                        budget_s=(5.0 if seq <= 128 else 10.0) * args.budget,
                        sync=_sync(dev),
                    )
            except Exception as exc:  # noqa: BLE001 - report and go on
                rows.append(failed_row(SECTION, f"{label}: diagnosis", describe(exc), device=dev))
                continue
            st, s2, b = (diag[k]["median_s"] for k in ("stream", "served", "bare"))
            rows += [
                Row(
                    SECTION,
                    f"{label}: diagnosis: in-process stream() (server's pass, no gRPC)",
                    st * 1e3,
                    "ms",
                    note="layer by layer on the pass thread, as the server runs it",
                    device=dev,
                ),
                ratio_row(
                    SECTION,
                    f"{label}: diagnosis: served ÷ in-process stream()",
                    s2,
                    st,
                    note=f"gRPC, chunks, client (served {s2 * 1e3:.1f} ms in these rounds)",
                    device=dev,
                ),
                Row(
                    SECTION,
                    f"{label}: diagnosis: bare gRPC stream of the same bytes",
                    b * 1e3,
                    "ms",
                    note=f"{total / MIB:.1f} MiB in {chunk // 1024} KiB messages, pre-made",
                    device=dev,
                ),
                ratio_row(
                    SECTION,
                    f"{label}: diagnosis: served ÷ (stream() + bare stream)",
                    s2,
                    st + b,
                    note="1.00: no cost beyond computing, then sending, each layer",
                    device=dev,
                ),
            ]
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="128,1024", help="sequence lengths (128 and/or 1024)")
    p.add_argument("--backends", default="pytorch,tensorflow")


if __name__ == "__main__":
    section_main("2: served ExtractAttention vs in-process forward", run, add_args=add_args)
