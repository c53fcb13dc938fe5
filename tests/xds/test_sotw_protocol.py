"""State-of-the-world ADS as a state machine: requests and snapshots in, events out."""

from __future__ import annotations

import pytest

from meshext.xds import types
from meshext.xds.protocol import Ack, Event, Nack, ProtocolError, Response, SotwStream
from tests.xds.builders import contents, snapshot, sotw_request

LDS, CDS, ECDS = types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG


def responses(events: list[Event]) -> list[Response]:
    found = [event for event in events if isinstance(event, Response)]
    assert all(isinstance(event, (Ack, Nack)) for event in events if event not in found)
    return found


def only_response(events: list[Event]) -> Response:
    found = responses(events)
    assert len(found) == 1, events
    return found[0]


def acked(stream: SotwStream, response: Response, names: list[str] | None = None) -> list[Event]:
    """The client accepts ``response`` and keeps subscribing to ``names``."""
    return stream.receive_request(
        sotw_request(
            response.type_url,
            names if names is not None else [],
            version=response.message.version_info,
            nonce=response.nonce,
        )
    )


def test_first_request_without_node_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"node\.id"):
        SotwStream().receive_request(sotw_request(LDS, node=None))


def test_request_without_type_url_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="type_url"):
        SotwStream().receive_request(sotw_request(""))


def test_node_id_changing_within_a_stream_is_a_protocol_error() -> None:
    stream = SotwStream()
    stream.receive_request(sotw_request(LDS))
    with pytest.raises(ProtocolError, match="node id changed"):
        stream.receive_request(sotw_request(CDS, node="someone-else"))


def test_later_requests_may_omit_the_node() -> None:
    stream = SotwStream()
    stream.receive_request(sotw_request(LDS))
    stream.receive_request(sotw_request(CDS, node=None))
    assert stream.node is not None
    assert stream.node.id == "node-1"


def test_nothing_is_sent_before_the_node_has_a_snapshot() -> None:
    stream = SotwStream()
    assert stream.receive_request(sotw_request(LDS)) == []
    events = stream.receive_snapshot(snapshot({LDS: {"a": "1"}}))
    assert contents(only_response(events).message) == {"a": "1"}


def test_wildcard_listener_request_gets_every_listener_in_one_response() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({LDS: {"a": "1", "b": "2"}}))
    response = only_response(stream.receive_request(sotw_request(LDS)))
    assert contents(response.message) == {"a": "1", "b": "2"}
    assert response.resource_names == ("a", "b")
    assert response.message.version_info == response.version


def test_wildcard_response_version_is_the_snapshot_version_of_the_type() -> None:
    current = snapshot({LDS: {"a": "1", "b": "2"}})
    stream = SotwStream()
    stream.receive_snapshot(current)
    response = only_response(stream.receive_request(sotw_request(LDS)))
    assert response.version == current.version(LDS)


def test_empty_snapshot_still_answers_complete_types_once() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({}))
    response = only_response(stream.receive_request(sotw_request(LDS)))
    assert contents(response.message) == {}
    assert acked(stream, response) == [Ack(LDS, response.version, response.nonce, ())]
    assert stream.receive_snapshot(snapshot({})) == []


def test_ack_is_reported_with_the_version_and_names_of_the_acked_response() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({CDS: {"a": "1", "b": "1"}}))
    response = only_response(stream.receive_request(sotw_request(CDS)))
    assert acked(stream, response) == [Ack(CDS, response.version, response.nonce, ("a", "b"))]


def test_nothing_is_resent_when_the_snapshot_content_is_unchanged() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({LDS: {"a": "1"}, ECDS: {"x": "1"}}))
    acked(stream, only_response(stream.receive_request(sotw_request(LDS))))
    acked(stream, only_response(stream.receive_request(sotw_request(ECDS, ["x"]))), ["x"])
    assert stream.receive_snapshot(snapshot({LDS: {"a": "1"}, ECDS: {"x": "1"}})) == []


