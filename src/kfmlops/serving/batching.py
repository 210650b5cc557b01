"""Adaptive micro-batching: concurrent requests share one forward pass.

A :class:`MicroBatcher` wraps a scoring function ``(codes, numbers) -> probabilities``. Each request
hands in its encoded rows and awaits its slice of the result. The first request of a batch
schedules the flush for the next event-loop turn (or after ``wait_s``), so every request that
arrives meanwhile joins it; a batch that reaches ``max_rows`` is scored at once. With little
traffic each request is scored alone, with no added wait; under load the batches grow by
themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]


class MicroBatcher:
    """``await batcher.score(codes, numbers)``: this request's probabilities, computed in a shared batch."""

    def __init__(self, score: Score, max_rows: int, wait_s: float, on_batch: Callable[[int], None] | None = None):
        self._score = score
        self._max_rows = max_rows
        self._wait_s = wait_s
        self._on_batch = on_batch
        self._pending: list[tuple[np.ndarray, np.ndarray, asyncio.Future]] = []
        self._rows = 0
        self._timer: asyncio.Handle | None = None

    async def score(self, codes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((codes, numbers, future))
        self._rows += len(codes)
        if self._rows >= self._max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._wait_s, self._flush) if self._wait_s > 0 else loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._rows = self._pending, [], 0
        if not batch:
            return
        try:
            if len(batch) == 1:
                results = [self._score(batch[0][0], batch[0][1])]
            else:
                probabilities = self._score(np.concatenate([b[0] for b in batch]), np.concatenate([b[1] for b in batch]))
                results = np.split(probabilities, np.cumsum([len(b[0]) for b in batch[:-1]]))
        except Exception as exc:  # every waiting request gets the error, not just the first
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(sum(len(b[0]) for b in batch))
        for (*_, future), result in zip(batch, results):
            if not future.done():  # a request whose client went away is cancelled
                future.set_result(result)
