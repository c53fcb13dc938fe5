"""The snapshot cache: publishing only changes, and waiting for the next snapshot."""

from __future__ import annotations

import asyncio

import pytest

from meshext.xds import types
from meshext.xds.cache import SnapshotCache
from meshext.xds.snapshot import InconsistentSnapshotError, Snapshot
from tests.xds import resources
from tests.xds.builders import snapshot

LDS = types.LISTENER


def test_setting_equal_content_publishes_nothing() -> None:
    cache = SnapshotCache()
    first = snapshot({LDS: {"a": "1"}})
    assert cache.set_snapshot("n", first) is True
    assert cache.set_snapshot("n", snapshot({LDS: {"a": "1"}})) is False
    assert cache.get("n") is first
    assert cache.set_snapshot("n", snapshot({LDS: {"a": "2"}})) is True


def test_clear_forgets_the_node() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("b", snapshot({}))
    cache.set_snapshot("a", snapshot({}))
    assert cache.node_ids() == ["a", "b"]
    cache.clear("a")
    assert cache.get("a") is None
    assert cache.node_ids() == ["b"]


def test_an_inconsistent_snapshot_is_refused_and_nothing_is_published() -> None:
    cache = SnapshotCache()
    broken = Snapshot.build({LDS: [resources.listener("web", 8080, ["ext-missing"])]})
    with pytest.raises(InconsistentSnapshotError, match="ext-missing"):
        cache.set_snapshot("n", broken)
    assert cache.get("n") is None


def test_replicas_sharing_a_snapshot_check_its_consistency_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[Snapshot] = []
    original = Snapshot.consistency_errors

    def counting(self: Snapshot) -> list[str]:
        checked.append(self)
        return original(self)

    monkeypatch.setattr(Snapshot, "consistency_errors", counting)
    cache = SnapshotCache()
    shared = snapshot({LDS: {"a": "1"}})
    for replica in range(100):
        cache.set_snapshot(f"replica-{replica}", shared)
    # An equal snapshot built again (another round, the same content) is not checked.
    cache.set_snapshot("another", snapshot({LDS: {"a": "1"}}))
    assert checked == [shared]
    cache.set_snapshot("another", snapshot({LDS: {"a": "2"}}))
    assert len(checked) == 2


def test_an_inconsistent_snapshot_is_refused_every_time() -> None:
    cache = SnapshotCache()
    broken = Snapshot.build({LDS: [resources.listener("web", 8080, ["ext-missing"])]})
    for node in ("a", "b"):
        with pytest.raises(InconsistentSnapshotError, match="ext-missing"):
            cache.set_snapshot(node, broken)
    assert cache.node_ids() == []


def test_consistency_checks_can_be_turned_off() -> None:
    cache = SnapshotCache(check_consistency=False)
    broken = Snapshot.build({LDS: [resources.listener("web", 8080, ["ext-missing"])]})
    assert cache.set_snapshot("n", broken) is True


async def test_next_snapshot_returns_at_once_when_the_current_one_differs() -> None:
    cache = SnapshotCache()
    current = snapshot({LDS: {"a": "1"}})
    cache.set_snapshot("n", current)
    assert await cache.next_snapshot("n", None) is current
    assert await cache.next_snapshot("n", snapshot({})) is current


async def test_next_snapshot_waits_for_a_snapshot_that_differs() -> None:
    cache = SnapshotCache()
    known = snapshot({LDS: {"a": "1"}})
    cache.set_snapshot("n", known)
    waiting = asyncio.create_task(cache.next_snapshot("n", known))
    await asyncio.sleep(0)
    cache.set_snapshot("n", snapshot({LDS: {"a": "1"}}))
    cache.set_snapshot("other", snapshot({}))
    await asyncio.sleep(0)
    assert not waiting.done()
    newer = snapshot({LDS: {"a": "2"}})
    cache.set_snapshot("n", newer)
    assert await asyncio.wait_for(waiting, 10) is newer


async def test_a_node_without_snapshot_is_waited_for() -> None:
    cache = SnapshotCache()
    waiting = asyncio.create_task(cache.next_snapshot("n", None))
    await asyncio.sleep(0)
    first = snapshot({})
    cache.set_snapshot("n", first)
    assert await asyncio.wait_for(waiting, 10) is first


async def test_equal_content_set_again_after_clear_does_not_wake_the_waiter() -> None:
    cache = SnapshotCache()
    known = snapshot({LDS: {"a": "1"}})
    cache.set_snapshot("n", known)
    waiting = asyncio.create_task(cache.next_snapshot("n", known))
    await asyncio.sleep(0)
    cache.clear("n")
    cache.set_snapshot("n", snapshot({LDS: {"a": "1"}}))
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()


async def test_a_cancelled_waiter_is_forgotten() -> None:
    cache = SnapshotCache()
    waiting = asyncio.create_task(cache.next_snapshot("n", None))
    await asyncio.sleep(0)
    assert repr(cache) == "SnapshotCache(nodes=0, waiting=1)"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert repr(cache) == "SnapshotCache(nodes=0, waiting=0)"
