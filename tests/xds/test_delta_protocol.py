"""Delta (incremental) ADS as a state machine: requests and snapshots in, events out."""

from __future__ import annotations

import pytest

from meshext.xds import types
from meshext.xds.protocol import Ack, DeltaStream, Event, Nack, ProtocolError, Response
from tests.xds.builders import contents, delta_request, snapshot

LDS, CDS, ECDS = types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG


def responses(events: list[Event]) -> list[Response]:
    return [event for event in events if isinstance(event, Response)]


def only_response(events: list[Event]) -> Response:
    found = responses(events)
    assert len(found) == 1, events
    return found[0]


def acked(stream: DeltaStream, response: Response) -> list[Event]:
    return stream.receive_request(delta_request(response.type_url, nonce=response.nonce))


def versions(response: Response) -> dict[str, str]:
    return {entry.name: entry.version for entry in response.message.resources}


def test_first_request_without_node_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"node\.id"):
        DeltaStream().receive_request(delta_request(LDS, node=None))


def test_wildcard_listener_request_gets_every_listener_in_one_response() -> None:
    current = snapshot({LDS: {"a": "1", "b": "2"}})
    stream = DeltaStream()
    stream.receive_snapshot(current)
    response = only_response(stream.receive_request(delta_request(LDS)))
    assert contents(response.message) == {"a": "1", "b": "2"}
    assert versions(response) == dict(current.resources(LDS).versions)
    assert response.message.system_version_info == current.version(LDS)


def test_empty_snapshot_answers_the_initial_wildcard_request_once() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({}))
    response = only_response(stream.receive_request(delta_request(CDS)))
    assert list(response.message.resources) == []
    assert acked(stream, response) == [Ack(CDS, response.version, response.nonce, ())]
    assert stream.receive_snapshot(snapshot({ECDS: {}})) == []


def test_changed_listener_is_sent_alone_and_deleted_one_is_removed() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({LDS: {"a": "1", "b": "1", "c": "1"}}))
    acked(stream, only_response(stream.receive_request(delta_request(LDS))))
    response = only_response(stream.receive_snapshot(snapshot({LDS: {"a": "2", "b": "1"}})))
    assert contents(response.message) == {"a": "2"}
    assert list(response.message.removed_resources) == ["c"]
    assert acked(stream, response) == [Ack(LDS, response.version, response.nonce, ("a",), ("c",))]


def test_extension_configs_go_out_one_per_response_each_after_the_previous_ack() -> None:
    current = snapshot({ECDS: {"x": "1", "y": "1"}})
    stream = DeltaStream()
    stream.receive_snapshot(current)
    first = only_response(stream.receive_request(delta_request(ECDS, ["x", "y"])))
    assert contents(first.message) == {"x": "1"}
    assert first.version == current.resource_version(ECDS, "x")
    events = acked(stream, first)
    assert events[0] == Ack(ECDS, first.version, first.nonce, ("x",))
    second = only_response(events)
    assert contents(second.message) == {"y": "1"}
    assert responses(acked(stream, second)) == []


def test_deleted_extension_config_is_removed_in_its_own_response() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1"}}))
    first = only_response(stream.receive_request(delta_request(ECDS, ["x", "y"])))
    acked(stream, only_response(acked(stream, first)))
    removal = only_response(stream.receive_snapshot(snapshot({ECDS: {"y": "1"}})))
    assert list(removal.message.removed_resources) == ["x"]
    assert list(removal.message.resources) == []
    assert (removal.version, removal.removed_names) == ("", ("x",))


def test_nack_reports_the_rejected_resource_and_detail_and_is_not_resent() -> None:
    bad = snapshot({ECDS: {"x": "bad"}})
    stream = DeltaStream()
    stream.receive_snapshot(bad)
    rejected = only_response(stream.receive_request(delta_request(ECDS, ["x"])))
    events = stream.receive_request(delta_request(ECDS, nonce=rejected.nonce, error="bad config"))
    assert events == [
        Nack(ECDS, bad.resource_version(ECDS, "x") or "", rejected.nonce, "bad config", ("x",))
    ]
    assert stream.receive_snapshot(snapshot({ECDS: {"x": "bad"}, CDS: {"c": "1"}})) == []
    fixed = only_response(stream.receive_snapshot(snapshot({ECDS: {"x": "good"}})))
    assert contents(fixed.message) == {"x": "good"}


