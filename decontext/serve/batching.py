"""Dynamic batching in front of one protecting worker: requests wait in a bounded queue, the worker takes up to
``max_batch`` of them at once, waiting at most ``max_wait`` seconds after the first arrived for others to join.

One worker thread runs every batch (an editor and its probes are not shared between threads); the event loop
only queues, times and hands out results. A full queue refuses at once (``QueueFull``: the HTTP layer answers
503 with Retry-After) instead of letting latency grow without bound, and an item whose deadline passed while it
waited is dropped before it costs any compute (``DeadlineExceeded``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """The queue holds ``max_queue`` items; ``retry_after`` is a guess of the seconds until there is room."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the protect queue is full ({depth} waiting); retry in about {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed before its batch finished."""


class ShuttingDown(Exception):
    """The service is stopping and takes no new work."""


@dataclass
class _Pending:
    item: Any
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """``await batcher.submit(item, deadline)`` -> ``run_batch([item, ...])[i]`` for that item.

    ``run_batch`` runs in the worker thread and returns one result per item, in order; a result that is an
    exception is raised to that item's caller alone. An exception from ``run_batch`` itself fails every item of
    the batch. ``on_batch(size, seconds)`` is told of each batch (metrics); ``upcoming()``, when given, counts
    the items accepted upstream that will be submitted soon: a batch waits for more only while it is > 0."""

    def __init__(
        self,
        run_batch: Callable[[list], list],
        max_batch: int = 16,
        max_wait: float = 0.01,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        upcoming: Callable[[], int] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= 1, max_wait >= 0 (got {max_batch}, {max_queue}, {max_wait})"
            )
        self.run_batch = run_batch
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.on_batch = on_batch
        self.upcoming = upcoming  # requests accepted and on their way to the queue (reading, decoding)
        self._queue: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="decontext-protect")
        self._running = 0  # items in the batch the worker is running now
        self._closing = False
        self._batch_seconds = 0.0  # a running mean of a batch's time, for Retry-After

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Items waiting (not yet taken by the worker)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    def retry_after(self) -> int:
        """Whole seconds until the queue has probably drained a batch's worth (at least 1)."""
        batches = math.ceil((len(self._queue) + 1) / self.max_batch)
        return max(1, math.ceil(batches * (self._batch_seconds or 1.0)))

    def check_room(self) -> None:
        """Raise ``QueueFull`` (or ``ShuttingDown``) now, before a request spends anything on its upload."""
        if self._closing:
            raise ShuttingDown("the service is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(len(self._queue), self.retry_after())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="decontext-batcher")

    async def call(self, fn, *args):
        """Run ``fn(*args)`` on the worker thread (e.g. loading the model where its batches will run)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self) -> None:
        """Take no new items, finish every queued one, then end the worker."""
        self._closing = True
        if self._task is not None:
            self._arrived.set()
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, item, deadline: float):
        self.check_room()
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(item, deadline, future)
        self._queue.append(pending)
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            if not future.done():
                future.cancel()  # the worker skips it if it has not started it yet
            raise DeadlineExceeded("the request's deadline passed before it was protected") from None

    # ------------------------------------------------------------------ the worker
    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # wait for more to join the first one, up to max_wait after it arrived, while any are on their way
            # (with none coming, waiting would only add latency: one client alone is served at once)
            while len(self._queue) < self.max_batch and not self._closing:
                if self.upcoming is not None and self.upcoming() <= 0:
                    break
                left = self._queue[0].queued_at + self.max_wait - time.monotonic()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch: list[_Pending] = []
            now = time.monotonic()
            while self._queue and len(batch) < self.max_batch:
                pending = self._queue.popleft()
                if pending.future.done():  # its caller gave up (deadline)
                    continue
                if pending.deadline <= now:
                    pending.future.set_exception(DeadlineExceeded("the request's deadline passed while it waited"))
                    continue
                batch.append(pending)
            if not batch:
                continue
            self._running = len(batch)
            began = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the worker returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # the whole batch failed: each caller hears why
                results = [exc] * len(batch)
            finally:
                self._running = 0
            seconds = time.monotonic() - began
            self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
