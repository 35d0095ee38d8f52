"""api/batcher.py with plain callables: gathering, per-request isolation, bounded queue, deadlines,
draining.

The timing tests wait on events (a forward pass held until the test releases it, the queue's depth)
rather than on sleeps, and bound waits from below (a load only lengthens them) or, from above, only
against a window several times wider than the difference they check, so that a loaded machine does
not fail them.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest
import torch

from api.batcher import (Batcher, BatcherClosed, BatchFailed, DeadlineExceeded, DeviceFailed, ForwardTimeout,
                         OutOfMemory, QueueFull)


class SlowDouble:
    """fn(items) -> [2 * item]: records each batch; optionally blocks until released."""

    def __init__(self, delay_s: float = 0.05, fail_on: object = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[list] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.release.wait(10)  # (a bound, so that a failing test cannot hang the forward thread)
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("boom")
        return [2 * item for item in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def until(condition) -> None:
    """Wait, yielding to the event loop, until ``condition()`` holds (``run`` bounds the wait)."""
    while not condition():
        await asyncio.sleep(0.001)


async def started(fn, **kwargs) -> Batcher:
    batcher = Batcher(fn, **kwargs)
    batcher.start()
    return batcher


def test_concurrent_requests_share_a_batch_and_get_their_own_results():
    fn = SlowDouble()

    async def main():
        # A wide window: the batch is full, and runs, as soon as the 4 are queued.
        batcher = await started(fn, max_batch_size=4, max_wait_ms=10_000)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        await batcher.close()
        return outcomes

    outcomes = run(main())
    assert [o.value for o in outcomes] == [0, 2, 4, 6]
    assert fn.batches == [[0, 1, 2, 3]] and [o.batch_size for o in outcomes] == [4, 4, 4, 4]


def test_batches_never_exceed_max_batch_size_and_keep_order():
    fn = SlowDouble(delay_s=0.01)

    async def main():
        batcher = await started(fn, max_batch_size=3, max_wait_ms=20)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.close()
        return outcomes

    assert [o.value for o in run(main())] == [2 * i for i in range(10)]
    assert max(len(b) for b in fn.batches) <= 3
    assert sum(fn.batches, []) == list(range(10))


def test_a_lone_request_waits_at_most_max_wait():
    async def main():
        batcher = await started(SlowDouble(delay_s=0), max_batch_size=8, max_wait_ms=300)
        outcome = await batcher.submit(1)
        await batcher.close()
        return outcome

    outcome = run(main())
    assert outcome.value == 2 and outcome.batch_size == 1
    # It waited its window for company, then went alone: not for the 7 missing items (7 x 0.3 s).
    assert 0.29 < outcome.queue_s < 2.0


def test_requests_one_at_a_time_start_at_once_and_company_brings_the_wait_back():
    fn = SlowDouble(delay_s=0)

    async def main():
        batcher = await started(fn, max_batch_size=4, max_wait_ms=1000)
        first = await batcher.submit(1)  # a fresh batcher waits for company
        serial = [await batcher.submit(i) for i in (2, 3)]  # nobody came: one at a time, no wait
        burst = await asyncio.gather(*(batcher.submit(i) for i in (4, 5, 6)))  # queued together: one pass
        after_company = await batcher.submit(7)  # the last pass had company: the wait is back
        await batcher.close()
        return first, serial, burst, after_company

    first, serial, burst, after_company = run(main())
    assert fn.batches == [[1], [2], [3], [4, 5, 6], [7]]
    assert [o.value for o in burst] == [8, 10, 12]
    assert first.queue_s > 0.95 and after_company.queue_s > 0.95
    assert all(o.queue_s < 0.5 for o in serial)  # not the 1 s window


def test_a_request_queued_behind_a_lone_pass_is_company():
    fn = SlowDouble(delay_s=0)

    async def main():
        batcher = await started(fn, max_batch_size=4, max_wait_ms=1000)
        await batcher.submit(0)  # a fresh batcher waits, then runs it alone: serial from now on
        fn.release.clear()
        running = asyncio.create_task(batcher.submit(1))  # starts at once, held in the forward pass
        await until(lambda: len(fn.batches) == 2)
        queued = asyncio.create_task(batcher.submit(2))  # arrives while it runs: concurrent traffic
        await until(lambda: batcher.depth == 1)
        fn.release.set()
        await running
        behind = await queued  # waits for company again, up to 1 s after it arrived
        alone = await batcher.submit(3)  # [2] had nobody behind it: serial again
        await batcher.close()
        return behind, alone

    behind, alone = run(main())
    assert fn.batches == [[0], [1], [2], [3]]
    assert behind.queue_s > 0.95 and alone.queue_s < 0.5


def test_one_bad_item_fails_only_its_request():
    fn = SlowDouble(delay_s=0.01, fail_on=13)

    async def main():
        batcher = await started(fn, max_batch_size=4, max_wait_ms=100)
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 13, 3)), return_exceptions=True)
        after = await batcher.submit(5)  # and it keeps serving
        await batcher.close()
        return results, after

    results, after = run(main())
    assert results[0].value == 2 and results[2].value == 6
    assert isinstance(results[1], BatchFailed)
    assert after.value == 10


def test_a_failing_forward_fails_its_requests_and_the_worker_survives():
    fn = SlowDouble(delay_s=0.0, fail_on=7)

    async def main():
        batcher = await started(fn, max_batch_size=1, max_wait_ms=0)
        with pytest.raises(BatchFailed):
            await batcher.submit(7)
        ok = await batcher.submit(8)
        await batcher.close()
        return ok

    assert run(main()).value == 16


def test_wrong_number_of_results_is_a_failure():
    async def main():
        batcher = await started(lambda items: [], max_batch_size=2)
        with pytest.raises(BatchFailed):
            await batcher.submit(1)
        await batcher.close()

    run(main())


def test_full_queue_refuses_at_once_with_a_retry_hint():
    fn = SlowDouble(delay_s=0)
    fn.release.clear()

    async def main():
        batcher = await started(fn, max_batch_size=1, max_wait_ms=0, queue_size=1)
        running = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])  # the first item is in the forward pass, held
        queued = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.depth == 1)  # the second fills the queue
        with pytest.raises(QueueFull) as refused:  # at once: the held pass would let nothing in
            await batcher.submit(3)
        assert not running.done() and not queued.done()
        with pytest.raises(QueueFull):
            batcher.ensure_room()
        fn.release.set()
        results = [(await running).value, (await queued).value]
        await batcher.close()
        return refused.value, results

    refused, results = run(main())
    assert refused.retry_after_s >= 1
    assert results == [2, 4]
    assert [3] not in fn.batches


def test_a_request_past_its_deadline_is_not_run():
    fn = SlowDouble(delay_s=0)
    fn.release.clear()

    async def main():
        batcher = await started(fn, max_batch_size=1, max_wait_ms=0, timeout_s=0.2)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])  # its forward pass runs, held until released
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(2)  # waits behind the held pass
        assert not first.done()  # answered at its deadline, not when the pass ahead of it ended
        fn.release.set()
        assert (await first).value == 2  # started before its deadline: it finishes
        await batcher.close()

    run(main())
    assert fn.batches == [[1]]


def test_a_forward_pass_past_its_timeout_answers_its_requests_and_says_it_is_stalled():
    fn = SlowDouble(delay_s=0)
    fn.release.clear()  # the first forward hangs until released

    async def main():
        batcher = await started(fn, max_batch_size=1, max_wait_ms=0, timeout_s=10, forward_timeout_s=0.2)
        assert not batcher.stalled and batcher.forward_age_s == 0.0
        t0 = time.monotonic()
        with pytest.raises(ForwardTimeout, match="0.2 s"):
            await batcher.submit(1)  # its pass is held until the test releases it, below
        waited = time.monotonic() - t0
        assert batcher.stalled and batcher.forward_age_s > 0.2  # still running: the probe can tell
        queued = asyncio.create_task(batcher.submit(2))  # waits behind the stuck pass
        await until(lambda: batcher.depth == 1)
        fn.release.set()  # the pass ends (its result is dropped); the queue moves again
        assert (await queued).value == 4
        assert not batcher.stalled and batcher.forward_age_s == 0.0
        await batcher.close()
        return waited

    waited = run(main())
    assert 0.2 <= waited < 5.0  # answered at its timeout (nothing but the test ends the held pass)
    assert fn.batches == [[1], [2]]


def test_the_forward_timeout_counts_from_the_pass_start_not_from_the_queue():
    """Two passes of 1 s each, one after the other, with a forward timeout of 1.75 s: the second request
    comes at once, waits 1 s behind the first, then runs 1 s: 2 s after it came, but 1 s after its pass
    began. (A slow machine may stretch a pass by up to 0.75 s before this fails; the second request looks
    at its clock at 1.75 s, in its pass, where counting from the queue would time it out.)"""
    fn = SlowDouble(delay_s=1.0)

    async def main():
        batcher = await started(fn, max_batch_size=1, max_wait_ms=0, timeout_s=30, forward_timeout_s=1.75)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])
        second = asyncio.create_task(batcher.submit(2))
        values = [(await first).value, (await second).value]
        await batcher.close()
        return values

    assert run(main()) == [2, 4]


def test_a_cancelled_request_is_not_run():
    fn = SlowDouble(delay_s=0)
    fn.release.clear()

    async def main():
        batcher = await started(fn, max_batch_size=1, max_wait_ms=0)
        first = asyncio.create_task(batcher.submit(1))
        await until(lambda: fn.batches == [[1]])
        gone = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.depth == 1)
        gone.cancel()  # e.g. the client disconnected
        fn.release.set()
        await first
        after = await batcher.submit(3)  # served after the cancelled one would have been
        await batcher.close()
        return after

    assert run(main()).value == 6
    assert fn.batches == [[1], [3]]


def test_close_serves_the_queue_then_refuses():
    fn = SlowDouble(delay_s=0.02)

    async def main():
        batcher = await started(fn, max_batch_size=2, max_wait_ms=0)
        pending = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)  # all five are queued
        await batcher.close()
        values = [(await p).value for p in pending]
        with pytest.raises(BatcherClosed):
            await batcher.submit(9)
        with pytest.raises(BatcherClosed):
            batcher.ensure_room()
        return values

    assert run(main()) == [0, 2, 4, 6, 8]


def test_observer_sees_batches_and_waits():
    seen = {"batches": [], "waits": []}

    class Observer:
        def observe_batch(self, size, run_s):
            seen["batches"].append(size)

        def observe_queue_wait(self, wait_s):
            seen["waits"].append(wait_s)

    async def main():
        batcher = await started(SlowDouble(delay_s=0.01), max_batch_size=4, max_wait_ms=50, observer=Observer())
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        await batcher.close()

    run(main())
    assert sum(seen["batches"]) == 3 and len(seen["waits"]) == 3


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"queue_size": 0}, {"max_wait_ms": -1}, {"timeout_s": 0}])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        Batcher(lambda items: items, **kwargs)


def test_close_does_not_wait_past_its_timeout_on_a_stuck_forward():
    fn = SlowDouble(delay_s=0)
    fn.release.clear()  # the first pass hangs (up to 5 s) until released

    async def main():
        batcher = await started(fn, max_batch_size=1, max_wait_ms=0)
        running = asyncio.create_task(batcher.submit(1))
        while not fn.batches:  # its pass has begun
            await asyncio.sleep(0.005)
        queued = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0)
        began = time.monotonic()
        await batcher.close(timeout_s=0.3)
        took = time.monotonic() - began
        results = await asyncio.gather(running, queued, return_exceptions=True)
        await batcher.close()  # a second close returns at once
        return took, results, batcher

    try:
        took, results, batcher = run(main())
        assert batcher.busy  # the abandoned pass still holds its thread
        fn.release.set()
        deadline = time.monotonic() + 5
        while batcher.busy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        fn.release.set()
    assert 0.3 <= took < 2.0
    assert [type(r) for r in results] == [BatcherClosed, BatcherClosed]
    assert fn.batches == [[1]]  # the queued item never ran


def test_ensure_room_counts_the_requests_the_caller_holds():
    async def main():
        batcher = await started(SlowDouble(), queue_size=4)
        batcher.ensure_room(ahead=3)  # 3 waiting to be decoded + this one: room
        with pytest.raises(QueueFull) as refused:
            batcher.ensure_room(ahead=4)
        await batcher.close()
        return refused.value.retry_after_s

    assert run(main()) >= 1


class Activations:
    """Stands for a forward pass's tensors: what a failed pass's frames hold until its exception goes."""


class OutOfMemoryOnBatches:
    """fn(items): a batch of several runs out of memory (torch's own exception, as CUDA's allocator raises
    it) while holding ``Activations``; alone, items run, except ``too_big``. Records, at each call, whether
    the failed pass's activations were still alive."""

    def __init__(self, too_big: object = None) -> None:
        self.too_big = too_big
        self.held: list[weakref.ref] = []
        self.alive_at_call: list[bool] = []

    def __call__(self, items: list) -> list:
        self.alive_at_call.append(any(ref() is not None for ref in self.held))
        activations = Activations()  # a local of this frame, as a forward pass's tensors are
        self.held.append(weakref.ref(activations))
        if len(items) > 1 or self.too_big in items:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [2 * item for item in items]


