"""Properties of both protocol machines under random snapshots, subscriptions and verdicts.

A model client (:class:`ModelClient`) behaves like Envoy: it processes responses in
the order they were sent, answers each with an ACK or a NACK carrying its current
subscription, sometimes changes its subscription with a request that may cross a
response in flight, and sometimes repeats an old nonce. Random operation sequences
check that the machine

* never answers a stale nonce,
* keeps at most one response per type outstanding, with nonces that only increase,
* reports exactly one ACK or NACK per response, matching the verdict,
* once the client has answered everything, leaves it holding exactly the snapshot
  (less the versions it rejected),
* sends nothing to a reconnecting client that holds the current snapshot (in delta,
  an empty answer to a wildcard type the client holds nothing of).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from meshext.xds import types
from meshext.xds.protocol import Ack, DeltaStream, Event, Nack, Response, SotwStream
from meshext.xds.snapshot import Snapshot, make_resource, versions_digest
from tests.xds.builders import delta_request, resource, snapshot, sotw_request

LDS, CDS, ECDS = types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG
TYPES = (CDS, ECDS, LDS)
NAMES = ("a", "b", "c")
Mode = Literal["sotw", "delta"]
DELETED = "(deleted)"

contents = st.sampled_from(["1", "2", "3"])
snapshots = st.fixed_dictionaries(
    {type_url: st.dictionaries(st.sampled_from(NAMES), contents) for type_url in TYPES}
).map(snapshot)
extension_names = st.frozensets(st.sampled_from((*NAMES, "d")))

operations = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), snapshots),
        st.tuples(st.just("deliver"), st.booleans()),
        st.tuples(st.just("deliver"), st.just(True)),
        st.tuples(st.just("subscribe"), extension_names),
        st.tuples(st.just("stale"), st.sampled_from(TYPES)),
    ),
    max_size=40,
)


@dataclass
class ModelClient:
    """An Envoy-like client of one stream; LDS/CDS are wildcard, ECDS named."""

    mode: Mode
    machine: SotwStream | DeltaStream
    names: frozenset[str]
    in_flight: deque[Response] = field(default_factory=deque)
    holdings: dict[str, dict[str, str]] = field(default_factory=lambda: {t: {} for t in TYPES})
    accepted_version: dict[str, str] = field(default_factory=lambda: dict.fromkeys(TYPES, ""))
    received: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in TYPES})
    rejected: set[tuple[str, str, str]] = field(default_factory=set)
    verdicts: dict[str, bool] = field(default_factory=dict)
    reported: dict[str, Event] = field(default_factory=dict)
    last_nonce: int = 0

    def subscription(self, type_url: str) -> list[str]:
        return sorted(self.names) if type_url == ECDS else []

    def interested(self, type_url: str, name: str) -> bool:
        return type_url != ECDS or name in self.names

    def start(self) -> None:
        for type_url in TYPES:
            if self.mode == "sotw":
                self.send(sotw_request(type_url, self.subscription(type_url)))
            else:
                self.send(delta_request(type_url, self.subscription(type_url)))

    def send(self, request: Any, *, stale: bool = False) -> None:
        events = self.machine.receive_request(request)
        if stale:
            if self.mode == "sotw":
                assert events == [], "a stale nonce was answered"
            else:
                assert not any(isinstance(e, (Ack, Nack)) for e in events)
        self.take(events)

    def take(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Response):
                assert int(event.nonce) > self.last_nonce, "nonces must increase"
                self.last_nonce = int(event.nonce)
                assert all(r.type_url != event.type_url for r in self.in_flight), (
                    "two responses of one type outstanding"
                )
                if event.type_url in types.COMPLETE_TYPES and self.mode == "sotw":
                    assert event.version == versions_of(event)
                if event.type_url in types.PER_NAME_TYPES:
                    assert len(event.resource_names) + len(event.removed_names) == 1
                self.in_flight.append(event)
            else:
                assert event.nonce in self.verdicts, "verdict reported for an unknown response"
                assert event.nonce not in self.reported, "verdict reported twice"
                assert isinstance(event, Ack) == self.verdicts[event.nonce]
                self.reported[event.nonce] = event

    def deliver(self, accept: bool) -> None:
        if not self.in_flight:
            return
        response = self.in_flight.popleft()
        type_url = response.type_url
        message = response.message
        self.received[type_url].append(response.nonce)
        self.verdicts[response.nonce] = accept
        if accept:
            held = self.holdings[type_url]
            if self.mode == "sotw" and type_url in types.COMPLETE_TYPES:
                held.clear()
            sent = dict(zip(response.resource_names, sent_versions(response), strict=True))
            for name, version in sent.items():
                if self.interested(type_url, name):
                    held[name] = version
            for name in response.removed_names:
                held.pop(name, None)
            if self.mode == "sotw":
                self.accepted_version[type_url] = message.version_info
        else:
            for name, version in zip(response.resource_names, sent_versions(response), strict=True):
                self.rejected.add((type_url, name, version))
            removed = set(response.removed_names)
            if self.mode == "sotw" and type_url in types.COMPLETE_TYPES:
                removed = set(self.holdings[type_url]) - set(response.resource_names)
            self.rejected.update((type_url, name, DELETED) for name in removed)
        error = None if accept else "rejected"
        if self.mode == "sotw":
            self.send(
                sotw_request(
                    type_url,
                    self.subscription(type_url),
                    version=self.accepted_version[type_url],
                    nonce=response.nonce,
                    error=error,
                )
            )
        else:
            self.send(delta_request(type_url, nonce=response.nonce, error=error))

    def subscribe(self, names: frozenset[str]) -> None:
        added, dropped = names - self.names, self.names - names
        self.names = names
        for name in dropped:
            self.holdings[ECDS].pop(name, None)
        received = self.received[ECDS]
        if self.mode == "sotw":
            nonce = received[-1] if received else ""
            self.send(
                sotw_request(ECDS, sorted(names), version=self.accepted_version[ECDS], nonce=nonce),
                stale=bool(self.in_flight_of(ECDS)),
            )
        elif added or dropped:
            self.send(delta_request(ECDS, sorted(added), sorted(dropped)))

    def repeat_old_nonce(self, type_url: str) -> None:
        received = self.received[type_url]
        if len(received) < 2 and not (received and self.in_flight_of(type_url)):
            return
        nonce = received[-2] if not self.in_flight_of(type_url) else received[-1]
        if self.mode == "sotw":
            request = sotw_request(
                type_url,
                self.subscription(type_url),
                version=self.accepted_version[type_url],
                nonce=nonce,
            )
        else:
            request = delta_request(type_url, nonce=nonce)
        self.send(request, stale=True)

    def in_flight_of(self, type_url: str) -> list[Response]:
        return [r for r in self.in_flight if r.type_url == type_url]

    def drain(self) -> None:
        while self.in_flight:
            self.deliver(True)


def sent_versions(response: Response) -> list[str]:
    message = response.message
    if message.DESCRIPTOR.name == "DeltaDiscoveryResponse":
        return [entry.version for entry in message.resources]
    if response.type_url in types.COMPLETE_TYPES:
        return [_version_in(response, name) for name in response.resource_names]
    return [response.version]


def _version_in(response: Response, name: str) -> str:
    for packed in response.message.resources:
        message = _unpack(response.type_url, packed)
        if types.resource_name(response.type_url, message) == name:
            return make_resource(response.type_url, message).version
    raise AssertionError(name)


def _unpack(type_url: str, packed: Any) -> Any:
    message = resource(type_url, "", "")
    message.Clear()
    packed.Unpack(message)
    return message


def versions_of(response: Response) -> str:
    return versions_digest(dict(zip(response.resource_names, sent_versions(response), strict=True)))


def expected(current: Snapshot, client: ModelClient, type_url: str) -> dict[str, str]:
    versions = current.resources(type_url).versions
    return {
        name: version for name, version in versions.items() if client.interested(type_url, name)
    }


def run(mode: Mode, first: Snapshot, ops: list[tuple[str, Any]]) -> ModelClient:
    machine: SotwStream | DeltaStream = SotwStream() if mode == "sotw" else DeltaStream()
    client = ModelClient(mode, machine, frozenset({"a", "b"}))
    client.start()
    client.take(machine.receive_snapshot(first))
    for op, argument in ops:
        if op == "snapshot":
            client.take(machine.receive_snapshot(argument))
        elif op == "deliver":
            client.deliver(argument)
        elif op == "subscribe":
            client.subscribe(argument)
        else:
            client.repeat_old_nonce(argument)
    client.drain()
    return client


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from(["sotw", "delta"]), first=snapshots, ops=operations)
def test_random_streams_follow_the_protocol_and_converge(
    mode: Mode, first: Snapshot, ops: list[tuple[str, Any]]
) -> None:
    client = run(mode, first, ops)
    machine = client.machine
    assert not machine.waiting_for_client
    assert set(client.reported) == set(client.verdicts), "every response gets one verdict"
    current = machine.snapshot
    assert current is not None
    for type_url in TYPES:
        want = expected(current, client, type_url)
        held = client.holdings[type_url]
        for name in set(want) | set(held):
            if held.get(name) == want.get(name):
                continue
            if name not in want:
                # State-of-the-world cannot delete a per-name resource; the client
                # drops it when it stops asking for it.
                assert (type_url, name, DELETED) in client.rejected or (
                    mode == "sotw" and type_url in types.PER_NAME_TYPES
                ), f"{type_url} {name} should have been removed"
                continue
            assert (type_url, name, want[name]) in client.rejected, (
                f"{type_url} {name}: holds {held.get(name)}, snapshot has {want[name]}"
            )


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(["sotw", "delta"]),
    first=snapshots,
    names=extension_names,
    ops=st.lists(st.tuples(st.just("snapshot"), snapshots), max_size=5),
)
def test_a_reconnecting_up_to_date_client_is_sent_nothing(
    mode: Mode, first: Snapshot, names: frozenset[str], ops: list[tuple[str, Any]]
) -> None:
    client = run(mode, first, [("subscribe", names), *ops])
    current = client.machine.snapshot
    assert current is not None
    fresh: SotwStream | DeltaStream = SotwStream() if mode == "sotw" else DeltaStream()
    for type_url in TYPES:
        if mode == "sotw":
            request = sotw_request(
                type_url, client.subscription(type_url), version=client.accepted_version[type_url]
            )
        else:
            request = delta_request(
                type_url, client.subscription(type_url), initial=client.holdings[type_url]
            )
        assert fresh.receive_request(request) == []
    sent = [event for event in fresh.receive_snapshot(current) if isinstance(event, Response)]
    # A delta client holding nothing of a wildcard type cannot be told from a new one,
    # which must be answered (even with nothing) to finish its initialization.
    assert all(
        mode == "delta" and not response.resource_names and not client.holdings[response.type_url]
        for response in sent
    ), sent


@settings(max_examples=100, deadline=None)
@given(spec=st.dictionaries(st.sampled_from(NAMES), contents), order=st.permutations(NAMES))
def test_equal_content_gives_equal_versions_whatever_the_order(
    spec: dict[str, str], order: list[str]
) -> None:
    reordered = {name: spec[name] for name in order if name in spec}
    one, two = snapshot({ECDS: spec, LDS: spec}), snapshot({LDS: reordered, ECDS: reordered})
    assert one == two
    assert one.version(LDS) == two.version(LDS)
    assert one.version(ECDS) == two.version(ECDS)
