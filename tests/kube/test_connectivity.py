"""The controller's view of whether the API server answers, without an API server."""

from __future__ import annotations

import asyncio

from meshext.kube.connectivity import Connectivity
from meshext.kube.errors import KubeUnavailable


async def test_a_pause_during_an_outage_ends_when_the_api_server_answers_again() -> None:
    connectivity = Connectivity()
    connectivity.failed("connection refused")
    pause = asyncio.create_task(connectivity.pause(3600))
    await asyncio.sleep(0)
    assert not pause.done()
    connectivity.succeeded()
    await asyncio.wait_for(pause, 60)


async def test_a_pause_while_the_api_server_answers_is_the_full_delay() -> None:
    connectivity = Connectivity()
    pause = asyncio.create_task(connectivity.pause(3600))
    await asyncio.sleep(0)
    connectivity.failed("reset")
    connectivity.succeeded()
    await asyncio.sleep(0)
    assert not pause.done()
    pause.cancel()


def test_an_outage_is_counted_once_and_remembers_the_latest_problem() -> None:
    now = [100.0]
    connectivity = Connectivity(clock=lambda: now[0])
    assert connectivity.reachable
    connectivity.failed("refused")
    now[0] = 107.0
    connectivity.failed("timed out")
    assert (connectivity.reachable, connectivity.outages) == (False, 1)
    assert connectivity.problem == "timed out"
    assert connectivity.lost_for() == 7.0
    connectivity.succeeded()
    assert (connectivity.reachable, connectivity.problem, connectivity.lost_for()) == (
        True,
        "",
        0.0,
    )


async def test_the_probe_asks_only_while_the_api_server_is_lost() -> None:
    connectivity = Connectivity()
    asked: list[int] = []

    async def ask() -> object:
        asked.append(1)
        if len(asked) < 3:
            raise KubeUnavailable("still down")
        connectivity.succeeded()
        return {}

    probe = asyncio.create_task(connectivity.probe(ask, interval=0.01))
    await asyncio.sleep(0.05)
    assert asked == []
    connectivity.failed("refused")
    while not connectivity.reachable:
        await asyncio.sleep(0.01)
    count = len(asked)
    await asyncio.sleep(0.05)
    probe.cancel()
    assert count == 3
    assert len(asked) == count
