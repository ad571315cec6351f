"""The syslog receiver's queue: first in, first out, bounded in bytes and in items.

``put`` waits for room (TCP: the connection is not read meanwhile, so the kernel's window
closes and the sender waits); ``offer`` refuses at once (UDP, which has no back-pressure).
Waiting putters are admitted strictly in arrival order, and an offer is refused while any
putter waits, so a stream of small datagrams cannot starve a connection holding a large line.
An item always fits an empty queue, so an item larger than the bound cannot wait forever.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Putter(Generic[T]):
    item: T
    size: int
    admitted: asyncio.Future[None]


class ByteQueue(Generic[T]):
    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.bytes = 0
        self._items: deque[tuple[T, int]] = deque()
        self._putters: deque[_Putter[T]] = deque()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def _fits(self, size: int) -> bool:
        return not self._items or (len(self._items) < self.max_items and self.bytes + size <= self.max_bytes)

    def _append(self, item: T, size: int) -> None:
        self._items.append((item, size))
        self.bytes += size
        self._nonempty.set()

    def offer(self, item: T, size: int) -> bool:
        """Enqueue now if there is room and nobody waits for it; False otherwise."""
        if self._putters or not self._fits(size):
            return False
        self._append(item, size)
        return True

    async def put(self, item: T, size: int) -> None:
        """Enqueue, waiting (behind earlier putters) until there is room."""
        if not self._putters and self._fits(size):
            self._append(item, size)
            return
        putter = _Putter(item, size, asyncio.get_running_loop().create_future())
        self._putters.append(putter)
        try:
            await putter.admitted
        except asyncio.CancelledError:
            if not putter.admitted.done() or putter.admitted.cancelled():
                try:
                    self._putters.remove(putter)
                except ValueError:
                    pass
            raise

    def _admit(self) -> None:
        while self._putters and self._fits(self._putters[0].size):
            putter = self._putters.popleft()
            if putter.admitted.done():  # its task was cancelled meanwhile
                continue
            self._append(putter.item, putter.size)
            putter.admitted.set_result(None)

    async def get_batch(self, max_items: int, max_bytes: int, wait_s: float) -> list[T]:
        """Up to ``max_items`` items and ``max_bytes`` bytes (at least one item), oldest
        first; waits up to ``wait_s`` for the first; [] when none came."""
        if not self._items:
            try:
                await asyncio.wait_for(self._nonempty.wait(), wait_s)
            except TimeoutError:
                return []
        batch: list[T] = []
        taken = 0
        while self._items and len(batch) < max_items:
            item, size = self._items[0]
            if batch and taken + size > max_bytes:
                break
            self._items.popleft()
            self.bytes -= size
            taken += size
            batch.append(item)
        if not self._items:
            self._nonempty.clear()
        self._admit()
        return batch
