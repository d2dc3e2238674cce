"""Attention handed over layer by layer while the forward pass runs, and reduced beside the model.

`stream_pass` runs a pass on a pass thread (`_Threads`) and hands each captured layer to the
consumer; the pass waits until the consumer asks for the next layer before it goes on, so at most
one layer's attention exists at a time and a slow reader slows the pass instead of filling memory.
`on_pass_thread` runs other model work on the same thread.

`Reduction` says what of each layer to keep (one head, a window, pooled blocks); backends apply
it with their framework's ops, on the device that ran the pass, before anything is copied out.
Its blocks are `neural_attn.pooling`'s, and `Reduction.pooling` the `Pooling` a layer became.

At long lengths a pass computes each layer a tile of query rows at a time and lets each tile
go before the next exists: what a stream hands over is a `Tile`, rows of the reduced layer.
`TiledReduction` reduces one layer from its tiles: exact rows (a head, a window) leave as
tiles, a pooled layer is accumulated from them (its cells are small) and leaves whole.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from neural_attn.pooling import Pooling, block_counts, fold_keys, fold_rows, pooled_length

__all__ = [
    "Reduction",
    "Tile",
    "TiledReduction",
    "assemble",
    "on_pass_thread",
    "running_passes",
    "stream_pass",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Reduction:
    """What to keep of each layer's attention [batch, head, query, key]: the request.

    `query`/`key` are [start, stop) windows (None: the whole axis; a stop of 0: to the end);
    `pool_size` > 0 pools each axis (after the window) to at most that many positions, in the
    blocks `neural_attn.pooling` computes. `pooling` says what a layer became.
    """

    head: int | None = None
    query: tuple[int, int] | None = None
    key: tuple[int, int] | None = None
    pool_size: int = 0
    pool_mode: str = "max"

    @property
    def exact(self) -> bool:
        return self.head is None and self.query is None and self.key is None and not self.pool_size

    def pooling(self, source_shape: tuple[int, ...]) -> Pooling | None:
        """How a layer of `source_shape` is cut and pooled; None when it is kept whole and
        exact (one head of it, or all)."""
        if self.query is None and self.key is None and not self.pool_size:
            return None
        return self._described(source_shape)

    def window(self, q_len: int, k_len: int) -> tuple[int, int, int, int]:
        """The [start, stop) bounds on both axes of a q_len x k_len layer (a stop of 0: the end)."""
        described = self._described((q_len, k_len))
        (q0, q1), (k0, k1) = described.query, described.key
        return q0, q1, k0, k1

    def blocks(self, q_len: int, k_len: int) -> tuple[int, int]:
        """Source positions per output row and column, for a layer of q_len x k_len."""
        described = self._described((q_len, k_len))
        return described.query_block, described.key_block

    def _described(self, source_shape: tuple[int, ...]) -> Pooling:
        return Pooling.of(
            source_shape, self.pool_size, self.pool_mode, query=self.query, key=self.key
        )


@dataclass(frozen=True)
class Tile:
    """Rows ``[start, start + values.shape[-2])`` of one layer's (reduced) attention
    ``[batch, head, rows, key]``, which has ``rows`` rows in all. The pass tiled the source
    rows in steps of ``step``, and row 0 here is source row ``origin`` (a query window's
    start), so `schedule` tells a consumer every tile of the layer before it has them."""

    start: int
    rows: int
    step: int
    values: np.ndarray
    origin: int = 0

    @classmethod
    def whole(cls, values: np.ndarray) -> Tile:
        rows = int(values.shape[-2])
        return cls(0, rows, max(rows, 1), values)

    @property
    def stop(self) -> int:
        return self.start + int(self.values.shape[-2])

    @property
    def is_whole(self) -> bool:
        return self.start == 0 and self.stop == self.rows

    @property
    def last(self) -> bool:
        return self.stop >= self.rows

    def schedule(self) -> list[tuple[int, int]]:
        """Every tile of the layer as [start, stop) rows, in the order they come."""
        first = (self.origin // self.step + 1) * self.step
        inner = range(first, self.origin + self.rows, self.step)
        cuts = [0, *(b - self.origin for b in inner), self.rows]
        return list(zip(cuts, cuts[1:], strict=False))


def assemble(tile: Tile, layer: np.ndarray | None) -> np.ndarray:
    """The whole layer `tile` belongs to, its rows written in: a whole tile's values, else
    `layer` (the earlier tiles'; None for a layer's first tile, which allocates it)."""
    if tile.is_whole:
        return tile.values
    values = tile.values
    if tile.start == 0 or layer is None:
        layer = np.empty((*values.shape[:2], tile.rows, values.shape[-1]), np.float32)
    layer[:, :, tile.start : tile.stop] = values
    return layer


@dataclass(frozen=True)
class TileCut:
    """What a backend cuts from one tile on its device: one head (None: all), rows [a, b) of
    the tile, keys [k0, k1), and keys pooled in blocks of `key_block` by `mode`."""

    head: int | None
    rows: tuple[int, int]
    keys: tuple[int, int]
    key_block: int
    mode: str


class TiledReduction:
    """One layer's `Reduction` applied a tile of source query rows at a time.

    `cut(start, stop)` says what the backend takes of source rows [start, stop) (None: the
    tile is outside the query window); `add(start, step, cut_values)` takes that and
    returns the `Tile` to hand on, if any: exact rows go on at once (their rows numbered from
    the window's start), pooled rows are folded into the pooled layer, which goes on, whole,
    with the layer's last tile.
    """

    def __init__(self, reduction: Reduction, source_shape: tuple[int, ...]) -> None:
        q_len, k_len = int(source_shape[-2]), int(source_shape[-1])
        self.head = reduction.head
        self.mode = reduction.pool_mode
        self.q0, self.q1, self.k0, self.k1 = reduction.window(q_len, k_len)
        self.query_block, self.key_block = reduction.blocks(q_len, k_len)
        self.pooled = self.query_block > 1 or self.key_block > 1
        self._rows = pooled_length(self.q1 - self.q0, self.query_block)
        self._cells: np.ndarray | None = None  # the pooled layer so far: max, or sums (float64)

    def cut(self, start: int, stop: int) -> TileCut | None:
        a, b = max(start, self.q0), min(stop, self.q1)
        if a >= b:
            return None
        return TileCut(
            self.head, (a - start, b - start), (self.k0, self.k1), self.key_block, self.mode
        )

    def add(self, start: int, step: int, values: np.ndarray) -> Tile | None:
        """`values`: `cut(start, stop)` of the tile, on the host. The layer's last tile is the
        one whose rows reach the end of the query window."""
        a = max(start, self.q0) - self.q0  # window rows this tile holds: [a, a + rows)
        end = a + int(values.shape[-2])
        if not self.pooled:
            return Tile(a, self._rows, step, values, origin=self.q0)
        return self._merge(a, end, self._fold_rows(a, end, values))

    def add_exact(self, start: int, step: int, values: np.ndarray) -> Tile | None:
        """`add` for a whole exact tile already on the host (source rows [start, start +
        rows), all heads and keys): the cut is taken here, and the rows are folded before
        the keys, since a fold along whole contiguous rows is several times faster than one
        along the keys (a 16 MiB tile, 8 x 8 blocks: 6 ms against 21)."""
        cut = self.cut(start, start + int(values.shape[-2]))
        if cut is None:
            return None
        heads = slice(None) if cut.head is None else slice(cut.head, cut.head + 1)
        (a, b), (k0, k1) = cut.rows, cut.keys
        part = values[:, heads, a:b, k0:k1]
        if self.key_block == 1:
            return self.add(start, step, part)
        first = max(start, self.q0) - self.q0
        end = first + (b - a)
        rows = self._fold_rows(first, end, part)
        return self._merge(first, end, fold_keys(rows, self.key_block, self.mode))

    def _fold_rows(self, a: int, end: int, values: np.ndarray) -> np.ndarray:
        """Window rows [a, end) folded into the pooled rows they reach: max, or float64 sums."""
        bq = self.query_block
        if bq == 1 and self.mode == "max":
            return values
        starts = np.arange(a // bq * bq, end, bq) - a
        starts[0] = 0
        return fold_rows(values, starts, self.mode)

    def _merge(self, a: int, end: int, part: np.ndarray) -> Tile | None:
        """Fold `part` (window rows [a, end), rows folded) into the pooled layer; the whole
        pooled layer once these rows reach the end of the window."""
        bq = self.query_block
        first, last = a // bq, (end - 1) // bq  # the pooled rows these window rows reach
        if self._cells is None:
            shape = (*part.shape[:2], self._rows, part.shape[-1])
            if self.mode == "max":
                self._cells = np.full(shape, -np.inf, dtype=np.float32)
            else:
                self._cells = np.zeros(shape)
        cells = self._cells[:, :, first : last + 1]
        if self.mode == "max":
            np.maximum(cells, part, out=cells)
        else:
            cells += part
        if self.q0 + end < self.q1:
            return None
        pooled, self._cells = self._cells, None
        if self.mode == "mean":  # the keys were averaged on the device; now the rows
            rows = block_counts(self.q1 - self.q0, bq, dtype=np.float64)
            pooled = (pooled / rows[:, None]).astype(np.float32)
        return Tile.whole(pooled)


_Job = tuple[Callable[[], None], threading.Event]


class _Threads:
    """Where passes (and, for PyTorch, all model work) run: one kept thread, the primary, takes
    each job when it is idle; a job that finds it busy gets a thread of its own that ends with
    the job. A job never waits for a thread, and the threads are daemons, so a pass stuck on a
    consumer that went away never holds the process open at exit (a ThreadPoolExecutor's would).

    Why one kept thread and no more: PyTorch's OpenMP (libgomp) gives every thread that runs a
    parallel op a team of worker threads of its own, kept until that thread ends. Once the
    process has more such threads than cores, libgomp stops spinning between parallel regions
    and every op pays a wake-up: a 6 ms pass took 9 ms as soon as a second thread had run torch,
    whichever thread ran it. A fresh thread per pass is no better (a new team each time, +2.4 ms).
    So model work runs on the primary, and a thread made for a concurrent job takes its team
    away with it when it ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._primary: queue.SimpleQueue[_Job] | None = None
        self._primary_idle = False

    def run(self, job: Callable[[], None]) -> threading.Event:
        """Run `job` on a pass thread; the event is set when it has finished."""
        done = threading.Event()
        with self._lock:
            if self._primary_idle:
                self._primary_idle = False
                assert self._primary is not None
                self._primary.put((job, done))
                return done
            primary = self._primary is None
            if primary:
                self._primary = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._serve_primary if primary else self._serve_once,
            args=(job, done),
            daemon=True,
            name="attention-pass" if primary else "attention-pass-extra",
        )
        try:
            thread.start()
        except BaseException:
            if primary:  # no primary after all: the next job tries again
                with self._lock:
                    self._primary = None
            raise
        return done

    def _serve_primary(self, job: Callable[[], None], done: threading.Event) -> None:
        _pass_thread.flag = True
        assert self._primary is not None
        while True:
            _run_job(job)
            # Idle before `done`: a caller that asks again the moment it has its answer must
            # find the primary free, or its job gets a thread (and an OpenMP team) of its own.
            with self._lock:
                self._primary_idle = True
            done.set()
            job, done = self._primary.get()

    @staticmethod
    def _serve_once(job: Callable[[], None], done: threading.Event) -> None:
        _pass_thread.flag = True
        _run_job(job)
        done.set()


def _run_job(job: Callable[[], None]) -> None:
    """Jobs report their own failures (`on_pass_thread`, `stream_pass`); one that raises all
    the same is logged, and the thread lives on."""
    try:
        job()
    except BaseException:  # noqa: BLE001 - the pass thread must outlive any job
        logging.getLogger(__name__).exception("a job on the attention pass thread failed")


_pass_thread = threading.local()
_PASSES = _Threads()


def _forget_threads() -> None:
    """A forked child has none of its parent's threads: it starts its own when it needs one."""
    global _PASSES
    _PASSES = _Threads()


os.register_at_fork(after_in_child=_forget_threads)


def on_pass_thread(fn: Callable[[], T]) -> T:
    """`fn()` run on a pass thread (see `_Threads`), its result returned or its exception
    raised here; inline when the caller is already on one."""
    if getattr(_pass_thread, "flag", False):
        return fn()
    result: list[Any] = []
    failure: list[BaseException] = []

    def job() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    _PASSES.run(job).wait()
    if failure:
        raise failure[0]
    return result[0]


class _Active:
    """How many passes are running now (a lock and a count)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_active = _Active()


def running_passes() -> int:
    """How many forward passes are running in `stream_pass` now."""
    return _active.count


class _Abandoned(Exception):
    """Raised inside the pass when the consumer went away; unwinds it quietly."""


_GO, _STOP = object(), object()


def stream_pass(
    run: Callable[[Callable[[str, Any], None], Callable[[], None]], Any],
    *,
    gated: bool = False,
) -> Generator[tuple[str, Any], None, Any]:
    """Run `run(emit, gate)` on a pass thread; yield each (name, value) it emits, one at a time.

    The consumer holds the only live value: the pass may not make the next one until the
    consumer asks for it. Without `gated`, `emit` itself waits for that. With `gated`, `emit`
    returns at once and the pass calls `gate()` right before it starts computing the next
    value (e.g. a hook before each attention block), so the rest of the pass overlaps with the
    consumer's work on the last value. Returns (as the generator's value) what `run` returned;
    re-raises what it raised. Closing the generator early stops the pass at its next gate.
    """
    handed: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    replies: queue.Queue[object] = queue.Queue()
    outstanding = [False]  # the worker's own: an item was handed and not yet let go

    def gate() -> None:
        if outstanding[0]:
            outstanding[0] = False
            if replies.get() is _STOP:
                raise _Abandoned

    def emit(key: str, value: Any) -> None:
        gate()  # a pass that did not call gate before making this value waits now
        handed.put(("item", (key, value)))
        del value
        outstanding[0] = True
        if not gated:
            gate()

    def work() -> None:
        with _active:
            _active.count += 1
        try:
            handed.put(("done", run(emit, gate)))
        except _Abandoned:
            handed.put(("abandoned", None))
        except BaseException as exc:  # handed to the consumer, raised there
            handed.put(("error", exc))
        finally:
            with _active:
                _active.count -= 1

    pass_done = _PASSES.run(work)
    finished = False
    try:
        while True:
            kind, payload = handed.get()
            if kind == "item":
                yield payload
                del payload
                replies.put(_GO)
            else:
                finished = True
                if kind == "error":
                    raise payload
                return payload
    finally:
        if not finished:
            replies.put(_STOP)
            while handed.get()[0] == "item":  # a pass between gates may emit once more
                replies.put(_STOP)
        pass_done.wait()
