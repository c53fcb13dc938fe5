"""Garbage collection is held off through a push round and the sends it schedules."""

import asyncio
import gc
from collections.abc import Iterator

import pytest

from meshext.server.collection import collection_held_through_sends


@pytest.fixture
def collection_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.usefixtures("collection_enabled")
async def test_collection_is_off_in_the_round_and_its_sends_and_on_again_after() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    with collection_held_through_sends(loop):
        seen.append(("round", gc.isenabled()))
        loop.call_soon(lambda: seen.append(("send", gc.isenabled())))
        loop.call_soon(lambda: seen.append(("send", gc.isenabled())))
    loop.call_soon(lambda: seen.append(("after", gc.isenabled())))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [("round", False), ("send", False), ("send", False), ("after", True)]
    assert gc.isenabled()


@pytest.mark.usefixtures("collection_enabled")
async def test_a_round_that_raises_still_turns_collection_on_again() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(RuntimeError), collection_held_through_sends(loop):
        raise RuntimeError("round failed")
    assert not gc.isenabled()
    await asyncio.sleep(0)
    assert gc.isenabled()


@pytest.mark.usefixtures("collection_enabled")
async def test_collection_disabled_by_someone_else_stays_disabled() -> None:
    loop = asyncio.get_running_loop()
    gc.disable()
    with collection_held_through_sends(loop):
        assert not gc.isenabled()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not gc.isenabled()


@pytest.mark.usefixtures("collection_enabled")
async def test_a_hold_inside_a_hold_leaves_turning_it_on_to_the_outer_one() -> None:
    loop = asyncio.get_running_loop()
    states: list[bool] = []
    with collection_held_through_sends(loop):
        with collection_held_through_sends(loop):
            pass
        loop.call_soon(lambda: states.append(gc.isenabled()))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert states == [False]
    assert gc.isenabled()
