"""Dynamic batching: concurrent requests share one forward pass.

A request ``submit``s its item and awaits its own result. One worker task takes the oldest
waiting item, gathers more for up to ``max_wait_ms`` after that item arrived (at most
``max_batch_size`` in all), and runs ``fn(items)`` in a dedicated thread so the event loop stays
free. While a batch runs, the next one gathers in the queue.

With a ``key`` (the padded size an image runs at), a batch holds items of one key only: the model runs
one forward pass per padded size, so a batch of mixed sizes would be several small passes. An item of
another key is held back, in order, and starts the next batch (``key=None``: any items batch together).

Serial traffic does not wait: once a forward pass ran a single item and nobody had queued behind it
by its end, requests are coming one at a time (a client at concurrency 1), and a lone item starts
at once instead of waiting ``max_wait_ms`` for company that does not come. The first pass that has
company (a batch of several, or a queue behind it) brings the wait back. A fresh batcher waits, as
Triton's and TorchServe's batchers always do, so a first burst of requests shares a pass.

Failure handling, per request:
- the queue is bounded: a full queue refuses at once (``QueueFull``, with a retry hint);
- an item still waiting when its ``timeout_s`` has passed is dropped, not run (``DeadlineExceeded``);
- an item whose forward pass has run ``forward_timeout_s`` is answered ``ForwardTimeout`` (the pass,
  which a thread cannot be made to abandon, goes on; ``stalled`` says so, for the readiness probe);
- if ``fn`` raises on a batch of several, each item is run alone, so only the item that breaks it
  fails (``BatchFailed``) and the others still get their results; the worker keeps serving. The retry
  starts once the failed pass's exception is gone: its traceback holds the pass's frames, and their
  tensors would stay allocated through the retry;
- an item that runs out of memory alone (``detector.device_errors.is_out_of_memory``) is answered
  ``OutOfMemory``, with a retry hint: the device is fine, only busy;
- a CUDA error that leaves the device unusable (``is_fatal_device_error``: an illegal memory access, a
  device-side assert) fails its batch, every queued item and every later one (``DeviceFailed``), and
  ``failed`` says why, for the health probes: only a new process recovers.

Closing (``close(timeout_s)``) refuses new items and serves the queued ones for at most ``timeout_s``;
then every item left, the running batch's included, is answered ``BatcherClosed``, and ``close`` returns
without waiting for a forward pass that is stuck: it runs on a daemon thread, which does not keep the
process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from detector.device_errors import is_fatal_device_error, is_out_of_memory

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherError(Exception):
    """A request the batcher could not serve; subclasses say why."""


class QueueFull(BatcherError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the server is busy (queue full); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(BatcherError):
    pass


class ForwardTimeout(DeadlineExceeded):
    pass


class BatchFailed(BatcherError):
    pass


class BatcherClosed(BatcherError):
    pass


class OutOfMemory(BatcherError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the model ran out of memory (the server is busy); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeviceFailed(BatcherError):
    """The model's device failed for good (``Batcher.failed`` says why): the process must be restarted."""


# How a forward pass failed (``Batcher._attempt``).
_FAILED, _OUT_OF_MEMORY, _DEVICE_FAILED = "failed", "out of memory", "device failed"


class BatchObserver(Protocol):
    """What the batcher reports (``api/metrics.py`` implements it for Prometheus)."""

    def observe_batch(self, size: int, run_s: float) -> None: ...
    def observe_queue_wait(self, wait_s: float) -> None: ...


@dataclass(frozen=True)
class BatchOutcome(Generic[R]):
    value: R
    queue_s: float  # from submit to the start of its batch's forward
    run_s: float  # the batch's forward
    batch_size: int


@dataclass(eq=False)
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued_at: float
    deadline: float
    key: Hashable = None  # Batcher.key of the item
    started: bool = False
    started_at: float = math.inf  # when its (latest) forward pass began


@dataclass
class _Stop:
    """Put in the queue by ``close``: everything before it is still served."""


