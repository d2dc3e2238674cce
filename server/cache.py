"""The model cache: content-addressed `model_id` -> built model, LRU-bounded by count and bytes.

Replicas are stateless: compiling the same source, backend and seed gives the same id and the
same weights anywhere, so a miss is answered NOT_FOUND and the client simply resends the source.

A model's bytes are its parameter bytes, known from the IR before it is built, so room is made
(least recently used first) before a build rather than after: what the cache holds plus the
model being built stays near the bound.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    def __init__(
        self,
        capacity: int,
        *,
        max_bytes: int | None = None,
        size_of: Callable[[T], int] | None = None,
    ) -> None:
        """Args:
        capacity: models held at most.
        max_bytes: bytes held at most (by `size_of`); None: no bound. The newest model stays
            even when it alone is larger.
        size_of: the bytes of a model; without it every model counts 0.
        """
        self._capacity = max(1, capacity)
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._items: OrderedDict[str, T] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def get(self, key: str) -> T | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def get_or_build(self, key: str, build: Callable[[], T]) -> tuple[T, bool]:
        """The cached item, or build it once even when several calls ask at the same time.

        Returns the item and whether it was already cached.
        """
        item = self.get(key)
        if item is not None:
            return item, True
        with self._lock:
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            item = self.get(key)
            if item is not None:
                return item, True
            try:
                item = build()
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            size = self._size_of(item) if self._size_of is not None else 0
            # Publish the item and retire the key's lock in one step, so a caller arriving in
            # between can neither miss the item nor start a second build.
            with self._lock:
                self._items[key] = item
                self._sizes[key] = size
                self._bytes += size
                self._building.pop(key, None)
                evicted = self._evict(0, keep=1)
            _collect(evicted)
            return item, False

    def make_room(self, nbytes: int) -> None:
        """Drop least recently used models until one of `nbytes` more would fit (call it
        before building one, so that the old ones can be freed first)."""
        with self._lock:
            evicted = self._evict(nbytes, keep=0)
        _collect(evicted)

    def _evict(self, incoming: int, *, keep: int) -> int:
        count = 1 if incoming else 0
        evicted = 0
        while len(self._items) > keep and (
            len(self._items) + count > self._capacity
            or (self._max_bytes is not None and self._bytes + incoming > self._max_bytes)
        ):
            old, _ = self._items.popitem(last=False)
            self._bytes -= self._sizes.pop(old)
            evicted += 1
        return evicted

    @property
    def nbytes(self) -> int:
        """Bytes of the models held."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _collect(evicted: int) -> None:
    # A Keras model is held in reference cycles: without a collection an evicted one keeps
    # its memory until Python's collector happens to run (counted in objects, not bytes, so
    # possibly never while a few large models come and go). Measured: three 244 MiB models
    # in a cache of two left 732 MiB held, 488 MiB after a collection.
    if evicted:
        gc.collect()