def test_a_changed_listener_resends_every_listener_and_a_deleted_one_is_left_out() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({LDS: {"a": "1", "b": "1", "c": "1"}}))
    acked(stream, only_response(stream.receive_request(sotw_request(LDS))))
    response = only_response(stream.receive_snapshot(snapshot({LDS: {"a": "2", "b": "1"}})))
    assert contents(response.message) == {"a": "2", "b": "1"}


def test_extension_configs_go_out_one_per_response_each_after_the_previous_ack() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1", "z": "1"}}))
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x", "y", "z"])))
    assert contents(first.message) == {"x": "1"}
    assert stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "2", "z": "1"}})) == []
    events = acked(stream, first, ["x", "y", "z"])
    assert events[0] == Ack(ECDS, first.version, first.nonce, ("x",))
    second = only_response(events)
    assert contents(second.message) == {"y": "2"}
    third = only_response(acked(stream, second, ["x", "y", "z"]))
    assert contents(third.message) == {"z": "1"}
    assert responses(acked(stream, third, ["x", "y", "z"])) == []


def test_per_name_version_is_the_resource_version_and_the_wire_adds_the_client_state() -> None:
    current = snapshot({ECDS: {"x": "1", "y": "1"}})
    x, y = current.resource_version(ECDS, "x"), current.resource_version(ECDS, "y")
    stream = SotwStream()
    stream.receive_snapshot(current)
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x", "y"])))
    assert first.version == x
    assert first.message.version_info == f"{x};x={x}"
    second = only_response(acked(stream, first, ["x", "y"]))
    assert second.message.version_info == f"{y};x={x}&y={y}"


def test_reconnecting_client_is_sent_only_the_per_name_resources_it_lacks() -> None:
    current = snapshot({ECDS: {"x": "1", "y": "2", "z": "1"}})
    x = current.resource_version(ECDS, "x")
    stream = SotwStream()
    stream.receive_request(sotw_request(ECDS, ["x", "y", "z"], version=f"{x};x={x}&y=old&gone=1"))
    found = responses(stream.receive_snapshot(current))
    assert [contents(response.message) for response in found] == [{"y": "2"}]


def test_nack_reports_the_rejected_version_names_and_detail_and_is_not_resent() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1"}}))
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x"])))
    acked(stream, first, ["x"])
    bad = snapshot({ECDS: {"x": "bad"}})
    rejected = only_response(stream.receive_snapshot(bad))
    events = stream.receive_request(
        sotw_request(
            ECDS,
            ["x"],
            version=first.message.version_info,
            nonce=rejected.nonce,
            error="wasm module failed",
        )
    )
    assert events == [
        Nack(
            ECDS,
            bad.resource_version(ECDS, "x") or "",
            rejected.nonce,
            "wasm module failed",
            ("x",),
        )
    ]
    assert stream.receive_snapshot(snapshot({ECDS: {"x": "bad"}, LDS: {}})) == []


def test_a_rejected_resource_is_sent_again_once_it_changes() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({CDS: {"a": "bad"}}))
    rejected = only_response(stream.receive_request(sotw_request(CDS)))
    stream.receive_request(sotw_request(CDS, nonce=rejected.nonce, error="no"))
    assert stream.receive_snapshot(snapshot({CDS: {"a": "bad"}})) == []
    fixed = only_response(stream.receive_snapshot(snapshot({CDS: {"a": "good"}})))
    assert contents(fixed.message) == {"a": "good"}


def test_a_nack_of_one_extension_config_does_not_hold_back_the_others() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "bad", "y": "1"}}))
    bad = only_response(stream.receive_request(sotw_request(ECDS, ["x", "y"])))
    events = stream.receive_request(sotw_request(ECDS, ["x", "y"], nonce=bad.nonce, error="no"))
    assert isinstance(events[0], Nack)
    assert contents(only_response(events).message) == {"y": "1"}