class Batcher(Generic[T, R]):
    """Runs ``fn(items) -> results`` (one result per item, in order) on batches of submitted items."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 4,
        max_wait_ms: float = 10.0,
        queue_size: int = 64,
        timeout_s: float = math.inf,
        forward_timeout_s: float = math.inf,
        observer: BatchObserver | None = None,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_wait_ms < 0 or timeout_s <= 0 or forward_timeout_s <= 0:
            raise ValueError(
                "need max_batch_size >= 1, queue_size >= 1, max_wait_ms >= 0, timeout_s > 0, forward_timeout_s > 0; "
                f"got {max_batch_size}, {queue_size}, {max_wait_ms}, {timeout_s}, {forward_timeout_s}"
            )
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.forward_timeout_s = forward_timeout_s
        self.observer = observer
        self.key = key
        self._held: deque[_Pending] = deque()  # taken from the queue for a batch of another key: served first
        self._stop_seen = False  # close's _Stop was taken from the queue: nothing more will come
        self._queue: asyncio.Queue[_Pending | _Stop] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task | None = None
        self._closed = False
        self._mean_run_s = 0.1  # running mean of a batch's forward, for the Retry-After hint
        self._serial = False  # the last pass ran one item with nobody queued at its end: do not wait
        self._forward_since: float | None = None  # when the forward pass running now began
        # One thread: one forward at a time, always on the same thread (CUDA streams, thread-locals).
        self._thread = _DaemonThread("detector-forward")
        self._closing: asyncio.Future | None = None
        self.failed: str | None = None  # why the device failed for good (a fatal CUDA error), for the log

    def start(self) -> None:
        """Start the worker; call from the event loop that will ``submit``."""
        self._task = asyncio.get_running_loop().create_task(self._work(), name="batcher")

    @property
    def forward_age_s(self) -> float:
        """How long the forward pass running now has run (0 when none runs)."""
        return 0.0 if self._forward_since is None else time.monotonic() - self._forward_since

    @property
    def busy(self) -> bool:
        """Whether a forward pass is running on the forward thread, one abandoned by ``close`` included."""
        return self._thread.running

    @property
    def stalled(self) -> bool:
        """Whether the forward pass running now has run past ``forward_timeout_s``."""
        return self.forward_age_s > self.forward_timeout_s

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch running now)."""
        return self._queue.qsize() + len(self._held)

    def ensure_room(self, ahead: int = 0) -> None:
        """Raise now what ``submit`` would raise at once, so a caller can refuse before costly work
        (decoding an image) rather than after it. ``ahead``: items the caller holds that will be
        submitted before this one (requests waiting to be decoded); they count toward the queue."""
        self._refuse_if_closed()
        if self.depth + ahead >= self.queue_size:
            raise QueueFull(self._retry_after_s(ahead))

    async def submit(self, item: T) -> BatchOutcome[R]:
        """Queue ``item`` and wait for its result; raises a ``BatcherError`` when it cannot be served."""
        self._refuse_if_closed()
        now = time.monotonic()
        key = self.key(item) if self.key is not None else None
        pending = _Pending(item, asyncio.get_running_loop().create_future(), now, now + self.timeout_s, key)
        if self.depth >= self.queue_size:  # the items held back count too
            raise QueueFull(self._retry_after_s())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFull(self._retry_after_s()) from None
        try:
            return await self._outcome(pending)
        except asyncio.CancelledError:  # the client went away: do not run its item
            pending.future.cancel()
            raise

    def _refuse_if_closed(self) -> None:
        if self.failed is not None:
            raise DeviceFailed("the model's device failed; the server must be restarted")
        if self._closed or self._task is None:
            raise BatcherClosed("the server is shutting down" if self._closed else "the batcher is not started")

    async def run_on_forward_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the thread that runs the forward passes (a warm-up: CUDA's and cuDNN's state is
        per thread), one at a time with them."""
        return await asyncio.wrap_future(self._thread.submit(fn, *args))

    async def _outcome(self, pending: _Pending) -> BatchOutcome[R]:
        """``pending``'s result: while it waits, until its queue deadline; once its forward pass has begun,
        until ``forward_timeout_s`` after that (noticed within another ``forward_timeout_s``: a waiting
        item looks at least that often whether it has begun)."""
        while True:
            now = time.monotonic()
            if pending.started:
                limit = pending.started_at + self.forward_timeout_s
            else:
                limit = min(pending.deadline, now + self.forward_timeout_s)
            remaining = None if math.isinf(limit) else max(limit - now, 0.0)
            try:
                # shield: a timeout must not cancel the future before we know whether it started.
                return await asyncio.wait_for(asyncio.shield(pending.future), remaining)
            except asyncio.TimeoutError:
                now = time.monotonic()
                if pending.started and now >= pending.started_at + self.forward_timeout_s:
                    pending.future.cancel()  # its pass may still end: its result is dropped
                    raise ForwardTimeout(f"inference ran {self.forward_timeout_s:g} s without finishing") from None
                if not pending.started and now >= pending.deadline:
                    pending.future.cancel()  # the worker skips cancelled items
                    raise DeadlineExceeded(f"waited {self.timeout_s:g} s in the queue without reaching the model") from None

    async def close(self, timeout_s: float = math.inf) -> None:
        """Refuse new items and serve the queued ones; past ``timeout_s``, answer every item left (the
        running batch's too) ``BatcherClosed`` and return, leaving a stuck forward pass to its daemon
        thread. A second call waits for the first (with the first's ``timeout_s``)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(timeout_s))
        await asyncio.shield(self._closing)

    async def _close(self, timeout_s: float) -> None:
        self._closed = True
        if self._task is not None:
            deadline = time.monotonic() + timeout_s
            try:
                # Waits for room (the worker keeps draining), then for the worker to reach it.
                await asyncio.wait_for(self._queue.put(_Stop()), None if math.isinf(timeout_s) else timeout_s)
                left = deadline - time.monotonic()
                await asyncio.wait_for(asyncio.shield(self._task), None if math.isinf(timeout_s) else max(left, 0.0))
            except asyncio.TimeoutError:
                logger.warning("closing: %g s passed with requests left; they are answered 'shutting down'", timeout_s)
                self.abandon()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._thread.stop()

    def abandon(self) -> None:
        """Close now: every item left, the running batch's too, is answered ``BatcherClosed`` (as soon as
        the loop runs the worker's cancellation) and nothing more runs; a forward pass under way goes on
        on its daemon thread, its result dropped. Call on the event loop's thread."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()  # its ``finally`` fails the running batch and the queue
        self._thread.stop()

    def _retry_after_s(self, ahead: int = 0) -> int:
        batches_ahead = math.ceil((self.depth + ahead) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self._mean_run_s))

    async def _work(self) -> None:
        batch: list[_Pending] = []
        try:
            while not (self._stop_seen and not self._held):
                batch = await self._gather()
                if batch:
                    await self._run(batch)
                    self._serial = len(batch) == 1 and self.depth == 0
        finally:  # stopped, or cancelled mid-batch as the loop closes: nobody may wait forever
            batch.extend(self._held)
            self._held.clear()
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for pending in batch:
                if isinstance(pending, _Pending):
                    _fail(pending, BatcherClosed("the server is shutting down"))

    async def _gather(self) -> list[_Pending]:
        """Wait for one live item (the oldest held back first), then take more of its key until the batch
        is full or its wait is over (at once, while the traffic is serial). Items of another key are held
        back, in order, for the next batches."""
        batch: list[_Pending] = []
        held, self._held, skipped = self._held, deque(), []
        gather_until = math.inf
        try:
            while len(batch) < self.max_batch_size:
                if held:
                    entry = held.popleft()
                elif self._queue.empty():
                    remaining = gather_until - time.monotonic()
                    if self._stop_seen or remaining <= 0 or (batch and self._serial):
                        break
                    try:
                        entry = await asyncio.wait_for(self._queue.get(), None if math.isinf(remaining) else remaining)
                    except asyncio.TimeoutError:
                        break
                else:
                    entry = self._queue.get_nowait()
                if isinstance(entry, _Stop):
                    self._stop_seen = True  # what is held back is still served
                    continue
                if not self._is_live(entry):
                    continue
                if batch and entry.key != batch[0].key:
                    skipped.append(entry)
                    continue
                batch.append(entry)
                # The window starts when the first item arrived: items that already waited
                # behind a running batch do not wait again.
                gather_until = min(gather_until, entry.enqueued_at + self.max_wait_ms / 1000)
        finally:
            self._held = deque([*skipped, *held, *self._held])
        return batch

    def _is_live(self, pending: _Pending) -> bool:
        if pending.future.done():  # cancelled: timed out or the client left
            return False
        if time.monotonic() > pending.deadline:
            pending.future.set_exception(DeadlineExceeded(f"waited {self.timeout_s:g} s in the queue"))
            return False
        return True

    async def _run(self, batch: list[_Pending]) -> None:
        if self.failed is not None:  # queued before the device failed: it would fail again
            for pending in batch:
                _fail(pending, self._error(_DEVICE_FAILED))
            return
        started = time.monotonic()
        for pending in batch:
            pending.started, pending.started_at = True, started
            if self.observer is not None:
                self.observer.observe_queue_wait(started - pending.enqueued_at)
        values, failure = await self._attempt([p.item for p in batch])
        # Here, not in an ``except`` block: the failed pass's exception and the tensors its traceback's frames
        # hold are gone before anything else runs on the device.
        if failure is not None:
            if failure != _DEVICE_FAILED and len(batch) > 1:
                await self._run_alone(batch)
            else:
                for pending in batch:
                    _fail(pending, self._error(failure))
            return
        run_s = time.monotonic() - started
        self._mean_run_s = 0.9 * self._mean_run_s + 0.1 * run_s
        if self.observer is not None:
            self.observer.observe_batch(len(batch), run_s)
        for pending, value in zip(batch, values):
            if not pending.future.done():
                pending.future.set_result(BatchOutcome(value, started - pending.enqueued_at, run_s, len(batch)))

    async def _run_alone(self, batch: list[_Pending]) -> None:
        """After a failed batch: one item at a time, so one bad item fails only itself."""
        for pending in batch:
            if self.failed is not None:
                _fail(pending, self._error(_DEVICE_FAILED))
                continue
            started = time.monotonic()
            pending.started_at = started
            values, failure = await self._attempt([pending.item], alone=True)
            if failure is not None:
                _fail(pending, self._error(failure))
                continue
            run_s = time.monotonic() - started
            if self.observer is not None:
                self.observer.observe_batch(1, run_s)
            if not pending.future.done():
                pending.future.set_result(BatchOutcome(values[0], started - pending.enqueued_at, run_s, 1))

    async def _attempt(self, items: list[T], alone: bool = False) -> tuple[Sequence[R] | None, str | None]:
        """(``fn(items)``'s results, None), or (None, how it failed): the exception itself is logged and
        dropped here. A fatal device error marks the batcher ``failed``."""
        try:
            return await self._call(items), None
        except Exception as exc:
            what = "an item failed on its own" if alone else f"a batch of {len(items)} failed"
            if is_fatal_device_error(exc):
                self.failed, failure = f"{type(exc).__name__}: {exc}", _DEVICE_FAILED
                logger.critical("%s: the device failed; every later request fails until a restart", what, exc_info=True)
            else:
                failure = _OUT_OF_MEMORY if is_out_of_memory(exc) else _FAILED
                logger.exception(what)
            # The frames of the failed pass keep its tensors (device memory) for as long as the exception
            # lives, and a log handler may keep it: their locals go now (the text of the traceback stays).
            traceback.clear_frames(exc.__traceback__)
            return None, failure

    def _error(self, failure: str) -> BatcherError:
        if failure == _DEVICE_FAILED:
            return DeviceFailed("the model's device failed; the server must be restarted")
        if failure == _OUT_OF_MEMORY:
            return OutOfMemory(self._retry_after_s())
        return BatchFailed("inference failed for this image")

    async def _call(self, items: list[T]) -> Sequence[R]:
        self._forward_since = time.monotonic()
        try:
            values = await asyncio.wrap_future(self._thread.submit(self.fn, items))
        finally:
            self._forward_since = None
        if len(values) != len(items):
            raise RuntimeError(f"batch function gave {len(values)} results for {len(items)} items")
        return values


class _DaemonThread:
    """Runs calls one at a time, in order, on one daemon thread (started at the first call). Unlike a
    ThreadPoolExecutor's threads, which the interpreter joins at exit, a call stuck in a forward pass
    does not keep the process alive once the service has shut down."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.running = False  # a call is under way

    def submit(self, fn: Callable, *args: Any) -> Future:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        future: Future = Future()
        self._calls.put((future, fn, args))
        return future

    def stop(self) -> None:
        """Let the thread end after the call it runs, if any (not waited for)."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            self._run_one(*call)
            del call  # not held while waiting for the next: a failed call's exception holds its frames' tensors

    def _run_one(self, future: Future, fn: Callable, args: tuple) -> None:
        if not future.set_running_or_notify_cancel():
            return
        self.running = True
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the awaiting request, which logs it
            future.set_exception(exc)
            future = None  # this frame is in exc's traceback: no cycle through the future (exc freed by refcount)
        finally:
            self.running = False


def _fail(pending: _Pending, error: BatcherError) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
