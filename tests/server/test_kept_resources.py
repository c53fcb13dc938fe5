"""Listeners and clusters kept by shape across rounds are exactly what would be made
again, for any proxy and plan, and what two rounds in a row did not ask for is gone."""

from __future__ import annotations

import dataclasses
import random

from meshext.api.phase import Phase
from meshext.envoy.files import ConfigDirectory
from meshext.envoy.node import DeliveryMode, HostPort, Outbound, ProxyInfo
from meshext.envoy.resources import CLUSTER_TYPE_URL, LISTENER_TYPE_URL
from meshext.envoy.sidecar import ClusterShape, proxy_resources
from meshext.envoy.wasm import ModuleDelivery, ModuleServerTls
from meshext.mesh.extension import FailurePolicy
from meshext.mesh.planner import PlannedExtension, WorkloadPlan
from meshext.mesh.traffic import CLIENT, SERVER, FilterLayer, TrafficMatch, TrafficSelector
from meshext.mesh.workload import ProxyKind
from meshext.server.kept_resources import KeptResources
from meshext.xds.snapshot import make_resource
from tests.envoy.support import plan, planned, proxy, workload

DELIVERIES = (
    ModuleDelivery(),
    ModuleDelivery(mode=DeliveryMode.REMOTE, server=HostPort("10.0.0.5", 8080)),
    ModuleDelivery(
        mode=DeliveryMode.REMOTE,
        server=HostPort("modules.mesh.local", 8443),
        tls=ModuleServerTls("-----BEGIN CERTIFICATE-----", "spiffe://mesh.local/meshext"),
    ),
    ModuleDelivery(
        mode=DeliveryMode.REMOTE, server=HostPort("10.0.0.5", 8080), nack_on_code_cache_miss=False
    ),
)


def random_extension(rng: random.Random, index: int) -> PlannedExtension:
    made = planned(
        f"ext-{index}",
        phase=rng.choice(list(Phase)),
        priority=rng.randint(-3, 3),
        failure_policy=rng.choice(list(FailurePolicy)),
        config=str(rng.random()),
    )
    extension = made.extension
    if rng.random() < 0.3:
        extension = dataclasses.replace(extension, layer=FilterLayer.NETWORK)
    if rng.random() < 0.5:
        ports = frozenset(rng.sample([15006, 15007, 80], rng.randint(0, 2)))
        directions = rng.choice([CLIENT, SERVER, CLIENT | SERVER])
        traffic = TrafficMatch((TrafficSelector(directions, ports),))
        extension = dataclasses.replace(extension, traffic=traffic)
    return dataclasses.replace(made, extension=extension)


def random_proxy_and_plan(rng: random.Random) -> tuple[ProxyInfo, WorkloadPlan]:
    wl = workload(kind=rng.choice([ProxyKind.SIDECAR, ProxyKind.GATEWAY]))
    info = dataclasses.replace(
        proxy(wl, app=rng.choice([HostPort("127.0.0.1", 8080), HostPort("app.local", 9000)])),
        extra_inbound_ports=tuple(rng.sample([15007, 15008], rng.randint(0, 2))),
        outbound=tuple(
            Outbound(15001 + k, HostPort(f"10.1.0.{k}", 80)) for k in range(rng.randint(0, 2))
        ),
    )
    extensions = [random_extension(rng, i) for i in range(rng.randint(0, 5))]
    return info, plan(extensions, wl)


def test_resources_made_with_kept_listeners_and_clusters_are_byte_identical_to_fresh_ones() -> None:
    rng = random.Random(20261206)
    kept = KeptResources()
    cases = [random_proxy_and_plan(rng) for _ in range(60)]
    reused = 0
    for round_number in range(4):
        for info, workload_plan in rng.sample(cases, 40):
            delivery = rng.choice(DELIVERIES)
            source = rng.choice([None, ConfigDirectory("/run/xds")])
            fresh = proxy_resources(info, workload_plan, delivery, config_source=source)
            with_kept = proxy_resources(
                info,
                workload_plan,
                delivery,
                config_source=source,
                listeners=kept.listener,
                clusters=kept.cluster,
            )
            assert with_kept.serialized() == fresh.serialized(), (round_number, info)
            for type_url, messages in (
                (LISTENER_TYPE_URL, with_kept.listeners),
                (CLUSTER_TYPE_URL, with_kept.clusters),
            ):
                for message in messages:
                    packed = kept.packed(type_url, message)
                    assert packed.packed == make_resource(type_url, message).packed
                    if packed is kept.packed(type_url, message):
                        reused += 1
        kept.next_round()
    assert reused > 0


def test_what_neither_this_round_nor_the_last_asked_for_is_dropped() -> None:
    kept = KeptResources()
    shape = ClusterShape("meshext.app", HostPort("127.0.0.1", 8080))
    first = kept.cluster(shape)
    resource = kept.packed(CLUSTER_TYPE_URL, first)
    kept.next_round()
    assert kept.cluster(shape) is first  # asked for in the round before: kept
    assert kept.packed(CLUSTER_TYPE_URL, first) is resource
    kept.next_round()
    kept.next_round()  # a round that did not ask for it
    again = kept.cluster(shape)
    assert again is not first
    assert again == first
    assert kept.packed(CLUSTER_TYPE_URL, again) is not resource


def test_a_packed_resource_is_given_only_for_the_message_it_was_made_from() -> None:
    kept = KeptResources()
    shape = ClusterShape("meshext.app", HostPort("127.0.0.1", 8080))
    message = kept.cluster(shape)
    resource = kept.packed(CLUSTER_TYPE_URL, message)
    equal_copy = type(message)()
    equal_copy.CopyFrom(message)
    other = kept.packed(CLUSTER_TYPE_URL, equal_copy)
    assert other is not resource
    assert other.message is equal_copy
    assert other.packed == resource.packed