def test_request_with_a_stale_nonce_is_never_answered() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1", "z": "1"}}))
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x"])))
    second = only_response(acked(stream, first, ["x", "y"]))
    assert stream.receive_request(sotw_request(ECDS, ["x", "y", "z"], nonce=first.nonce)) == []
    assert stream.receive_request(sotw_request(ECDS, ["x", "y", "z"])) == []
    assert stream.status()[ECDS].pending_nonce == second.nonce


def test_a_name_dropped_and_requested_again_while_a_response_is_in_flight_is_resent() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1"}}))
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x", "y"])))
    second = only_response(acked(stream, first, ["x", "y"]))
    assert stream.receive_request(sotw_request(ECDS, ["y"], nonce=first.nonce)) == []
    assert stream.receive_request(sotw_request(ECDS, ["x", "y"], nonce=first.nonce)) == []
    again = only_response(acked(stream, second, ["x", "y"]))
    assert contents(again.message) == {"x": "1"}


def test_request_repeating_the_latest_acked_nonce_updates_the_subscription() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1"}}))
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x"])))
    assert responses(acked(stream, first, ["x"])) == []
    again = only_response(acked(stream, first, ["x", "y"]))
    assert contents(again.message) == {"y": "1"}


def test_nonce_from_an_earlier_stream_does_not_make_the_first_request_stale() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({LDS: {"a": "1"}}))
    response = only_response(stream.receive_request(sotw_request(LDS, nonce="41")))
    assert contents(response.message) == {"a": "1"}


def test_names_requested_before_they_exist_are_sent_when_they_appear() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1"}}))
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x", "later"])))
    assert responses(acked(stream, first, ["x", "later"])) == []
    appeared = only_response(stream.receive_snapshot(snapshot({ECDS: {"x": "1", "later": "1"}})))
    assert contents(appeared.message) == {"later": "1"}


def test_unsubscribed_names_are_not_sent_and_resubscribing_sends_them_again() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1", "y": "1"}}))
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x"])))
    assert responses(acked(stream, first, [])) == []
    assert stream.receive_snapshot(snapshot({ECDS: {"x": "2", "y": "2"}})) == []
    again = only_response(acked(stream, first, ["x"]))
    assert contents(again.message) == {"x": "2"}


def test_named_listener_subscription_gets_only_those_listeners() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({LDS: {"a": "1", "b": "1"}}))
    response = only_response(stream.receive_request(sotw_request(LDS, ["b"])))
    assert contents(response.message) == {"b": "1"}


def test_explicit_wildcard_name_subscribes_to_everything() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1"}}))
    response = only_response(stream.receive_request(sotw_request(ECDS, ["*"])))
    assert contents(response.message) == {"x": "1"}


def test_empty_extension_config_subscription_is_not_a_wildcard() -> None:
    stream = SotwStream()
    stream.receive_snapshot(snapshot({ECDS: {"x": "1"}}))
    assert stream.receive_request(sotw_request(ECDS, [])) == []


def test_reconnecting_client_holding_the_current_versions_gets_nothing_but_confirmations() -> None:
    current = snapshot({LDS: {"a": "1"}, CDS: {"c": "1"}, ECDS: {"x": "1", "y": "1"}})
    first = SotwStream()
    first.receive_snapshot(current)
    claimed = {}
    for type_url, names in ((CDS, []), (LDS, []), (ECDS, ["x", "y"])):
        found = responses(first.receive_request(sotw_request(type_url, names)))
        while found:
            claimed[type_url] = found[0].message.version_info
            found = responses(acked(first, found[0], names))
    second = SotwStream()
    for type_url, names in ((CDS, []), (LDS, []), (ECDS, ["x", "y"])):
        assert (
            second.receive_request(sotw_request(type_url, names, version=claimed[type_url])) == []
        )
    events = second.receive_snapshot(current)
    assert responses(events) == []
    # What the client already holds is confirmed, one extension config per Ack.
    confirmed = {(e.type_url, e.resource_names, e.version) for e in events if isinstance(e, Ack)}
    assert confirmed == {
        (CDS, ("c",), current.version(CDS)),
        (LDS, ("a",), current.version(LDS)),
        (ECDS, ("x",), current.resource_version(ECDS, "x")),
        (ECDS, ("y",), current.resource_version(ECDS, "y")),
    }
    assert all(isinstance(e, Ack) and e.nonce == "" for e in events)
    assert dict(second.status()[ECDS].resources) == dict(current.resources(ECDS).versions)
    # Confirmations come once: a later identical snapshot produces nothing at all.
    assert second.receive_snapshot(current) == []


