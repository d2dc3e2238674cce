"""Section 4: one pass serves all layers. `TransformerEncoder(num_heads=8, ff_dim=512) * 12` at
512 tokens, width 256, batch 1, both backends, through a real server on loopback:

- 12 layers: one ExtractAttention call of the 12-layer model (every layer streamed and read);
- 12 x one layer: twelve calls of the 1-layer model of the same width (the floor: each layer's
  attention once, and as many attention bytes on the wire). TensorFlow's graph for a stream
  ends at the model's last attention, so its 1-layer call skips its block's feed-forward: the
  12-layer call computes 11 feed-forwards that TensorFlow's floor does not;
- the per-layer sub-model approach as baseline: one sub-model per layer, each re-running the
  prefix up to its layer (the 1..12-layer models; the call for model k extracts only its last
  layer), so the same 12 layers of attention cross the wire but layer i is computed 13 - i times.

Ratio 12 layers ÷ (12 x one layer); target <= 1.1.

    python bench/bench_layers.py [--layers 12] [--seq 512] [--backends pytorch,tensorflow]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import (
    Row,
    describe,
    failed_row,
    interleaved,
    network_source,
    ratio_row,
    section_main,
    served,
)

SECTION = "4"
WIDTH, HEADS, FF = 256, 8, 512


def run(args: argparse.Namespace) -> list[Row]:
    from neural_attn.client import AttentionClient

    dev = args.device
    depth, seq = args.layers, args.seq
    data = np.random.default_rng(0).standard_normal((1, seq, WIDTH)).astype(np.float32)
    rows: list[Row] = []
    backends = [b for b in args.backends.split(",") if b]
    if dev == "cuda":
        backends = [b for b in backends if b == "pytorch"]
    with served("neural", dev) as target, AttentionClient(target, timeout=600) as client:
        for backend in backends:
            label = f"{backend} {depth}x{HEADS}x{seq}²"
            try:
                prefixes = []  # model k has k + 1 layers
                for k in range(depth):
                    src = network_source(
                        f"Prefix{k + 1}", seq=seq, width=WIDTH, heads=HEADS, ff=FF, layers=k + 1
                    )
                    prefixes.append(
                        client.compile(src, filename=f"prefix_{k + 1}.neural", backend=backend)
                    )
                full, one = prefixes[-1], prefixes[0]

                def all_layers(full=full) -> None:
                    got = dict(client.extract_attention(full, data))
                    assert len(got) == depth, len(got)

                def one_layer_times_n(one=one) -> None:
                    for _ in range(depth):
                        assert len(dict(client.extract_attention(one, data))) == 1

                def sub_models(prefixes=prefixes) -> None:
                    for model in prefixes:
                        last = model.attention_layers[-1]
                        got = dict(client.extract_attention(model, data, layers=[last]))
                        assert list(got) == [last], list(got)

                t = interleaved(
                    {"all": all_layers, "one": one_layer_times_n, "sub": sub_models},
                    budget_s=40.0 * args.budget,
                    min_reps=3,
                    max_reps=10,
                )
            except Exception as exc:  # noqa: BLE001
                rows.append(failed_row(SECTION, label, describe(exc), device=dev))
                continue
            a, o, s = (t[k]["median_s"] for k in ("all", "one", "sub"))
            reps = t["all"]["reps"]
            rows += [
                Row(
                    SECTION,
                    f"{label}: {depth} layers, one call",
                    a * 1e3,
                    "ms",
                    note=f"median of {reps}",
                    extra={"times_s": {k: v["all_s"] for k, v in t.items()}},
                    device=dev,
                ),
                Row(
                    SECTION,
                    f"{label}: {depth} x one 1-layer call",
                    o * 1e3,
                    "ms",
                    note="TensorFlow's end at their attention: no feed-forward",
                    device=dev,
                ),
                Row(
                    SECTION,
                    f"{label}: sub-model per layer (baseline)",
                    s * 1e3,
                    "ms",
                    note=f"{depth} calls, prefix re-run",
                    device=dev,
                ),
                ratio_row(
                    SECTION,
                    f"{label}: {depth} layers ÷ ({depth} x one layer)",
                    a,
                    o,
                    target="<= 1.1",
                    device=dev,
                ),
                ratio_row(
                    SECTION,
                    f"{label}: baseline ÷ ({depth} x one layer)",
                    s,
                    o,
                    note="the per-layer sub-model approach",
                    device=dev,
                ),
            ]
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--backends", default="pytorch,tensorflow")


if __name__ == "__main__":
    section_main("4: one pass for all layers", run, add_args=add_args)
