"""The control loop's rules about time: when it first answers, and what it serves while
an image is being resolved. The resolver here is scripted (it stands in for a registry,
which these rules do not depend on); the snapshot cache and everything else are real."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from meshext.api.meta import ResourceKey
from meshext.envoy.node import HostPort, node_metadata
from meshext.envoy.resources import EXTENSION_CONFIG_TYPE_URL
from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh.extension import Extension
from meshext.mesh.resolution import Resolution
from meshext.mesh.workload import ProxyKind
from meshext.server.control import ControlPlane, ResolveSchedule
from meshext.sources.folder import LoadResult, load_folder
from meshext.xds.cache import SnapshotCache
from meshext.xds.types import Node
from tests.envoy.support import example_module
from tests.server.mesh import CONTROL_PLANE, sme

NODE = "sidecar~httpbin.bookinfo~18000"


class ScriptedResolver:
    """Answers each image with what the test scripted, when the test releases it."""

    def __init__(self) -> None:
        self.answers: dict[str, asyncio.Queue[Resolution]] = {}
        self.asked: list[str] = []

    def queue(self, image_suffix: str) -> asyncio.Queue[Resolution]:
        return self.answers.setdefault(image_suffix, asyncio.Queue())

    async def resolve(self, extension: Extension) -> Resolution:
        self.asked.append(extension.image)
        suffix = next(s for s in self.answers if extension.image.endswith(s))
        return await self.answers[suffix].get()

    def forget(self, key: ResourceKey) -> None:
        pass


class ListSource:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[LoadResult] = asyncio.Queue()

    async def updates(self) -> AsyncIterator[LoadResult]:
        while True:
            yield await self.queue.get()


def config(tmp_path: Path, *documents: str) -> LoadResult:
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / "mesh.yaml").write_text(CONTROL_PLANE.format(enabled="true", members="bookinfo"))
    (folder / "ext.yaml").write_text("\n---\n".join(documents))
    return load_folder(folder)


def node() -> Node:
    metadata = node_metadata(
        namespace="bookinfo",
        labels={"app": "httpbin"},
        workload_name="httpbin",
        kind=ProxyKind.SIDECAR,
        inbound_port=18000,
        app=HostPort("127.0.0.1", 8080),
    )
    return Node(id=NODE, metadata=metadata)


@contextlib.asynccontextmanager
async def running(
    resolver: ScriptedResolver,
    source: ListSource,
    cache: SnapshotCache,
    *,
    settle_timeout: float = 30.0,
    delivery: ModuleDelivery | None = None,
) -> AsyncIterator[ControlPlane]:
    control = ControlPlane(
        resolver,
        cache,
        ModuleDelivery() if delivery is None else delivery,
        debounce=0.01,
        retry=ResolveSchedule(first_retry=0.05),
        settle_timeout=settle_timeout,
    )
    task = asyncio.create_task(control.run(source))
    try:
        yield control
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def extension_configs(cache: SnapshotCache) -> dict[str, object]:
    snapshot = cache.get(NODE)
    assert snapshot is not None
    return dict(snapshot.resources(EXTENSION_CONFIG_TYPE_URL).resources)


async def test_no_proxy_is_answered_before_the_first_images_resolve(tmp_path: Path) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    pending = resolver.queue("header-append.wasm")
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append")))
    async with running(resolver, source, cache) as control:
        connecting = asyncio.create_task(control.on_connect(node()))
        await asyncio.sleep(0.3)
        assert not connecting.done()
        assert cache.get(NODE) is None
        pending.put_nowait(Resolution.ready(example_module("header-append")))
        await asyncio.wait_for(connecting, 10)
        assert list(extension_configs(cache)) == ["meshext.servicemeshextension.bookinfo.tag"]


async def test_proxies_are_answered_after_the_settle_timeout_even_if_images_hang(
    tmp_path: Path,
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    resolver.queue("header-append.wasm")  # never answered
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append")))
    async with running(resolver, source, cache, settle_timeout=0.2) as control:
        await asyncio.wait_for(control.on_connect(node()), 10)
        assert extension_configs(cache) == {}


async def test_an_image_change_keeps_serving_the_old_module_until_the_new_one_resolves(
    tmp_path: Path,
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    old, new = resolver.queue("header-append.wasm"), resolver.queue("request-counter.wasm")
    old.put_nowait(Resolution.ready(example_module("header-append")))
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append")))
    async with running(resolver, source, cache) as control:
        await control.on_connect(node())
        first = extension_configs(cache)
        assert len(first) == 1
        counter = sme("bookinfo", "tag", "request-counter", config={"name": "hits"})
        source.queue.put_nowait(config(tmp_path, counter))
        await asyncio.sleep(0.3)
        assert extension_configs(cache) == first  # the old module, not a gap
        new.put_nowait(Resolution.ready(example_module("request-counter")))
        for _ in range(100):
            if extension_configs(cache) != first:
                break
            await asyncio.sleep(0.05)
        assert extension_configs(cache) != first
        assert list(extension_configs(cache)) == list(first)


class JudgingScriptedResolver(ScriptedResolver):
    """Also says what it judges images by (as the resolver of a cluster: its keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = "key A"

    def judged_by(self, extension: Extension) -> tuple[object, ...]:
        return (self.policy,)


async def test_an_image_is_resolved_again_when_what_judges_it_changes_serving_the_old_module_meanwhile(
    tmp_path: Path,
) -> None:
    resolver, source, cache = JudgingScriptedResolver(), ListSource(), SnapshotCache()
    answers = resolver.queue("header-append.wasm")
    answers.put_nowait(Resolution.ready(example_module("header-append")))
    loaded = config(tmp_path, sme("bookinfo", "tag", "header-append"))
    source.queue.put_nowait(loaded)
    async with running(resolver, source, cache) as control:
        await control.on_connect(node())
        first = extension_configs(cache)
        assert len(first) == 1
        source.queue.put_nowait(loaded)  # the same configuration, judged the same
        await asyncio.sleep(0.2)
        assert len(resolver.asked) == 1
        resolver.policy = "key B"
        source.queue.put_nowait(loaded)
        for _ in range(100):
            if len(resolver.asked) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(resolver.asked) == 2
        assert extension_configs(cache) == first  # served while checked again
        answers.put_nowait(Resolution.failed("refused by the signature policy"))
        for _ in range(100):
            if not extension_configs(cache):
                break
            await asyncio.sleep(0.05)
        assert extension_configs(cache) == {}
        report = next(r for r in control.reports() if r.key.name == "tag")
        assert report.status.deployment.message == "refused by the signature policy"


async def test_a_transient_failure_is_retried_until_the_image_resolves(tmp_path: Path) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    answers = resolver.queue("header-append.wasm")
    answers.put_nowait(Resolution.failed("registry answered 503", retryable=True))
    answers.put_nowait(Resolution.ready(example_module("header-append")))
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append")))
    async with running(resolver, source, cache) as control:
        await control.on_connect(node())
        for _ in range(100):
            if extension_configs(cache):
                break
            await asyncio.sleep(0.05)
        assert len(extension_configs(cache)) == 1
        assert len(resolver.asked) == 2
        report = next(r for r in control.reports() if r.key.name == "tag")
        assert report.status.deployment.ready


async def test_always_images_are_checked_again_periodically(tmp_path: Path) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    answers = resolver.queue("header-append.wasm")
    for _ in range(3):
        answers.put_nowait(Resolution.ready(example_module("header-append")))
    document = sme("bookinfo", "tag", "header-append").replace(
        '"phase"', '"imagePullPolicy": "Always", "phase"'
    )
    source.queue.put_nowait(config(tmp_path, document))
    control = ControlPlane(
        resolver, cache, ModuleDelivery(), debounce=0.01, retry=ResolveSchedule(refresh_always=0.1)
    )
    task = asyncio.create_task(control.run(source))
    try:
        for _ in range(100):
            if len(resolver.asked) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(resolver.asked) >= 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def replica(node_id: str) -> Node:
    return Node(id=node_id, metadata=node().metadata)


async def test_replicas_get_the_same_snapshot_until_one_of_them_rejects_an_extension(
    tmp_path: Path,
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    resolver.queue("header-append.wasm").put_nowait(
        Resolution.ready(example_module("header-append"))
    )
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append")))
    async with running(resolver, source, cache) as control:
        await control.on_connect(replica("a"))
        await control.on_connect(replica("b"))
        control.recompute()
        assert cache.get("a") == cache.get("b")

        name = "meshext.servicemeshextension.bookinfo.tag"
        snapshot = cache.get("a")
        assert snapshot is not None
        version = snapshot.resource_version(EXTENSION_CONFIG_TYPE_URL, name) or ""
        control.on_nack(
            "a", EXTENSION_CONFIG_TYPE_URL, version, [name], "Unable to create Wasm plugin"
        )
        control.recompute()
        rejected, healthy = cache.get("a"), cache.get("b")
        assert rejected is not None
        assert healthy is not None
        assert rejected != healthy
        assert name not in rejected.resources(EXTENSION_CONFIG_TYPE_URL)
        assert name in healthy.resources(EXTENSION_CONFIG_TYPE_URL)
