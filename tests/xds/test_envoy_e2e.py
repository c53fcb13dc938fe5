"""The ADS server serving a real Envoy, in state-of-the-world and in delta mode.

Envoy gets a listener whose HTTP filters come over ECDS (header_mutation filters
adding ``x-a``/``x-b`` response headers) and whose route answers directly, so every
effect is visible with one HTTP request and in Envoy's admin stats.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from meshext.envoy.tls import upstream_tls_socket
from meshext.identity import ca as mesh_ca
from meshext.identity.issuance import proxy_credentials
from meshext.identity.peer import MeshStreamSecurity, ServerCertificate
from meshext.xds import types
from meshext.xds.cache import SnapshotCache
from meshext.xds.server import AdsServer, ConnectionInfo
from meshext.xds.snapshot import Snapshot
from tests.network import free_port
from tests.xds import resources
from tests.xds.envoy_proxy import EnvoyProxy
from tests.xds.recorder import Recorder

pytestmark = pytest.mark.e2e

LDS, CDS, ECDS = types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG
NODE = "sidecar-1"
Mode = Literal["sotw", "delta"]


@dataclass
class Mesh:
    """One ADS server and one Envoy whose listener serves on ``port``."""

    server: AdsServer
    recorder: Recorder
    envoy: EnvoyProxy
    port: int
    xds_port: int
    security: MeshStreamSecurity

    @property
    def cache(self) -> SnapshotCache:
        return self.recorder.cache

    def connection(self) -> ConnectionInfo | None:
        found = [info for info in self.server.connections() if info.node_id == NODE]
        return found[-1] if found else None

    async def converged(self, current: Snapshot) -> None:
        """Wait until the latest stream knows Envoy holds every resource of ``current``."""

        def holds_everything() -> bool:
            info = self.connection()
            if info is None:
                return False
            for type_url in (CDS, LDS, ECDS):
                status = info.types.get(type_url)
                if status is None or status.pending_nonce is not None:
                    return False
                if dict(status.resources) != dict(current.resources(type_url).versions):
                    return False
            return True

        await self.envoy.wait_for(holds_everything, "Envoy to hold the whole snapshot")

    async def headers(self, expected: dict[str, str]) -> None:
        """Wait until a request through the listener returns the ``expected`` headers."""

        def shows(response: object) -> bool:
            headers = getattr(response, "headers", {})
            return getattr(response, "status_code", 0) == 200 and all(
                headers.get(name) == value for name, value in expected.items()
            )

        await self.envoy.get_when(self.port, shows, f"response headers {expected}")


@pytest.fixture(params=["sotw", "delta"])
async def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mesh]:
    mode: Mode = request.param
    cache = SnapshotCache()
    recorder = Recorder(cache)
    port = free_port()
    recorder.snapshots[NODE] = resources.snapshot(port, {"a": "1", "b": "1"})
    ca = mesh_ca.create("cluster.local")
    security = MeshStreamSecurity(ServerCertificate(ca, hosts=()))
    server = AdsServer(cache, recorder, security=security)
    xds_port = await server.start()
    _, tls = proxy_credentials(ca, "shop", directory=tmp_path / "credentials")
    envoy = EnvoyProxy(
        tmp_path,
        node_id=NODE,
        xds_port=xds_port,
        mode=mode,
        metadata={"NAMESPACE": "shop"},
        transport_socket=upstream_tls_socket(
            server_identity=tls.server_identity, sni="", files=tls.credentials
        ),
    )
    try:
        async with envoy:
            yield Mesh(server, recorder, envoy, port, xds_port, security)
    finally:
        await server.stop(0)


async def test_envoy_serves_the_snapshot_and_acks_each_resource(mesh: Mesh) -> None:
    current = resources.snapshot(mesh.port, {"a": "1", "b": "1"})
    await mesh.headers({"x-a": "1", "x-b": "1"})
    await mesh.converged(current)
    recorder = mesh.recorder
    assert recorder.acked(CDS, "backend", current.version(CDS))
    assert recorder.acked(LDS, "web", current.version(LDS))
    for name in ("ext-a", "ext-b"):
        assert recorder.acked(ECDS, name, current.resource_version(ECDS, name) or "")
    assert all(len(ack.resource_names) == 1 for ack in recorder.acks if ack.type_url == ECDS)
    assert recorder.nacks == []
    [node] = recorder.connected
    assert (node.id, dict(node.metadata)) == (NODE, {"NAMESPACE": "shop"})
    info = mesh.connection()
    assert info is not None
    assert info.protocol == mesh.envoy.mode
    assert info.user_agent.startswith("envoy ")
    assert info.identity == "spiffe://cluster.local/ns/shop/sa/default"


async def test_an_extension_config_update_applies_in_place_and_leaves_the_others_alone(
    mesh: Mesh,
) -> None:
    await mesh.converged(resources.snapshot(mesh.port, {"a": "1", "b": "1"}))
    before = await mesh.envoy.stats()
    acks_before = len(mesh.recorder.acks)
    updated = resources.snapshot(mesh.port, {"a": "2", "b": "1"})
    assert mesh.cache.set_snapshot(NODE, updated)
    await mesh.headers({"x-a": "2", "x-b": "1"})
    await mesh.converged(updated)
    after = await mesh.envoy.stats()

    def delta(name: str) -> int:
        return int(after.get(name, "0")) - int(before.get(name, "0"))

    assert delta("listener_manager.listener_modified") == 0
    assert delta("listener_manager.listener_in_place_updated") == 0
    assert delta("listener_manager.lds.update_success") == 0
    assert delta("extension_config_discovery.http_filter.ext-a.config_reload") == 1
    assert delta("extension_config_discovery.http_filter.ext-b.config_reload") == 0
    assert delta("extension_config_discovery.http_filter.ext-b.update_success") == 0
    new_acks = mesh.recorder.acks[acks_before:]
    assert [(ack.type_url, ack.resource_names) for ack in new_acks] == [(ECDS, ("ext-a",))]
    assert new_acks[0].version == updated.resource_version(ECDS, "ext-a")
    assert await mesh.envoy.ecds_filter_names() == ["ext-a", "ext-b"]


async def test_a_rejected_extension_config_is_reported_while_the_previous_one_keeps_serving(
    mesh: Mesh,
) -> None:
    await mesh.converged(resources.snapshot(mesh.port, {"a": "1", "b": "1"}))
    broken = resources.snapshot(mesh.port, {"a": "2", "b": "1"}, rejected=["a"])
    assert mesh.cache.set_snapshot(NODE, broken)
    await mesh.recorder.wait_for(lambda: mesh.recorder.nacks != [], "Envoy's NACK")
    [nack] = mesh.recorder.nacks
    assert (nack.node_id, nack.type_url, nack.resource_names) == (NODE, ECDS, ("ext-a",))
    assert nack.version == broken.resource_version(ECDS, "ext-a")
    assert "filter config has type URL envoy.extensions.filters.http.router.v3.Router" in (
        nack.error_detail
    )
    await mesh.headers({"x-a": "1", "x-b": "1"})
    assert (
        await mesh.envoy.counter("extension_config_discovery.http_filter.ext-a.update_rejected")
        == 1
    )
    info = mesh.connection()
    assert info is not None
    assert list(info.types[ECDS].rejected) == ["ext-a"]
    assert info.types[ECDS].last_nack == nack.error_detail
    fixed = resources.snapshot(mesh.port, {"a": "3", "b": "1"})
    assert mesh.cache.set_snapshot(NODE, fixed)
    await mesh.headers({"x-a": "3", "x-b": "1"})
    await mesh.converged(fixed)
    info = mesh.connection()
    assert info is not None
    assert info.types[ECDS].last_nack is None


async def test_a_restarted_server_sends_nothing_to_an_up_to_date_envoy_that_kept_serving(
    mesh: Mesh,
) -> None:
    await mesh.converged(resources.snapshot(mesh.port, {"a": "1", "b": "1"}))
    stats = (
        "listener_manager.lds.update_success",
        "cluster_manager.cds.update_success",
        "extension_config_discovery.http_filter.ext-a.update_success",
        "extension_config_discovery.http_filter.ext-b.update_success",
    )
    before = await mesh.envoy.stats()
    assert all(int(before.get(name, "0")) >= 1 for name in stats)
    await mesh.server.stop(0)
    await mesh.headers({"x-a": "1", "x-b": "1"})

    cache = SnapshotCache()
    recorder = Recorder(cache)
    rebuilt = resources.snapshot(mesh.port, {"a": "1", "b": "1"})
    recorder.snapshots[NODE] = rebuilt
    restarted = AdsServer(cache, recorder, security=mesh.security)
    await restarted.start(f"127.0.0.1:{mesh.xds_port}")
    try:
        again = Mesh(restarted, recorder, mesh.envoy, mesh.port, mesh.xds_port, mesh.security)
        await again.converged(rebuilt)
        info = again.connection()
        assert info is not None
        assert info.responses_sent == 0
        # No response was sent; the server only confirms what Envoy already holds.
        confirmed = {name for ack in recorder.acks for name in ack.resource_names}
        assert {"ext-a", "ext-b"} <= confirmed
        assert len(recorder.acks) == len({(a.type_url, a.resource_names) for a in recorder.acks})
        after = await mesh.envoy.stats()
        assert {name: after.get(name) for name in stats} == {
            name: before.get(name) for name in stats
        }
        await mesh.headers({"x-a": "1", "x-b": "1"})
        changed = resources.snapshot(mesh.port, {"a": "1", "b": "2"})
        assert cache.set_snapshot(NODE, changed)
        await mesh.headers({"x-a": "1", "x-b": "2"})
    finally:
        await restarted.stop(0)


async def test_extensions_added_and_removed_through_the_listener_reach_envoy(
    mesh: Mesh,
) -> None:
    await mesh.converged(resources.snapshot(mesh.port, {"a": "1", "b": "1"}))
    before = await mesh.envoy.counter("listener_manager.listener_modified")
    grown = resources.snapshot(mesh.port, {"a": "1", "b": "1", "c": "1"})
    assert mesh.cache.set_snapshot(NODE, grown)
    await mesh.headers({"x-a": "1", "x-b": "1", "x-c": "1"})
    await mesh.converged(grown)
    assert mesh.recorder.acked(ECDS, "ext-c", grown.resource_version(ECDS, "ext-c") or "")
    shrunk = resources.snapshot(mesh.port, {"b": "1", "c": "1"})
    assert mesh.cache.set_snapshot(NODE, shrunk)

    # The listener changes under the request: a connection it drains is retried.
    await mesh.envoy.get_when(
        mesh.port,
        lambda response: response.status_code == 200 and "x-a" not in response.headers,
        "ext-a to leave the filter chain",
    )
    await mesh.headers({"x-b": "1", "x-c": "1"})

    def unsubscribed() -> bool:
        info = mesh.connection()
        return info is not None and info.types[ECDS].subscribed == ("ext-b", "ext-c")

    await mesh.envoy.wait_for(unsubscribed, "Envoy to unsubscribe from ext-a")
    assert await mesh.envoy.counter("listener_manager.listener_modified") == before + 2
