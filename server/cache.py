"""The model cache: content-addressed `model_id` -> built model, LRU-bounded.

Replicas are stateless: compiling the same source, backend and seed gives the same id and the
same weights anywhere, so a miss is answered NOT_FOUND and the client simply resends the source.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._items: OrderedDict[str, T] = OrderedDict()
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
            # Publish the item and retire the key's lock in one step, so a caller arriving in
            # between can neither miss the item nor start a second build.
            with self._lock:
                self._items[key] = item
                self._building.pop(key, None)
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
            return item, False

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
