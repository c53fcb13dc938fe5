"""Offers of a module a proxy has not fetched are repeated with backoff, each a new
attempt, and stop once the proxy runs the module."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2

from meshext.envoy.node import DeliveryMode, HostPort
from meshext.envoy.resources import EXTENSION_CONFIG_TYPE_URL
from meshext.envoy.standin import stand_in_module
from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh.resolution import Resolution
from meshext.server.delivery import DeliveryState, ProxyDelivery
from meshext.server.fetch_retries import FetchBackoff, FetchRetries
from meshext.xds.cache import SnapshotCache
from meshext.xds.snapshot import Resource
from tests.envoy.support import example_module
from tests.server.mesh import sme
from tests.server.test_control_loop import (
    NODE,
    ListSource,
    ScriptedResolver,
    config,
    node,
    running,
)

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
    explained = retries.explain(rejected, NAME, closed=False)
    assert explained.state is DeliveryState.REJECTED
    assert explained.running_version is None
    assert explained.message.startswith("Unable to create Wasm plugin tag; the proxy has not")
    assert "still running" not in explained.message
    running = ProxyDelivery("p1", DeliveryState.RUNNING, "v2", "v2")
    assert retries.explain(running, NAME, closed=False) is running
    retries.close()


def _wasm(resource: Resource) -> Any:
    wasm = wasm_filter_pb2.Wasm()
    assert resource.message.typed_config.Unpack(wasm)
    return wasm


async def test_the_control_loop_stands_in_then_offers_the_module_again_until_accepted(
    tmp_path: Path,
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    resolver.queue("header-append.wasm").put_nowait(
        Resolution.ready(example_module("header-append"))
    )
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append")))
    delivery = ModuleDelivery(mode=DeliveryMode.REMOTE, server=HostPort("127.0.0.1", 9))
    async with running(resolver, source, cache, delivery=delivery) as control:
        await asyncio.wait_for(control.on_connect(node()), 30)

        def offered() -> Resource:
            snapshot = cache.get(NODE)
            assert snapshot is not None
            return snapshot.resources(EXTENSION_CONFIG_TYPE_URL).resources[NAME]

        async def until(done: Callable[[Resource], bool]) -> Resource:
            for _ in range(400):
                if done(resource := offered()):
                    return resource
                await asyncio.sleep(0.01)
            raise AssertionError(f"gave up; offered {_wasm(offered())}")

        first = offered()
        vm = _wasm(first).config.vm_config
        assert vm.nack_on_code_cache_miss
        assert "?attempt" not in vm.code.remote.http_uri.uri

        control.on_nack(NODE, EXTENSION_CONFIG_TYPE_URL, first.version, [NAME], "Unable to …")
        stand_in = await until(lambda r: r.version != first.version)
        # A ServiceMeshExtension fails closed: so does its stand-in.
        code = _wasm(stand_in).config.vm_config.code
        assert code.local.inline_bytes == stand_in_module(closed=True)
        control.on_ack(NODE, EXTENSION_CONFIG_TYPE_URL, stand_in.version, [NAME])
        await asyncio.sleep(0.05)
        (delivered,) = control.reports()[0].proxies
        assert delivered.state is DeliveryState.REJECTED
        assert "has not fetched the module" in delivered.message
        assert "answers 503 (fail-closed)" in delivered.message

        again = await until(lambda r: r.version not in (first.version, stand_in.version))
        assert _wasm(again).config.vm_config.code.remote.http_uri.uri.endswith("?attempt=1")
        control.on_ack(NODE, EXTENSION_CONFIG_TYPE_URL, again.version, [NAME])
        await asyncio.sleep(0.05)
        (delivered,) = control.reports()[0].proxies
        assert delivered.state is DeliveryState.RUNNING
        assert offered().version == again.version  # accepted: nothing more is sent


async def test_a_module_sent_by_the_module_server_is_offered_again_without_the_backoff() -> None:
    due: list[str] = []
    retries = FetchRetries(due.append, FetchBackoff(first=10.0, after_fetch=0.01))
    retries.rejected("p1", NAME, "aa" * 32)
    retries.rejected("p2", NAME, "bb" * 32)
    retries.fetched("aa" * 32)
    await asyncio.sleep(0.05)
    assert due == ["p1"]  # p2 waits for another module: its backoff stands
    assert retries.attempts("p1") == {NAME: 1}
    assert retries.waiting("p2", NAME)
    retries.close()
