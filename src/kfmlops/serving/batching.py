"""Adaptive micro-batching: concurrent requests share one scoring call.

A :class:`MicroBatcher` wraps a scoring function ``(*arrays) -> scores`` (the encoded request
arrays of :mod:`kfmlops.serving.schema`, each with one row per request row). Each request hands in
its arrays and awaits its rows of the result. The first request of a batch schedules the flush for
the next event-loop turn (or after ``wait_s``), so every request that arrives meanwhile joins it; a
batch that reaches ``max_rows`` is scored at once. With little traffic each request is scored
alone, with no added wait; under load the batches grow by themselves. A scoring error reaches
every request of its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

Score = Callable[..., np.ndarray]


class MicroBatcher:
    """``await batcher.score(*arrays)``: this request's scores, computed in a shared batch."""

    def __init__(self, score: Score, max_rows: int, wait_s: float, on_batch: Callable[[int], None] | None = None):
        self._score = score
        self._max_rows = max_rows
        self._wait_s = wait_s
        self._on_batch = on_batch
        self._pending: list[tuple[tuple[np.ndarray, ...], asyncio.Future]] = []
        self._rows = 0
        self._timer: asyncio.Handle | None = None

    async def score(self, *arrays: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((arrays, future))
        self._rows += len(arrays[0])
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
        sizes = [len(arrays[0]) for arrays, _ in batch]
        try:
            if len(batch) == 1:
                results = [self._score(*batch[0][0])]
            else:
                scores = self._score(*(np.concatenate(column) for column in zip(*(arrays for arrays, _ in batch))))
                results = np.split(scores, np.cumsum(sizes[:-1]))
        except Exception as exc:  # every waiting request gets the error, not just the first
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(sum(sizes))
        for (_, future), result in zip(batch, results):
            if not future.done():  # a request whose client went away is cancelled
                future.set_result(result)
