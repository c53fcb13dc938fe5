"""The control loop with the pre-flight gate: a combination that cannot start is
never offered, an edit that breaks an extension keeps the last good one running, and
each configuration error is logged once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from meshext.envoy.standin import stand_in_module
from meshext.mesh.resolution import Resolution
from meshext.xds.cache import SnapshotCache
from tests.envoy.support import example_module, module_from_bytes
from tests.server.mesh import sme
from tests.server.test_control_loop import (
    ListSource,
    ScriptedResolver,
    config,
    extension_configs,
    node,
    running,
)

NAME = "meshext.servicemeshextension.bookinfo.tag"


async def test_a_configuration_the_module_refuses_is_never_offered(tmp_path: Path) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    resolver.queue("request-counter.wasm").put_nowait(
        Resolution.ready(example_module("request-counter"))
    )
    bad = sme("bookinfo", "tag", "request-counter", config={"name": "no spaces allowed"})
    source.queue.put_nowait(config(tmp_path, bad))
    async with running(resolver, source, cache) as control:
        await asyncio.wait_for(control.on_connect(node()), 30)
        assert extension_configs(cache) == {}
        (report,) = control.reports()
        assert not report.status.deployment.ready
        message = report.status.deployment.message or ""
        assert message.startswith("ServiceMeshExtension bookinfo/tag failed its pre-flight")
        assert "request-counter: invalid counter name" in message


async def test_an_edit_the_module_refuses_keeps_the_last_good_combination(
    tmp_path: Path,
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    answers = resolver.queue("request-counter.wasm")
    answers.put_nowait(Resolution.ready(example_module("request-counter")))
    good = sme("bookinfo", "tag", "request-counter", config={"name": "hits"})
    source.queue.put_nowait(config(tmp_path, good))
    async with running(resolver, source, cache) as control:
        await asyncio.wait_for(control.on_connect(node()), 30)
        first = extension_configs(cache)
        assert list(first) == [NAME]
        bad = sme("bookinfo", "tag", "request-counter", config={"name": "no spaces"})
        source.queue.put_nowait(config(tmp_path, bad))
        for _ in range(200):
            status = control.reports()[0].status.deployment
            if "failed its pre-flight" in (status.message or ""):
                break
            await asyncio.sleep(0.05)
        assert "failed its pre-flight" in (status.message or "")
        assert extension_configs(cache) == first  # still the good one


async def test_a_configuration_error_is_logged_once_however_often_it_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    broken = sme("bookinfo", "tag", "header-append", phase="Sometime")
    async with running(resolver, source, cache) as control:
        with caplog.at_level(logging.WARNING, logger="meshext.server.control"):
            control.apply(config(tmp_path, broken))
            control.apply(config(tmp_path, broken))
    logged = [r for r in caplog.records if "Sometime" in r.getMessage()]
    assert len(logged) == 1


async def test_a_configuration_the_module_never_reads_is_delivered_with_a_warning(
    tmp_path: Path,
) -> None:
    # The stand-in ignores its configuration, as a C++ SDK module does under a root id
    # it did not register.
    path = tmp_path / "ignores-config.wasm"
    path.write_bytes(stand_in_module())
    resolver, source, cache = ScriptedResolver(), ListSource(), SnapshotCache()
    resolver.queue("header-append.wasm").put_nowait(Resolution.ready(module_from_bytes(path)))
    source.queue.put_nowait(
        config(tmp_path, sme("bookinfo", "tag", "header-append", config={"value": "x"}))
    )
    async with running(resolver, source, cache) as control:
        await asyncio.wait_for(control.on_connect(node()), 30)
        assert list(extension_configs(cache)) == [NAME]
        (report,) = control.reports()
        assert report.status.deployment.ready
        message = report.status.deployment.message or ""
        assert "never read its configuration" in message
        assert "root id ''" in message
