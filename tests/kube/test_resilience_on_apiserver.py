"""The controller survives API server restarts, and replicas share the work through a Lease."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshext.kube.http import admin_app
from meshext.server.modules import start_module_server
from tests.kube.support import (
    ENVOY_FILTERS,
    WASM_PLUGINS,
    Cluster,
    Mesh,
    eventually,
    extension,
    running_controller,
    settings,
    unique,
    wasm_file,
)
from tests.kube_harness import KubeApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]


def _status(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    found = cluster.get("sme", name, namespace) or {}
    status: dict[str, Any] = found.get("status") or {}
    return status


def _rendered_for(cluster: Cluster, namespace: str) -> dict[str, list[str]]:
    """Owner -> the rendered objects (kind/name) that name it as owner."""
    owners: dict[str, list[str]] = {}
    for resource, kind in ((WASM_PLUGINS, "WasmPlugin"), (ENVOY_FILTERS, "EnvoyFilter")):
        for obj in cluster.list(resource, namespace):
            owner = obj["metadata"].get("annotations", {}).get("meshext.io/owner")
            if owner:
                owners.setdefault(owner, []).append(f"{kind}/{obj['metadata']['name']}")
    return {k: sorted(v) for k, v in sorted(owners.items())}


async def test_after_an_api_server_restart_nothing_is_lost_or_duplicated(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    ns = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "restart")
    image = f"file:{module}"
    cluster.apply(
        extension("kept", ns, image),
        extension("changed", ns, image, priority=1),
        extension("removed", ns, image),
        extension("exact", ns, image, annotations={"meshext.io/placement": "exact"}),
    )
    expected_before = {
        f"{ns}/changed": ["WasmPlugin/changed"],
        f"{ns}/exact": ["EnvoyFilter/exact"],
        f"{ns}/kept": ["WasmPlugin/kept"],
        f"{ns}/removed": ["WasmPlugin/removed"],
    }
    async with running_controller(kube_apiserver, tmp_path / "cache") as controller:
        await eventually(
            lambda: _rendered_for(cluster, ns) == expected_before or None, "everything rendered"
        )
        await eventually(
            lambda: (
                all(
                    _status(cluster, n, ns).get("deployment", {}).get("ready")
                    for n in ("kept", "changed", "removed", "exact")
                )
                or None
            ),
            "every status ready",
        )
        kept = cluster.get("sme", "kept", ns)
        assert kept is not None
        kept_version = kept["metadata"]["resourceVersion"]
        created_before = controller.stats.created

        await asyncio.to_thread(kube_apiserver.stop_apiserver)
        # Started from the main thread: the harness ties the server's life to the
        # thread that starts it. The controller's tasks wait meanwhile.
        kube_apiserver.start_apiserver()

        cluster.apply(
            extension("changed", ns, image, priority=42),
            extension("added", ns, image),
        )
        cluster.delete("sme", "removed", ns)
        expected_after = {
            f"{ns}/added": ["WasmPlugin/added"],
            f"{ns}/changed": ["WasmPlugin/changed"],
            f"{ns}/exact": ["EnvoyFilter/exact"],
            f"{ns}/kept": ["WasmPlugin/kept"],
        }
        await eventually(
            lambda: _rendered_for(cluster, ns) == expected_after or None, "catching up"
        )
        await eventually(
            lambda: (
                (
                    _status(cluster, "changed", ns).get("priority") == 42
                    and _status(cluster, "added", ns).get("deployment", {}).get("ready")
                )
                or None
            ),
            "statuses of the changes",
        )
        changed_plugin = cluster.get(WASM_PLUGINS, "changed", ns)
        assert changed_plugin is not None
        assert changed_plugin["spec"]["priority"] == 42
        assert controller.stats.created == created_before + 1
        assert controller.is_leader
    kept_after = cluster.get("sme", "kept", ns)
    assert kept_after is not None
    assert kept_after["metadata"]["resourceVersion"] == kept_version


async def test_only_the_leader_writes_and_a_standby_takes_over_when_it_stops(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshext.kube.leader")
    ns = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "leader")
    lease = unique("lease")
    first_settings = settings(lease_name=lease, identity="first")
    second_settings = settings(lease_name=lease, identity="second")

    def holder() -> str | None:
        found = cluster.get("leases.coordination.k8s.io", lease, "default")
        name = ((found or {}).get("spec") or {}).get("holderIdentity")
        return name if isinstance(name, str) and name else None

    first_run = running_controller(kube_apiserver, tmp_path / "cache-1", first_settings)
    first = await first_run.__aenter__()
    first_stopped = False
    try:
        await eventually(lambda: first.is_leader or None, "the first replica leading")
        async with running_controller(
            kube_apiserver, tmp_path / "cache-2", second_settings
        ) as second:
            cluster.apply(extension("shared", ns, f"file:{module}", priority=1))
            await eventually(
                lambda: _status(cluster, "shared", ns).get("deployment", {}).get("ready"),
                "status from the leader",
            )
            await eventually(lambda: cluster.get(WASM_PLUGINS, "shared", ns), "plugin")
            await second.queue.wait_idle()
            assert holder() == "first"
            assert not second.is_leader
            waiting = f"second: standing by; lease default/{lease} is held by first, waiting for it"
            assert waiting in [r.getMessage() for r in caplog.records]
            assert first.stats.status_writes >= 1
            assert first.stats.created == 1
            assert (second.stats.status_writes, second.stats.created) == (0, 0)
            assert second.stats.reconciles >= 1

            await first_run.__aexit__(None, None, None)
            first_stopped = True
            await eventually(lambda: holder() == "second" or None, "the lease handed over")
            await eventually(lambda: second.is_leader or None, "the second replica leading")
            cluster.apply(extension("shared", ns, f"file:{module}", priority=2))
            await eventually(
                lambda: _status(cluster, "shared", ns).get("priority") == 2 or None,
                "status from the new leader",
            )
            assert second.stats.status_writes >= 1
    finally:
        if not first_stopped:
            await first_run.__aexit__(None, None, None)
    lease_object = json.loads(cluster.kubectl("get", "lease", lease, "-n", "default", "-o", "json"))
    assert lease_object["spec"]["leaseTransitions"] >= 1


async def test_readiness_follows_the_api_server_and_every_cache_catches_up_after_an_outage(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    ns = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "outage")
    image = f"file:{module}"
    cluster.apply(extension("before", ns, image))
    async with running_controller(kube_apiserver, tmp_path / "cache") as controller:
        admin = await start_module_server(admin_app(controller))
        try:
            await eventually(lambda: cluster.get(WASM_PLUGINS, "before", ns), "first plugin")
            assert await asyncio.to_thread(_fetch, f"{admin.base_url}/readyz") == (200, "ready\n")
            connectivity = controller.client.connectivity

            await asyncio.to_thread(kube_apiserver.stop_apiserver)

            code, reason = await eventually(
                lambda: _unready(admin.base_url), "readiness reporting the lost API server"
            )
            assert code == 503
            assert "the API server has not answered" in reason
            debug = json.loads(
                (await asyncio.to_thread(_fetch, f"{admin.base_url}/debug/controller"))[1]
            )
            assert debug["ready"] is False
            assert debug["apiServer"]["reachable"] is False
            # Long enough for the informers' backoff to grow to many seconds.
            await eventually(
                lambda: connectivity.lost_for() > 20 or None, "a long outage", deadline=120
            )
            kube_apiserver.start_apiserver()
            back = time.monotonic()

            added = unique("team")
            cluster.namespace(added)
            mesh.set_members([ns, added])
            cluster.apply(extension("after", ns, image), extension("there", added, image))

            def caught_up() -> bool:
                roll = controller.member_rolls.values()
                plugins = controller.rendered["WasmPlugin"].objects
                return (
                    controller.ready
                    and any(added in (r.get("spec") or {}).get("members", []) for r in roll)
                    and {"after", "there"} <= {key.name for key in controller.extensions.objects}
                    and {"after", "there"} <= {key.name for key in plugins}
                )

            await eventually(caught_up, "every cache after the outage")
            print(f"caught up {time.monotonic() - back:.1f}s after the API server was back")
            assert await asyncio.to_thread(_fetch, f"{admin.base_url}/readyz") == (200, "ready\n")
            debug = json.loads(
                (await asyncio.to_thread(_fetch, f"{admin.base_url}/debug/controller"))[1]
            )
            assert debug["apiServer"]["outages"] >= 1
            assert all(not i["problem"] for i in debug["informers"].values())
        finally:
            await admin.stop()
            mesh.set_members([ns])


def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _unready(base_url: str) -> tuple[int, str] | None:
    code, text = _fetch(f"{base_url}/readyz")
    return (code, text) if code != 200 else None
