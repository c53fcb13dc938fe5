"""The delivery tracker: what each proxy runs, and what it must never be offered again."""

from __future__ import annotations

from meshext.server.delivery import DeliveryState, DeliveryTracker

NODE, NAME = "sidecar-1", "meshext.servicemeshextension.bookinfo.tag"


def test_an_offered_version_is_pending_until_acknowledged_then_running() -> None:
    tracker = DeliveryTracker()
    tracker.offered(NODE, NAME, "v1", "message-v1")
    assert tracker.state(NODE, NAME, "v1").state is DeliveryState.PENDING
    tracker.acked(NODE, NAME, "v1")
    state = tracker.state(NODE, NAME, "v1")
    assert (state.state, state.running_version) == (DeliveryState.RUNNING, "v1")


def test_a_rejected_version_is_remembered_with_the_proxys_reason() -> None:
    tracker = DeliveryTracker()
    tracker.offered(NODE, NAME, "v1", "message-v1")
    tracker.nacked(NODE, NAME, "v1", "Unable to create Wasm plugin tag")
    assert tracker.is_rejected(NODE, NAME, "v1")
    assert not tracker.is_rejected(NODE, NAME, "v2")
    state = tracker.state(NODE, NAME, "v1")
    assert state.state is DeliveryState.REJECTED
    assert state.message == "Unable to create Wasm plugin tag"
    assert tracker.last_accepted(NODE, NAME) is None


def test_after_a_rejection_the_last_accepted_version_is_kept_for_resending() -> None:
    tracker = DeliveryTracker()
    tracker.offered(NODE, NAME, "v1", "message-v1")
    tracker.acked(NODE, NAME, "v1")
    tracker.offered(NODE, NAME, "v2", "message-v2")
    tracker.nacked(NODE, NAME, "v2", "bad config")
    assert tracker.last_accepted(NODE, NAME) == "message-v1"
    state = tracker.state(NODE, NAME, "v2")
    assert state.state is DeliveryState.REJECTED
    assert state.running_version == "v1"
    assert "still running version v1" in state.message


def test_a_later_acceptance_of_the_same_version_clears_the_rejection() -> None:
    tracker = DeliveryTracker()
    tracker.offered(NODE, NAME, "v1", "m")
    tracker.nacked(NODE, NAME, "v1", "transient")
    tracker.acked(NODE, NAME, "v1")
    assert not tracker.is_rejected(NODE, NAME, "v1")


def test_rejections_survive_the_extension_being_left_out_but_not_a_proxy_leaving() -> None:
    tracker = DeliveryTracker()
    tracker.offered(NODE, NAME, "v1", "m")
    tracker.nacked(NODE, NAME, "v1", "bad")
    tracker.retain(NODE, set())
    assert tracker.is_rejected(NODE, NAME, "v1")
    tracker.forget_proxy(NODE)
    assert not tracker.is_rejected(NODE, NAME, "v1")


def test_proxies_are_tracked_independently() -> None:
    tracker = DeliveryTracker()
    tracker.offered("a", NAME, "v1", "m")
    tracker.offered("b", NAME, "v1", "m")
    tracker.nacked("a", NAME, "v1", "bad")
    tracker.acked("b", NAME, "v1")
    assert tracker.state("a", NAME, "v1").state is DeliveryState.REJECTED
    assert tracker.state("b", NAME, "v1").state is DeliveryState.RUNNING
