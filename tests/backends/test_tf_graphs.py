"""TensorFlow's blocks run as graphs traced once each: a model of many blocks, and a second
model after it, run without TensorFlow's "triggered tf.function retracing" warning, which
would otherwise reach every user's terminal (the embedded server's log) on their first pass."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from neural_attn.backends.base import get_backend
from neural_attn.dsl import compile_source

pytest.importorskip("tensorflow")

SOURCE = """network Deep {
  input: (None,)
  layers:
    Embedding(input_dim=50, output_dim=16)
    TransformerEncoder(num_heads=2, ff_dim=32, num_layers=7)
}
"""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_seven_blocks_and_a_second_model_trace_without_a_retracing_warning():
    net = compile_source(SOURCE)
    names = [layer.name for _, layer in net.attention_sites]
    records = _Records()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(records)
    try:
        for seed in (0, 1):  # a second model: its blocks trace again
            model = get_backend("tensorflow").build(net, seed=seed, device="cpu")
            for length in (5, 9, 12):  # a second length makes the traces shape-generic
                ids = np.arange(1, length + 1, dtype=np.int64)[None] % 50
                seen = [name for name, _ in model.stream(ids, capture=names)]
                assert seen == names
    finally:
        logger.removeHandler(records)
    retraced = [m for m in records.messages if "retracing" in m]
    assert not retraced, retraced[0]
