"""The whole forward pass as one TensorFlow graph, each attention layer handed over from inside it.

One tf.function per block (`build._compile_calls`) costs TensorFlow about a millisecond a call
on the CPU beyond its ops: MiniLM-L6 at 128 tokens took 38 ms as nine graphs and 27.5 as one.
In the one graph, an op before each attention block calls the pass's `capture.gate()` (a
stream's flow control: it waits while the caller still holds the last layer, and it is where
the pass stops when asked) and an op after it hands the block's probabilities to `capture`, so
layers still leave one at a time, each as soon as it is computed.

An op waiting at the gate holds one of TensorFlow's inter-op threads, and a slow reader keeps
it there. So at most the pool's size less one passes run this way at once: readers that stop
reading can never take every thread. The others run block by block, as do a pass whose
attention comes in tiles (long sequences: its tiles are handed over from Python), one with
head masks, one on a GPU, and a network whose sequence length may change before its last
attention block (a pooling or a convolution, where the input's length says nothing about the
attention's) or whose attention sits inside a residual block.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from neural_attn.backends.tensorflow import blocks
from neural_attn.dsl.ir import Network

# Layer types whose output has as many positions as their input.
_SAME_LENGTH = frozenset(
    {
        "Embedding",
        "PositionalEncoding",
        "LayerNormalization",
        "BatchNormalization",
        "Dense",
        "Dropout",
        "Activation",
        "TransformerEncoder",
        "TransformerDecoder",
        "MultiHeadAttention",
    }
)


def fits(network: Network) -> bool:
    """Whether every attention layer is a top-level layer and sees as many positions as the
    input has: every layer before the last attention layer keeps the length (a residual block
    does, or it could not add its input back) and holds no attention inside."""
    last = max((i for i, layer in enumerate(network.layers) if layer.is_attention), default=-1)
    for layer in network.layers[:last]:
        if layer.type == "ResidualConnection":
            if any(inner.is_attention for inner in layer.walk()):
                return False
        elif layer.type not in _SAME_LENGTH:
            return False
    return last >= 0


class _Stop(Exception):
    """The pass was asked to stop at a gate."""


@dataclass
class _Running:
    capture: Any
    should_stop: Callable[[], bool] | None
    raised: BaseException | None = None


# The passes inside a graph now, by the token their graph was called with.
_RUNNING: dict[int, _Running] = {}
_TOKENS = itertools.count()


def _inter_op_threads() -> int:
    configured = tf.config.threading.get_inter_op_parallelism_threads()
    return configured if configured > 0 else len(os.sched_getaffinity(0))


# With a pool of one thread (one core), none: a waiting gate would hold all of it.
_SLOTS = threading.BoundedSemaphore(max(_inter_op_threads() - 1, 0))


def _op(body: Callable[..., None]) -> Callable[..., np.int64]:
    """`body(running, *arrays)` as the function of a numpy_function op of the pass `token`;
    what it raises is kept for the pass to raise (TensorFlow would turn it into an op error)."""

    def call(token: np.ndarray, *arrays: np.ndarray) -> np.int64:
        running = _RUNNING[int(token)]
        try:
            body(running, *arrays)
        except BaseException as exc:
            running.raised = exc
            raise
        return np.int64(0)

    return call


def _gate(running: _Running) -> None:
    if running.should_stop is not None and running.should_stop():
        raise _Stop
    running.capture.gate()


def _hand(name: str) -> Callable[[_Running, np.ndarray], None]:
    def hand(running: _Running, probs: np.ndarray) -> None:
        running.capture[name] = probs

    return hand


def _after(x: tf.Tensor, op: tf.Tensor) -> tf.Tensor:
    """x, once `op` has run."""
    with tf.control_dependencies([op]):
        return tf.identity(x)


class OneGraph:
    """`NeuralModel.run` as one graph where it can (see the module's docstring), block by
    block where it cannot."""

    def __init__(self, model: blocks.NeuralModel, graph: Callable[..., Any]) -> None:
        self.model = model
        self._graph = graph  # how the backend makes a tf.function
        # by the number of leading layers skipped, and whether the graph serves a stream
        self._graphs: dict[tuple[int, bool], Any] = {}
        self._attention = [b for b in model.blocks if isinstance(b, blocks.ATTENTION_BLOCKS)]

    def run(
        self,
        x: tf.Tensor,
        *,
        capture: Any,
        start: int = 0,
        should_stop: Callable[[], bool] | None = None,
    ) -> tf.Tensor | None:
        """`NeuralModel.run`: the output, or None when `should_stop()` said yes at a gate."""
        tiled = any(blocks._tiled(block, x) for block in self._attention)
        if tiled or not _SLOTS.acquire(blocking=False):
            return self.model.run(x, capture=capture, start=start, should_stop=should_stop)
        # A stream's graph ends where its last attention is handed over: what follows (the
        # last block's feed-forward, which TensorFlow runs after the hand-over, and any later
        # layer) feeds no output and is never run. Ending at an earlier wanted layer would take
        # an op error, which costs more (7 ms on 2 cores) than the blocks it would skip.
        key = (start, capture.for_stream)
        token = next(_TOKENS)
        running = _RUNNING[token] = _Running(capture, should_stop)
        try:
            if key not in self._graphs:
                self._graphs[key] = self._graph(self._traced(*key))
            return self._graphs[key](x, tf.constant(token, tf.int64))
        except tf.errors.OpError:
            if isinstance(running.raised, _Stop):
                return None
            if running.raised is not None:
                raise running.raised from None
            raise
        finally:
            del _RUNNING[token]
            _SLOTS.release()

    def _traced(self, start: int, stream: bool) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """The pass from layer `start` on; for a `stream`, up to its last attention's hand-over
        (the graph's output is then that op's, and TensorFlow prunes what only the rest of
        the model needed)."""
        model, gate = self.model, _op(_gate)
        last = self._attention[-1]

        def whole(x: tf.Tensor, token: tf.Tensor) -> tf.Tensor:
            key_mask = model.key_mask(x, start)
            for block in model.blocks[start:]:
                if not isinstance(block, blocks.ATTENTION_BLOCKS):
                    x = block(x, training=False)
                    continue
                x = _after(x, tf.numpy_function(gate, [token], tf.int64, stateful=True))
                x, probs = block(x, key_mask=key_mask, training=False, return_attention_scores=True)
                hand = _op(_hand(block.name))
                handed = tf.numpy_function(hand, [token, probs], tf.int64, stateful=True)
                if stream and block is last:
                    return handed
                x = _after(x, handed)
            return x

        return whole
