"""Replicas share one generated configuration, also when they connect later, and every
kind of change gives later proxies the new one; the control loop runs a round as soon
as a change comes, and ACKs cost no round and no status pass. The resolver is
scripted (as in test_control_loop); the snapshot cache, the pre-flight sandbox and
everything else are real."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshext.api.extension import ExtensionStatus
from meshext.api.meta import ResourceKey
from meshext.envoy.node import HostPort, Outbound, node_metadata
from meshext.envoy.resources import CLUSTER_TYPE_URL, EXTENSION_CONFIG_TYPE_URL, LISTENER_TYPE_URL
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh.resolution import Resolution
from meshext.mesh.workload import ProxyKind
from meshext.server import control as control_module
from meshext.server.control import ControlPlane, ResolveSchedule
from meshext.server.delivery import DeliveryState
from meshext.server.status_book import DeliveryCounts
from meshext.sources.folder import LoadResult, load_folder
from meshext.xds.cache import SnapshotCache
from meshext.xds.snapshot import Snapshot, make_resource
from meshext.xds.types import Node
from tests.envoy.support import example_module
from tests.server.mesh import CONTROL_PLANE, sme
from tests.server.test_control_loop import ListSource, ScriptedResolver

TAG = "meshext.servicemeshextension.bookinfo.tag"
COUNTER = "meshext.servicemeshextension.bookinfo.counter"


def load(tmp_path: Path, *documents: str, members: str = "bookinfo") -> LoadResult:
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / "mesh.yaml").write_text(CONTROL_PLANE.format(enabled="true", members=members))
    (folder / "ext.yaml").write_text("\n---\n".join(documents))
    return load_folder(folder)


def tagged(value: str) -> str:
    """The ``tag`` extension setting header ``x-tag`` to ``value``."""
    return sme("bookinfo", "tag", "header-append", config={"name": "x-tag", "value": value})


def httpbin(
    node_id: str,
    *,
    port: int = 18000,
    labels: dict[str, str] | None = None,
    outbound: tuple[Outbound, ...] = (),
) -> Node:
    metadata = node_metadata(
        namespace="bookinfo",
        labels=labels or {"app": "httpbin"},
        workload_name="httpbin",
        kind=ProxyKind.SIDECAR,
        inbound_port=port,
        app=HostPort("127.0.0.1", 8080),
        outbound=outbound,
    )
    return Node(id=node_id, metadata=metadata)


class CountingControlPlane(ControlPlane):
    """The real control plane, counting full recomputations and status computations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recomputes = 0
        self.status_passes = 0

    def recompute(self) -> None:
        self.recomputes += 1
        super().recompute()

    def _statuses(self) -> dict[ResourceKey, ExtensionStatus]:
        self.status_passes += 1
        return super()._statuses()


class RecordingSink:
    def __init__(self) -> None:
        self.written: list[ResourceKey] = []

    async def publish(self, key: ResourceKey, status: ExtensionStatus) -> None:
        self.written.append(key)


@contextlib.asynccontextmanager
async def running(
    first: LoadResult, *modules: str, sinks: tuple[RecordingSink, ...] = ()
) -> AsyncIterator[tuple[CountingControlPlane, SnapshotCache, ScriptedResolver]]:
    """A control plane on ``first`` whose images of ``modules`` resolve at once."""
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    for module in modules:
        answers = resolver.queue(f"{module}.wasm")
        for _ in range(10):
            answers.put_nowait(Resolution.ready(example_module(module)))
    source.queue.put_nowait(first)
    control = CountingControlPlane(
        resolver,
        cache,
        ModuleDelivery(),
        retry=ResolveSchedule(first_retry=0.05),
        sinks=sinks,
        status_interval=0.0,
    )
    task = asyncio.create_task(control.run(source))
    try:
        yield control, cache, resolver
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def quiet(control: CountingControlPlane) -> None:
    """Until the control loop has nothing left to do (no round for 0.2 s)."""
    while True:
        before = control.recomputes
        await asyncio.sleep(0.2)
        if control.recomputes == before and not control._wake.is_set():
            return


