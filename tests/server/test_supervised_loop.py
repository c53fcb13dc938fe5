"""The control loop survives its own failures and says what still runs when a change
cannot be applied. The resolver is scripted (as in test_control_loop); the snapshot
cache, the loader and the control plane are real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh.resolution import Resolution
from meshext.server.control import ControlPlane
from meshext.sources.folder import LoadResult
from meshext.xds.cache import SnapshotCache
from tests.envoy.support import example_module
from tests.server.mesh import sme
from tests.server.test_control_loop import (
    ListSource,
    ScriptedResolver,
    config,
    extension_configs,
    node,
    running,
)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def broken_result() -> LoadResult:
    """A load result no configuration could produce: applying it fails inside the loop."""
    return LoadResult(resources=["not a loaded resource"])  # type: ignore[list-item]


async def test_a_configuration_that_fails_to_apply_is_a_fault_until_the_next_one_applies(
    tmp_path: Path,
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    answers = resolver.queue("header-append.wasm")
    for _ in range(2):
        answers.put_nowait(Resolution.ready(example_module("header-append")))
    resolver.queue("request-counter.wasm").put_nowait(
        Resolution.ready(example_module("request-counter"))
    )
    # One configuration both modules accept: only the image moves.
    both = {"name": "hits", "value": "moved"}
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append", config=both)))
    async with running(resolver, source, cache) as control:
        await control.on_connect(node())
        served = extension_configs(cache)
        assert control.ready
        source.queue.put_nowait(broken_result())
        await until(lambda: bool(control.faults.current()), "the fault recorded")
        assert not control.ready
        assert "applying the configuration" in str(control.faults.current()[0])
        assert extension_configs(cache) == served  # the previous configuration still serves
        source.queue.put_nowait(
            config(
                tmp_path,
                sme("bookinfo", "counter", "request-counter", priority=1, config={"name": "hits"}),
            )
        )
        await until(lambda: control.ready, "the loop ready again")
        await until(
            lambda: "meshext.servicemeshextension.bookinfo.counter" in extension_configs(cache),
            "the next change applied",
        )


class FailingOnceSource:
    """A source whose first stream breaks after one configuration (as a watch would)."""

    def __init__(self, first: LoadResult, second: LoadResult) -> None:
        self.results = [first, second]
        self.streams = 0

    async def updates(self) -> AsyncIterator[LoadResult]:
        self.streams += 1
        if self.streams == 1:
            yield self.results[0]
            raise RuntimeError("the watch broke")
        yield self.results[1]
        await asyncio.Event().wait()


async def test_a_source_that_breaks_is_reported_and_restarted(tmp_path: Path) -> None:
    resolver, cache = ScriptedResolver(), SnapshotCache()
    resolver.queue("header-append.wasm").put_nowait(
        Resolution.ready(example_module("header-append"))
    )
    resolver.queue("request-counter.wasm").put_nowait(
        Resolution.ready(example_module("request-counter"))
    )
    first = config(tmp_path, sme("bookinfo", "tag", "header-append"))
    second = config(tmp_path, sme("bookinfo", "tag", "request-counter"))
    source = FailingOnceSource(first, second)
    control = ControlPlane(resolver, cache, ModuleDelivery(), debounce=0.01)
    task = asyncio.create_task(control._follow(source, restart_delay=0.05))
    try:
        await until(lambda: source.streams >= 2, "the source restarted")
        await until(lambda: control.ready, "the loop ready after the restart")
        assert [str(r.key) for r in control.reports()] == ["ServiceMeshExtension bookinfo/tag"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_changed_image_that_cannot_be_resolved_shows_what_still_runs_and_why(
    tmp_path: Path,
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    old = example_module("header-append")
    resolver.queue("header-append.wasm").put_nowait(Resolution.ready(old))
    moved = resolver.queue("request-counter.wasm")
    moved.put_nowait(Resolution.failed("127.0.0.1:9: connection refused", retryable=True))
    # One configuration both modules accept: only the image moves.
    both = {"name": "hits", "value": "moved"}
    source.queue.put_nowait(config(tmp_path, sme("bookinfo", "tag", "header-append", config=both)))
    async with running(resolver, source, cache) as control:
        await control.on_connect(node())
        served = extension_configs(cache)
        counter = sme("bookinfo", "tag", "request-counter", config=both)
        source.queue.put_nowait(config(tmp_path, counter))

        def message() -> str:
            return control.reports()[0].status.deployment.message or ""

        await until(lambda: "could not be resolved" in message(), "the failure reported")
        deployment = control.reports()[0].status.deployment
        assert deployment.ready is True
        assert deployment.sha256 == old.sha256
        assert "request-counter.wasm could not be resolved" in message()
        assert "connection refused" in message()
        assert f"still running the module resolved before (module sha256:{old.sha256})" in (
            message()
        )
        assert extension_configs(cache) == served
        moved.put_nowait(Resolution.ready(example_module("request-counter")))
        await until(lambda: control.reports()[0].status.deployment.message is None, "resolved")
        assert control.reports()[0].status.deployment.sha256 != old.sha256
