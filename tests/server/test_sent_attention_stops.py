"""The server's check of sent attention (rows summing to 1) runs a block of rows at a time and
stops between blocks when its call is cancelled: a 512 MiB layer was a second of work no
deadline could cut."""

from __future__ import annotations

import numpy as np
import pytest

from neural_attn import wire
from neural_attn.errors import CancelledError
from neural_attn.server import convert
from neural_attn.v1 import attention_pb2 as pb


def _sent(shape: tuple[int, ...]) -> pb.AttentionSet:
    probs = np.full(shape, 1.0 / shape[-1], np.float32)
    return pb.AttentionSet(layers=[pb.NamedTensor(name="l", tensor=wire.to_proto(probs))])


def test_the_row_check_asks_between_blocks_and_stops():
    sent = _sent((1, 4, 2048, 2048))  # 64 MiB: several blocks of rows
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(CancelledError):
        convert.attention_set(sent, max_elements=1 << 30, should_stop=should_stop)
    assert len(asked) == 3
    assert convert.attention_set(sent, max_elements=1 << 30)["l"].shape == (1, 4, 2048, 2048)
