"""transformers' own eager forward with output_attentions=True, the floor of section 5: built
in a clean process of its own (`_floor_worker.py`, kind "hf": torch and transformers only, no
server, no TensorFlow, no project code).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def hf_forward(path: str, seq: int) -> Callable[[], list[np.ndarray]]:
    """One eager forward of the checkpoint at `path` on `bench_ids` of `seq` tokens; returns
    every layer's attention as numpy, as a caller of the service gets it."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    ids = torch.as_tensor(bench_ids(model.config.vocab_size, seq))

    def once() -> list[np.ndarray]:
        with torch.inference_mode():
            out = model(ids, output_attentions=True)
        return [a.numpy() for a in out.attentions]

    return once


def bench_ids(vocab: int, seq: int) -> np.ndarray:
    """[CLS] and [SEP] around ordinary word-piece ids: the same ids in every process."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab, size=(1, seq))
    ids[0, 0], ids[0, -1] = 101, 102
    return ids