def test_stale_nonce_is_not_an_ack_but_its_subscription_changes_apply() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1", "z": "1"}}))
    first = only_response(stream.receive_request(delta_request(ECDS, ["x"])))
    acked(stream, first)
    assert stream.receive_request(delta_request(ECDS, nonce=first.nonce)) == []
    events = stream.receive_request(delta_request(ECDS, ["y"], nonce="999"))
    assert [type(event) for event in events] == [Response]
    assert contents(only_response(events).message) == {"y": "1"}


def test_subscription_change_while_a_response_is_outstanding_waits_for_its_ack() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1"}}))
    first = only_response(stream.receive_request(delta_request(ECDS, ["x"])))
    assert stream.receive_request(delta_request(ECDS, ["y"])) == []
    assert contents(only_response(acked(stream, first)).message) == {"y": "1"}


def test_names_requested_before_they_exist_are_sent_when_they_appear() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({}))
    assert stream.receive_request(delta_request(ECDS, ["later"])) == []
    appeared = only_response(stream.receive_snapshot(snapshot({ECDS: {"later": "1"}})))
    assert contents(appeared.message) == {"later": "1"}


def test_unsubscribed_names_are_not_sent_and_resubscribing_sends_them_again() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1"}}))
    acked(stream, only_response(stream.receive_request(delta_request(ECDS, ["x"]))))
    assert stream.receive_request(delta_request(ECDS, unsubscribe=["x"])) == []
    assert stream.receive_snapshot(snapshot({ECDS: {"x": "2"}})) == []
    again = only_response(stream.receive_request(delta_request(ECDS, ["x"])))
    assert contents(again.message) == {"x": "2"}


def test_explicit_wildcard_subscription_and_unsubscription() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1"}}))
    assert stream.receive_request(delta_request(ECDS)) == []
    response = only_response(stream.receive_request(delta_request(ECDS, ["*"])))
    acked(stream, response)
    stream.receive_request(delta_request(ECDS, unsubscribe=["*"]))
    assert stream.receive_snapshot(snapshot({ECDS: {"x": "2"}})) == []


def test_reconnect_with_matching_initial_resource_versions_gets_only_confirmations() -> None:
    current = snapshot({LDS: {"a": "1"}, CDS: {}, ECDS: {"x": "1"}})
    stream = DeltaStream()
    stream.receive_request(
        delta_request(LDS, initial={"a": current.resource_version(LDS, "a") or ""})
    )
    stream.receive_request(
        delta_request(ECDS, ["x"], initial={"x": current.resource_version(ECDS, "x") or ""})
    )
    assert stream.receive_snapshot(current) == [
        Ack(ECDS, current.resource_version(ECDS, "x") or "", "", ("x",)),
        Ack(LDS, current.resource_version(LDS, "a") or "", "", ("a",)),
    ]
    assert stream.receive_snapshot(current) == []


def test_reconnect_with_outdated_initial_versions_gets_changes_and_removals_only() -> None:
    current = snapshot({LDS: {"a": "1", "b": "2"}})
    stream = DeltaStream()
    stream.receive_snapshot(current)
    held = {
        "a": current.resource_version(LDS, "a") or "",
        "b": "outdated",
        "gone": "whatever",
    }
    response = only_response(stream.receive_request(delta_request(LDS, initial=held)))
    assert contents(response.message) == {"b": "2"}
    assert list(response.message.removed_resources) == ["gone"]


def test_a_reconnecting_client_is_not_sent_an_empty_response_when_it_holds_everything() -> None:
    stream = DeltaStream()
    stream.receive_snapshot(snapshot({}))
    assert stream.receive_request(delta_request(CDS, initial={})) != []
    other = DeltaStream()
    current = snapshot({CDS: {"c": "1"}})
    other.receive_snapshot(current)
    initial = {"c": current.resource_version(CDS, "c") or ""}
    events = other.receive_request(delta_request(CDS, initial=initial))
    assert events == [Ack(CDS, initial["c"], "", ("c",))]
