"""The work queue coalesces keys, keeps one handler per key, and retries failures."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from meshext.kube.tasks import cancel_and_wait
from meshext.kube.workqueue import WorkQueue


@asynccontextmanager
async def running(queue: WorkQueue[str]) -> AsyncIterator[WorkQueue[str]]:
    task = asyncio.create_task(queue.run())
    try:
        yield queue
    finally:
        await cancel_and_wait(task)


def _recording(calls: Counter[str]) -> Callable[[str], Awaitable[None]]:
    async def handle(key: str) -> None:
        calls[key] += 1

    return handle


async def test_a_key_added_many_times_before_a_worker_takes_it_is_handled_once() -> None:
    calls: Counter[str] = Counter()
    queue: WorkQueue[str] = WorkQueue(_recording(calls))
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    async with running(queue):
        await queue.wait_idle()
    assert calls == Counter({"a": 1, "b": 1})


async def test_a_key_added_while_it_is_handled_runs_again_afterwards_never_concurrently() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    active = 0
    most_active = 0
    calls = 0

    async def handle(key: str) -> None:
        nonlocal active, most_active, calls
        active += 1
        most_active = max(most_active, active)
        calls += 1
        if calls == 1:
            started.set()
            await release.wait()
        active -= 1

    queue: WorkQueue[str] = WorkQueue(handle, workers=4)
    async with running(queue):
        queue.add("a")
        await started.wait()
        queue.add("a")
        queue.add("a")
        release.set()
        await queue.wait_idle()
    assert calls == 2
    assert most_active == 1


async def test_different_keys_are_handled_in_parallel() -> None:
    arrived: set[str] = set()
    both = asyncio.Event()

    async def handle(key: str) -> None:
        arrived.add(key)
        if len(arrived) == 2:
            both.set()
        await both.wait()

    queue: WorkQueue[str] = WorkQueue(handle, workers=2)
    async with running(queue):
        queue.add("a")
        queue.add("b")
        await both.wait()
        await queue.wait_idle()
    assert arrived == {"a", "b"}


async def test_a_failing_handler_is_retried_until_it_succeeds() -> None:
    attempts = 0
    succeeded = asyncio.Event()

    async def handle(key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("not yet")
        succeeded.set()

    queue: WorkQueue[str] = WorkQueue(handle, backoff_initial=0.001, backoff_max=0.01)
    async with running(queue):
        queue.add("a")
        await succeeded.wait()
    assert attempts == 3
    assert queue.failures == 2


async def test_a_delayed_key_is_handled_once_even_when_also_added_directly() -> None:
    calls: Counter[str] = Counter()
    handled = asyncio.Event()

    async def handle(key: str) -> None:
        calls[key] += 1
        handled.set()

    queue: WorkQueue[str] = WorkQueue(handle)
    async with running(queue):
        queue.add_after("a", 0.001)
        queue.add_after("a", 0.001)
        await handled.wait()
        await queue.wait_idle()
    assert calls["a"] == 1


async def test_forgetting_a_key_cancels_its_delayed_retry() -> None:
    calls: Counter[str] = Counter()
    queue: WorkQueue[str] = WorkQueue(_recording(calls))
    async with running(queue):
        queue.add_after("a", 3600)
        queue.forget("a")
        queue.add("b")
        await queue.wait_idle()
    assert calls == Counter({"b": 1})
    assert "0 delayed" in repr(queue)
