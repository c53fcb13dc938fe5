"""The status publisher writes only what changed, and at a bounded rate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from meshext.api.extension import DeploymentStatus, ExtensionStatus
from meshext.api.meta import ResourceKey
from meshext.server.faults import Faults
from meshext.server.status_publisher import StatusPublisher

TAG = ResourceKey("ServiceMeshExtension", "bookinfo", "tag")
COUNTER = ResourceKey("ServiceMeshExtension", "bookinfo", "counter")


def status(message: str) -> ExtensionStatus:
    return ExtensionStatus(deployment=DeploymentStatus(ready=False, message=message))


class RecordingSink:
    def __init__(self, fail: bool = False) -> None:
        self.written: list[tuple[ResourceKey, str | None]] = []
        self.fail = fail

    async def publish(self, key: ResourceKey, value: ExtensionStatus) -> None:
        if self.fail:
            raise RuntimeError("the API server is away")
        self.written.append((key, value.deployment.message))


class Statuses:
    """The statuses the control plane would compute, and how often it was asked."""

    def __init__(self) -> None:
        self.current = {TAG: status("resolving"), COUNTER: status("resolving")}
        self.computed = 0

    def __call__(self) -> dict[ResourceKey, ExtensionStatus]:
        self.computed += 1
        return dict(self.current)


@contextlib.asynccontextmanager
async def publishing(publisher: StatusPublisher) -> AsyncIterator[None]:
    task = asyncio.create_task(publisher.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_only_statuses_that_changed_are_written_again() -> None:
    sink, statuses = RecordingSink(), Statuses()
    publisher = StatusPublisher([sink], statuses, Faults(), interval=0.0)
    await publisher.publish()
    statuses.current[TAG] = status("ready")
    await publisher.publish()
    await publisher.publish()
    assert sink.written == [(TAG, "resolving"), (COUNTER, "resolving"), (TAG, "ready")]


async def test_nothing_is_computed_until_status_is_marked_stale() -> None:
    sink, statuses = RecordingSink(), Statuses()
    publisher = StatusPublisher([sink], statuses, Faults(), interval=0.0)
    async with publishing(publisher):
        await asyncio.sleep(0.1)
        assert statuses.computed == 0
        publisher.stale()
        await until(lambda: len(sink.written) == 2, "the first write")
        assert statuses.computed == 1


async def test_without_sinks_status_is_never_computed() -> None:
    statuses = Statuses()
    publisher = StatusPublisher([], statuses, Faults(), interval=0.0)
    async with publishing(publisher):
        publisher.stale()
        await asyncio.sleep(0.1)
    assert statuses.computed == 0


async def test_a_burst_of_changes_is_written_once_per_interval_ending_with_the_last_state() -> None:
    sink, statuses = RecordingSink(), Statuses()
    publisher = StatusPublisher([sink], statuses, Faults(), interval=0.5)
    async with publishing(publisher):
        publisher.stale()
        await until(lambda: len(sink.written) == 2, "the first write")
        for step in range(20):  # changes faster than the interval
            statuses.current[TAG] = status(f"step {step}")
            publisher.stale()
            await asyncio.sleep(0.01)
        await until(lambda: sink.written[-1] == (TAG, "step 19"), "the last state")
    tag_writes = [message for key, message in sink.written if key == TAG]
    assert tag_writes[0] == "resolving"
    assert tag_writes[-1] == "step 19"
    assert len(tag_writes) <= 3


async def test_a_failing_sink_does_not_keep_status_from_the_others() -> None:
    broken, working, statuses = RecordingSink(fail=True), RecordingSink(), Statuses()
    publisher = StatusPublisher([broken, working], statuses, Faults(), interval=0.0)
    await publisher.publish()
    assert working.written == [(TAG, "resolving"), (COUNTER, "resolving")]


async def test_a_failure_to_compute_status_is_a_fault_until_it_succeeds() -> None:
    sink, faults = RecordingSink(), Faults()
    calls = 0

    def flaky() -> dict[ResourceKey, ExtensionStatus]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("no status")
        return {TAG: status("ready")}

    publisher = StatusPublisher([sink], flaky, faults, interval=0.05)
    async with publishing(publisher):
        publisher.stale()
        await until(lambda: bool(faults.current()) or bool(sink.written), "the first attempt")
        await until(lambda: sink.written == [(TAG, "ready")], "the retry")
        assert not faults.current()
