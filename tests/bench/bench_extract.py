"""`make bench`: warm ExtractAttention through the embedded server vs a plain forward pass.

For multi_layer_transformer.neural (3 encoders, 8 heads, sequence 128, width 512), in each
backend: the median of N warm calls of (a) `AttentionClient.extract_attention` over loopback
gRPC, every layer streamed and reassembled, and (b) the same model's in-process forward pass
without capture. The ratio a/b is the cost of the service around the model.

    python tests/bench/bench_extract.py [--repeats 10] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "attention_examples" / "multi_layer_transformer.neural"


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description="ExtractAttention vs plain forward pass")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    from neural_attn.backends.base import get_backend
    from neural_attn.client import AttentionClient
    from neural_attn.client._embedded import embedded_target
    from neural_attn.dsl import compile_file

    network = compile_file(MODEL)
    data = np.random.default_rng(0).standard_normal((args.batch, 128, 512)).astype(np.float32)
    print(f"model: {MODEL.name}  input {data.shape}  repeats {args.repeats}")
    print(f"{'backend':<12}{'extract (ms)':>14}{'forward (ms)':>14}{'ratio':>8}")
    with AttentionClient(embedded_target()) as client:
        for backend in ("tensorflow", "pytorch"):
            compiled = client.compile_file(MODEL, backend=backend)
            extract = _median_seconds(
                lambda c=compiled: dict(client.extract_attention(c, data)), args.repeats
            )
            model = get_backend(backend).build(network, seed=0)
            forward = _median_seconds(lambda m=model: m.forward(data), args.repeats)
            print(
                f"{backend:<12}{extract * 1e3:>14.1f}{forward * 1e3:>14.1f}"
                f"{extract / forward:>8.2f}"
            )


if __name__ == "__main__":
    main()