def snapshot(cache: SnapshotCache, node_id: str) -> Snapshot:
    found = cache.get(node_id)
    assert found is not None, f"no snapshot for {node_id}"
    return found


def configs(cache: SnapshotCache, node_id: str) -> dict[str, Any]:
    return dict(snapshot(cache, node_id).resources(EXTENSION_CONFIG_TYPE_URL).resources)


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = [0]
    original = getattr(control_module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(control_module, name, counted)
    return calls


async def test_a_connecting_replica_gets_its_workloads_snapshot_without_planning_or_generating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        await quiet(control)
        plans = count_calls(monkeypatch, "plan_workload")
        generations = count_calls(monkeypatch, "proxy_resources")
        for index in range(20):
            await control.on_connect(httpbin(f"replica-{index}"))
        assert plans == [0]
        assert generations == [0]
        assert all(snapshot(cache, f"replica-{i}") is snapshot(cache, "a") for i in range(20))
        assert list(configs(cache, "replica-0")) == [TAG]


async def test_replicas_with_other_listeners_get_configurations_of_their_own(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    upstream = (Outbound(19000, HostPort("127.0.0.1", 9000)),)
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        await control.on_connect(httpbin("other-port", port=18001))
        await control.on_connect(httpbin("with-outbound", outbound=upstream))
        await control.on_connect(httpbin("same", port=18000))
        a = snapshot(cache, "a")
        assert snapshot(cache, "same") is a
        assert snapshot(cache, "other-port") != a
        assert snapshot(cache, "with-outbound") != a
        assert snapshot(cache, "with-outbound") != snapshot(cache, "other-port")


async def test_a_proxy_connecting_right_after_an_extension_is_removed_does_not_get_it(
    tmp_path: Path,
) -> None:
    both = load(
        tmp_path,
        sme("bookinfo", "tag", "header-append"),
        sme("bookinfo", "counter", "request-counter", priority=1, config={"name": "hits"}),
    )
    async with running(both, "header-append", "request-counter") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        assert sorted(configs(cache, "a")) == [COUNTER, TAG]
        control.apply(load(tmp_path, sme("bookinfo", "tag", "header-append")))
        # before the control loop's round: the kept round must not serve the new proxy
        await control.on_connect(httpbin("b"))
        assert list(configs(cache, "b")) == [TAG]
        await until(lambda: list(configs(cache, "a")) == [TAG], "the old proxy updated")
        assert snapshot(cache, "a") is snapshot(cache, "b")


async def test_a_proxy_connecting_after_a_selector_change_gets_the_new_selection(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append", selector={"app": "httpbin"}))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        assert list(configs(cache, "a")) == [TAG]
        moved = sme("bookinfo", "tag", "header-append", selector={"app": "reviews"})
        control.apply(load(tmp_path, moved))
        await control.on_connect(httpbin("b"))
        assert configs(cache, "b") == {}


async def test_a_proxy_connecting_after_its_namespace_left_the_mesh_gets_no_extension(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        assert list(configs(cache, "a")) == [TAG]
        control.apply(load(tmp_path, sme("bookinfo", "tag", "header-append"), members="other"))
        await control.on_connect(httpbin("b"))
        assert configs(cache, "b") == {}


async def test_a_proxy_connecting_after_an_image_resolves_gets_the_extension(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append") as (control, cache, resolver):
        pending = resolver.queue("request-counter.wasm")
        await control.on_connect(httpbin("a"))
        counter = sme("bookinfo", "counter", "request-counter", priority=1, config={"name": "hits"})
        control.apply(load(tmp_path, sme("bookinfo", "tag", "header-append"), counter))
        await control.on_connect(httpbin("b"))
        assert list(configs(cache, "b")) == [TAG]  # not resolved yet: left out
        pending.put_nowait(Resolution.ready(example_module("request-counter")))
        await until(lambda: COUNTER in configs(cache, "a"), "the resolved image served")
        await control.on_connect(httpbin("c"))
        assert sorted(configs(cache, "c")) == [COUNTER, TAG]
        assert snapshot(cache, "c") is snapshot(cache, "a")


async def test_a_proxy_connecting_after_a_configuration_passed_its_preflight_gets_it(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, tagged("1"))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        before = configs(cache, "a")[TAG]
        control.apply(load(tmp_path, tagged("2")))
        await control.on_connect(httpbin("b"))
        # the new configuration waits for its pre-flight: the new proxy runs the old one
        assert configs(cache, "b")[TAG] == before
        await until(lambda: configs(cache, "a")[TAG] != before, "the change after its pre-flight")
        await control.on_connect(httpbin("c"))
        assert configs(cache, "c")[TAG] == configs(cache, "a")[TAG] != before


async def test_a_change_waiting_for_its_preflight_costs_one_recomputation_not_two(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, tagged("1"))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        await quiet(control)
        before, recomputes = configs(cache, "a")[TAG], control.recomputes
        control.apply(load(tmp_path, tagged("2")))
        await until(lambda: configs(cache, "a")[TAG] != before, "the change")
        await quiet(control)
        assert control.recomputes == recomputes + 1


async def test_changes_applied_together_are_computed_in_one_round(tmp_path: Path) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append") as (control, _cache, _):
        await control.on_connect(httpbin("a"))
        await quiet(control)
        recomputes = control.recomputes
        for priority in (1, 2, 3):
            control.apply(
                load(tmp_path, sme("bookinfo", "tag", "header-append", priority=priority))
            )
        await quiet(control)
        assert control.recomputes == recomputes + 1


async def test_acks_cost_no_round_and_no_status_pass_yet_status_counts_them(
    tmp_path: Path,
) -> None:
    sink = RecordingSink()
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append", sinks=(sink,)) as (control, cache, _):
        for index in range(50):
            await control.on_connect(httpbin(f"p{index}"))
        await until(lambda: bool(sink.written), "the status written")
        await quiet(control)
        recomputes, passes = control.recomputes, control.status_passes
        version = snapshot(cache, "p0").resource_version(EXTENSION_CONFIG_TYPE_URL, TAG) or ""
        for index in range(50):
            control.on_ack(f"p{index}", EXTENSION_CONFIG_TYPE_URL, version, [TAG])
        await quiet(control)
        assert (control.recomputes, control.status_passes) == (recomputes, passes)
        key = ResourceKey("ServiceMeshExtension", "bookinfo", "tag")
        assert control.delivery_counts(key) == DeliveryCounts(running=50)
        (report,) = control.reports()
        assert report.counts == DeliveryCounts(running=50)
        assert {p.state for p in report.proxies} == {DeliveryState.RUNNING}


async def test_a_rejected_version_is_not_offered_again_when_an_unrelated_change_comes(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append", "request-counter") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        await control.on_connect(httpbin("b"))
        version = snapshot(cache, "a").resource_version(EXTENSION_CONFIG_TYPE_URL, TAG) or ""
        control.on_nack("a", EXTENSION_CONFIG_TYPE_URL, version, [TAG], "Unable to create Wasm")
        await until(lambda: TAG not in configs(cache, "a"), "the rejected extension left out")
        assert TAG in configs(cache, "b")
        await control.on_connect(httpbin("c"))  # a new replica still gets the shared one
        assert snapshot(cache, "c") is snapshot(cache, "b")
        counter = sme("bookinfo", "counter", "request-counter", priority=1, config={"name": "hits"})
        control.apply(load(tmp_path, sme("bookinfo", "tag", "header-append"), counter))
        await until(lambda: COUNTER in configs(cache, "a"), "the unrelated change")
        assert TAG not in configs(cache, "a")
        assert sorted(configs(cache, "b")) == [COUNTER, TAG]
        states = {p.proxy: p.state for p in control.reports()[1].proxies}
        assert states["a"] is DeliveryState.REJECTED


async def test_a_proxy_of_another_workload_is_planned_for_its_own_labels(tmp_path: Path) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append", selector={"app": "httpbin"}))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        await control.on_connect(httpbin("reviews", labels={"app": "reviews"}))
        await control.on_connect(httpbin("httpbin-v2", labels={"app": "httpbin", "v": "2"}))
        assert list(configs(cache, "a")) == [TAG]
        assert configs(cache, "reviews") == {}
        assert list(configs(cache, "httpbin-v2")) == [TAG]
        assert snapshot(cache, "httpbin-v2") is not snapshot(cache, "a")
        assert {p.proxy for p in control.reports()[0].proxies} == {"a", "httpbin-v2"}


async def test_replicas_keep_sharing_after_many_short_lived_workloads_came_and_went(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        await control.on_connect(httpbin("b"))
        # Pods of workloads with labels never seen again (a new template hash on
        # every rollout, say), each gone soon after it connected.
        for index in range(300):
            node_id = f"short-lived-{index}"
            await control.on_connect(httpbin(node_id, labels={"app": "job", "run": str(index)}))
            control.on_disconnect(node_id)
        # What planning keys on is kept only for proxies that could still use it.
        assert len(control._key_numbers) <= 2 * 2 + 64
        before = snapshot(cache, "a").resource_version(EXTENSION_CONFIG_TYPE_URL, TAG)
        changed = {"header": "x-a", "value": "1"}
        control.apply(load(tmp_path, sme("bookinfo", "tag", "header-append", config=changed)))
        await until(
            lambda: snapshot(cache, "a").resource_version(EXTENSION_CONFIG_TYPE_URL, TAG) != before,
            "the change pushed",
        )
        await quiet(control)
        assert snapshot(cache, "a") is snapshot(cache, "b")
        assert list(configs(cache, "a")) == [TAG]


def listener_and_clusters(cache: SnapshotCache, node_id: str) -> list[Any]:
    found = snapshot(cache, node_id)
    return [
        resource
        for type_url in (LISTENER_TYPE_URL, CLUSTER_TYPE_URL)
        for resource in found.resources(type_url).resources.values()
    ]


async def test_a_config_change_keeps_the_listeners_and_clusters_made_before(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, tagged("1"))
    async with running(first, "header-append") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        before, config_before = listener_and_clusters(cache, "a"), configs(cache, "a")[TAG]
        changed = tagged("2")
        control.apply(load(tmp_path, changed))
        await until(lambda: configs(cache, "a")[TAG] != config_before, "the change")
        after = listener_and_clusters(cache, "a")
        assert len(after) == len(before) == 2
        assert all(new is old for new, old in zip(after, before, strict=True))


async def test_adding_an_extension_gives_the_listener_made_for_the_new_chain(
    tmp_path: Path,
) -> None:
    first = load(tmp_path, sme("bookinfo", "tag", "header-append"))
    async with running(first, "header-append", "request-counter") as (control, cache, _):
        await control.on_connect(httpbin("a"))
        (listener_before, _cluster) = listener_and_clusters(cache, "a")
        counter = sme("bookinfo", "counter", "request-counter", priority=1, config={"name": "hits"})
        control.apply(load(tmp_path, sme("bookinfo", "tag", "header-append"), counter))
        await until(lambda: COUNTER in configs(cache, "a"), "the added extension")
        (listener, cluster) = listener_and_clusters(cache, "a")
        assert listener.packed != listener_before.packed
        record = control.proxy("a")
        assert record is not None
        assert record.proxy is not None
        assert record.plan is not None
        fresh = proxy_resources(record.proxy, record.plan, ModuleDelivery())
        (fresh_listener,) = fresh.listeners
        assert listener.packed == make_resource(LISTENER_TYPE_URL, fresh_listener).packed
        (fresh_cluster,) = fresh.clusters
        assert cluster.packed == make_resource(CLUSTER_TYPE_URL, fresh_cluster).packed
