"""Section 0 (the original `make bench`): warm ExtractAttention vs a plain forward pass of
examples/attention_examples/multi_layer_transformer.neural (3 encoders, 8 heads, 128 tokens,
width 512), both backends.

(a) `AttentionClient.extract_attention` through a real server on loopback, every layer streamed
and reassembled, and (b) the same model's in-process forward pass without capture. a/b is the
cost of the service around the model, capture included.

    python bench/bench_extract.py [--batch 1]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import ROOT, Row, describe, failed_row, interleaved, ratio_row, section_main, served

SECTION = "0"
MODEL = ROOT / "examples" / "attention_examples" / "multi_layer_transformer.neural"


def run(args: argparse.Namespace) -> list[Row]:
    from neural_attn.backends.base import get_backend
    from neural_attn.client import AttentionClient
    from neural_attn.dsl import compile_file

    network = compile_file(MODEL)
    data = np.random.default_rng(0).standard_normal((args.batch, 128, 512)).astype(np.float32)
    rows: list[Row] = []
    backends = [b for b in args.backends.split(",") if b]
    if args.device == "cuda":
        backends = [b for b in backends if b == "pytorch"]
    with served("neural", args.device) as target, AttentionClient(target, timeout=600) as client:
        for backend in backends:
            label = f"{backend} {MODEL.stem} (3x8x128², d=512)"
            try:
                compiled = client.compile_file(MODEL, backend=backend)
                model = get_backend(backend).build(network, seed=0, device=args.device)
                t = interleaved(
                    {
                        "extract": lambda c=compiled: dict(client.extract_attention(c, data)),
                        "forward": lambda m=model: m.forward(data),
                    },
                    budget_s=10.0 * args.budget,
                )
            except Exception as exc:  # noqa: BLE001
                rows.append(failed_row(SECTION, label, describe(exc), device=args.device))
                continue
            e, f = t["extract"]["median_s"], t["forward"]["median_s"]
            rows += [
                Row(
                    SECTION,
                    f"{label}: served",
                    e * 1e3,
                    "ms",
                    note=f"median of {t['extract']['reps']}",
                    extra={"times_s": {k: v["all_s"] for k, v in t.items()}},
                    device=args.device,
                ),
                Row(SECTION, f"{label}: forward, no capture", f * 1e3, "ms", device=args.device),
                ratio_row(SECTION, f"{label}: served ÷ forward", e, f, device=args.device),
            ]
    return rows


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default="pytorch,tensorflow")


if __name__ == "__main__":
    section_main("0: example model, served vs plain forward", run, add_args=add_args)