def test_out_of_memory_retries_alone_after_the_failed_pass_is_freed_and_answers_retry_later():
    fn = OutOfMemoryOnBatches(too_big=3)

    async def main():
        batcher = await started(fn, max_batch_size=4, max_wait_ms=100)
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
        after = await batcher.submit(5)
        await batcher.close()
        return results, after, batcher

    gc.disable()  # freed by reference counting, as the allocator needs it: not by a later collection
    try:
        results, after, batcher = run(main())
    finally:
        gc.enable()
    assert [r.value for r in (results[0], results[1], after)] == [2, 4, 10]
    assert isinstance(results[2], OutOfMemory) and results[2].retry_after_s >= 1
    assert fn.alive_at_call == [False, False, False, False, False]  # the batch, 1, 2, 3 alone, then 5
    assert batcher.failed is None  # out of memory passes: the device is fine


def test_without_the_cleanup_the_failed_pass_would_be_alive_at_the_retry():
    """The check above sees a held pass: an exception kept alive keeps its frames' locals."""
    fn = OutOfMemoryOnBatches()
    try:
        fn([1, 2])
    except torch.OutOfMemoryError as exc:
        kept = exc
    fn([1])
    assert fn.alive_at_call == [False, True]
    del kept


@pytest.mark.parametrize("error", [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    if hasattr(torch, "AcceleratorError") else RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k)`"),
], ids=["accelerator-error", "device-assert", "cublas"])
def test_a_fatal_device_error_fails_everything_after_it_and_says_why(error):
    calls = []

    def fn(items):
        calls.append(list(items))
        if 1 in items:
            raise error
        return [2 * item for item in items]

    async def main():
        batcher = await started(fn, max_batch_size=4, max_wait_ms=100)
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2)), return_exceptions=True)
        with pytest.raises(DeviceFailed):
            batcher.ensure_room()
        with pytest.raises(DeviceFailed):
            await batcher.submit(4)
        await batcher.close()
        return results, batcher

    results, batcher = run(main())
    assert [type(r) for r in results] == [DeviceFailed, DeviceFailed]
    assert calls == [[1, 2]]  # not retried one by one: the device would fail again
    assert str(error) in batcher.failed


def test_with_a_key_a_batch_holds_one_key_and_the_others_wait_their_turn_in_order():
    fn = SlowDouble(delay_s=0.0)
    fn.release.clear()

    async def main():
        batcher = await started(fn, max_batch_size=4, max_wait_ms=50, key=lambda item: item // 10)
        first = asyncio.ensure_future(batcher.submit(0))  # runs alone, held until released
        await until(lambda: len(fn.batches) == 1)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (11, 1, 12, 2, 21, 13)]
        await until(lambda: batcher.depth == 6)
        fn.release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return results

    results = run(main())
    assert [r.value for r in results] == [0, 22, 2, 24, 4, 42, 26]
    # The oldest waiting item's key first, then the next oldest's: no batch mixes keys, none is out of turn.
    assert fn.batches == [[0], [11, 12, 13], [1, 2], [21]]
    assert [r.batch_size for r in results[1:]] == [3, 2, 3, 2, 1, 3]


def test_items_held_back_count_toward_the_queue_and_are_served_at_close():
    fn = SlowDouble(delay_s=0.0)
    fn.release.clear()

    async def main():
        batcher = await started(fn, max_batch_size=2, max_wait_ms=0, queue_size=3, key=lambda item: item % 2)
        first = asyncio.ensure_future(batcher.submit(0))
        await until(lambda: len(fn.batches) == 1)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await until(lambda: batcher.depth == 3)
        with pytest.raises(QueueFull):
            await batcher.submit(5)
        fn.release.set()
        closing = asyncio.ensure_future(batcher.close())
        results = await asyncio.gather(first, *rest)
        await closing
        return results

    assert [r.value for r in run(main())] == [0, 2, 4, 6]
    assert sorted(map(tuple, fn.batches)) == [(0,), (1, 3), (2,)]
