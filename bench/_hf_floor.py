"""transformers' own eager forward with output_attentions=True, alone in this process (torch and
transformers only: no server, no TensorFlow, no project code). Prints one JSON line.

    python bench/_hf_floor.py CKPT_DIR SEQ BUDGET_S
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np


def main() -> None:
    import torch
    from transformers import AutoModel

    path, seq, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    ids = torch.as_tensor(bench_ids(model.config.vocab_size, seq))

    def once() -> None:
        with torch.inference_mode():
            out = model(ids, output_attentions=True)
        # the attention as numpy, as a caller of the service gets it
        [a.numpy() for a in out.attentions]

    median, reps = median_time(once, budget)
    print(json.dumps({"median_s": median, "reps": reps}))


def median_time(once: Callable[[], None], budget: float) -> tuple[float, int]:
    """(median seconds, repetitions) of warm calls: one warm-up, then 3 to 40 within `budget`."""
    once()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 40):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def bench_ids(vocab: int, seq: int) -> np.ndarray:
    """[CLS] and [SEP] around ordinary word-piece ids: the same ids in every process."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab, size=(1, seq))
    ids[0, 0], ids[0, -1] = 101, 102
    return ids


if __name__ == "__main__":
    main()
