"""Offers of a module a proxy has not fetched are repeated with backoff, each a new
attempt, and stop once the proxy runs the module."""

from __future__ import annotations

import asyncio

from meshext.server.delivery import DeliveryState, ProxyDelivery
from meshext.server.fetch_retries import FetchBackoff, FetchRetries

NAME = "meshext.servicemeshextension.bookinfo.tag"


def test_the_backoff_starts_at_one_second_and_doubles_to_fifteen() -> None:
    backoff = FetchBackoff()
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


async def test_a_rejection_schedules_the_next_attempt_which_asks_for_the_proxy() -> None:
    due: list[str] = []
    retries = FetchRetries(due.append, FetchBackoff(first=0.01, maximum=0.04))
    assert retries.attempts("p1") == {}
    assert retries.rejected("p1", NAME) == 0.01
    assert retries.waiting("p1", NAME)
    assert retries.rejected("p1", NAME) == 0.0  # already scheduled: not twice
    await asyncio.sleep(0.05)
    assert due == ["p1"]
    assert retries.attempts("p1") == {NAME: 1}
    assert retries.rejected("p1", NAME) == 0.02  # the second failure waits longer
    await asyncio.sleep(0.05)
    assert retries.attempts("p1") == {NAME: 2}
    retries.accepted("p1", NAME)
    assert retries.attempts("p1") == {NAME: 2}  # the accepted version stays as it is
    assert retries.rejected("p1", NAME) == 0.01  # and a later failure starts over
    retries.forget_proxy("p1")
    assert not retries.active("p1")


async def test_a_proxy_running_the_stand_in_is_never_said_to_run_the_module() -> None:
    retries = FetchRetries(lambda _: None)
    retries.rejected("p1", NAME)
    retries.standing_in("p1", NAME, "standin-v")
    rejected = ProxyDelivery(
        "p1", DeliveryState.REJECTED, "v1", "standin-v",
        "Unable to create Wasm plugin tag; still running version standin-v",
    )  # fmt: skip
    explained = retries.explain(rejected, NAME)
    assert explained.state is DeliveryState.REJECTED
    assert explained.running_version is None
    assert explained.message.startswith("Unable to create Wasm plugin tag; the proxy has not")
    assert "still running" not in explained.message
    running = ProxyDelivery("p1", DeliveryState.RUNNING, "v2", "v2")
    assert retries.explain(running, NAME) is running
    retries.close()