def test_reconnecting_client_with_other_versions_gets_everything_again() -> None:
    stream = SotwStream()
    stream.receive_request(sotw_request(LDS, version="old"))
    stream.receive_request(sotw_request(ECDS, ["x", "y"], version="made-up"))
    events = stream.receive_snapshot(snapshot({LDS: {"a": "1"}, ECDS: {"x": "1", "y": "1"}}))
    assert [(r.type_url, r.resource_names) for r in responses(events)] == [
        (ECDS, ("x",)),
        (LDS, ("a",)),
    ]


def test_changes_of_several_types_go_out_clusters_then_extension_configs_then_listeners() -> None:
    stream = SotwStream()
    for type_url, names in ((LDS, []), (ECDS, ["x"]), (CDS, [])):
        stream.receive_request(sotw_request(type_url, names))
    events = stream.receive_snapshot(snapshot({LDS: {"a": "1"}, CDS: {"c": "1"}, ECDS: {"x": "1"}}))
    assert [r.type_url for r in responses(events)] == [CDS, ECDS, LDS]


def test_nonces_increase_across_types() -> None:
    stream = SotwStream()
    for type_url, names in ((LDS, []), (ECDS, ["x"]), (CDS, [])):
        stream.receive_request(sotw_request(type_url, names))
    events = stream.receive_snapshot(snapshot({LDS: {"a": "1"}, CDS: {"c": "1"}, ECDS: {"x": "1"}}))
    assert [int(r.nonce) for r in responses(events)] == [1, 2, 3]


def test_status_shows_holdings_subscription_and_standing_rejections() -> None:
    stream = SotwStream()
    current = snapshot({ECDS: {"x": "1", "y": "bad"}})
    stream.receive_snapshot(current)
    first = only_response(stream.receive_request(sotw_request(ECDS, ["x", "y"])))
    second = only_response(acked(stream, first, ["x", "y"]))
    stream.receive_request(sotw_request(ECDS, ["x", "y"], nonce=second.nonce, error="y is broken"))
    status = stream.status()[ECDS]
    assert status.subscribed == ("x", "y")
    assert dict(status.resources) == {"x": current.resource_version(ECDS, "x")}
    assert dict(status.rejected) == {"y": "y is broken"}
    assert status.last_nack == "y is broken"
    assert (status.responses_sent, status.acks, status.nacks) == (2, 1, 1)
    assert status.acked_version == first.version


def test_names_with_separator_characters_survive_the_reconnect_claim() -> None:
    names = ["a&b=c", "semi;colon", "space name", "percent%2F", "ünï"]
    current = snapshot({ECDS: dict.fromkeys(names, "1")})
    first = SotwStream()
    first.receive_snapshot(current)
    found = responses(first.receive_request(sotw_request(ECDS, names)))
    claimed = ""
    while found:
        claimed = found[0].message.version_info
        found = responses(acked(first, found[0], names))
    second = SotwStream()
    second.receive_request(sotw_request(ECDS, names, version=claimed))
    assert responses(second.receive_snapshot(current)) == []
    assert dict(second.status()[ECDS].resources) == dict(current.resources(ECDS).versions)
