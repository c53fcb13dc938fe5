"""``meshext serve --xds-workers 2``: real Envoy sidecars served by two worker processes.

The control plane plans in the test's process and two spawned workers hold the ADS
streams on one port. Sidecars get their extensions and edits, a proxy's rejection
stays its own, identities are checked as without workers, and a killed worker is
replaced while its proxies reconnect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest

from meshext.server.delivery import DeliveryState
from meshext.server.workers.pool import WorkerPool
from tests.envoy.harness import eventually
from tests.server.mesh import Mesh, running_mesh, serve_options, sme
from tests.server.xds_client import claim, workload_credentials

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin"}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    options = dataclasses.replace(serve_options(tmp_path), xds_workers=2)
    async with running_mesh(tmp_path, options) as running:
        running.control_plane()
        yield running


def pool(mesh: Mesh) -> WorkerPool:
    assert isinstance(mesh.running.ads, WorkerPool)
    return mesh.running.ads


async def worker_of(mesh: Mesh, node_id: str) -> int | None:
    await pool(mesh).refresh_connections()
    for info in pool(mesh).connections():
        if info.node_id == node_id:
            return info.stream_id >> 40
    return None


def denials(mesh: Mesh, reason: str) -> dict[int, float]:
    """Streams each worker refused for ``reason``, as last reported by it."""
    found = {}
    for index, link in pool(mesh)._links.items():
        for name, _kind, _help, samples in link.metrics:
            if name == "meshext_xds_denied_streams":
                found[index] = sum(v for _, labels, v in samples if labels["reason"] == reason)
    return found


async def in_both_workers(mesh: Mesh, attempt: Callable[[], Awaitable[None]], reason: str) -> None:
    """Repeat ``attempt`` (each must be refused) until both workers refused one; the
    kernel picks the worker of each connection."""
    before = denials(mesh, reason)
    for _ in range(40):
        await attempt()
        await asyncio.sleep(0.6)  # workers report metrics twice a second
        now = denials(mesh, reason)
        if all(now.get(i, 0) > before.get(i, 0) for i in (0, 1)):
            return
    raise AssertionError(f"not refused by both workers: {before} then {now}")


async def test_two_sidecars_get_the_extension_and_an_edit_reaches_both(mesh: Mesh) -> None:
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "one"}))
    first = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    second = await mesh.sidecar("ratings", "bookinfo", {"app": "ratings"}, delta=True)
    for sidecar in (first, second):
        await mesh.until(sidecar.appended, lambda h: h == ["one"], "the first value")
    await mesh.until_running("tag", proxies=2)

    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "two"}))
    for sidecar in (first, second):
        await mesh.until(sidecar.appended, lambda h: h == ["two"], "the edited value")
    await mesh.until_running("tag", proxies=2)

    # The admin API sees the workers' streams and their counters.
    async with httpx.AsyncClient(timeout=10) as client:

        async def streams() -> dict[str, int]:
            body = (await client.get(f"{mesh.running.admin_url}/api/v1/proxies")).json()
            return {p["node"]: len(p["streams"]) for p in body["proxies"]}

        await mesh.until(
            streams, lambda s: s == {first.node_id: 1, second.node_id: 1}, "both streams listed"
        )
        metrics = (await client.get(f"{mesh.running.admin_url}/metrics")).text
    assert "meshext_xds_connected_proxies 2.0" in metrics
    assert 'meshext_xds_acks_total{type="TypedExtensionConfig"}' in metrics


async def test_a_rejection_by_one_proxy_leaves_the_other_running(mesh: Mesh) -> None:
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "one"}))
    first = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(first.appended, lambda h: h == ["one"], "the header at the first app")
    # The module file disappears: a proxy loading it from now on rejects the config.
    [module] = [p for p in (mesh.workdir / "cache").rglob("*") if p.is_file() and len(p.name) == 64]
    hidden = module.with_name("hidden")
    module.rename(hidden)
    try:
        second = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)

        def rejected_by_second(states: dict[str, DeliveryState]) -> bool:
            return states.get(second.node_id) is DeliveryState.REJECTED

        async def states() -> dict[str, DeliveryState]:
            return {p.proxy: p.state for p in mesh.report("tag").proxies}

        found = await mesh.until(states, rejected_by_second, "the second proxy's rejection")
        assert found[first.node_id] is DeliveryState.RUNNING
        assert await first.appended() == ["one"]
    finally:
        hidden.rename(module)


async def test_identities_are_checked_by_the_workers_as_by_one_server(mesh: Mesh) -> None:
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "one"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["one"], "the header at the app")
    ca = mesh.running.ca
    assert ca is not None
    target = str(mesh.running.xds_address)
    metadata = dict(sidecar.envoy.bootstrap["node"]["metadata"])

    async def foreign_namespace() -> None:
        foreign = workload_credentials(ca, ca.bundle_pem, "payments")
        answer = await claim(target, sidecar.node_id, metadata, foreign)
        assert answer.code is grpc.StatusCode.PERMISSION_DENIED
        assert "namespace" in answer.details

    async def another_identity() -> None:
        intruder = workload_credentials(ca, ca.bundle_pem, "bookinfo", "intruder")
        answer = await claim(target, sidecar.node_id, metadata, intruder)
        assert not answer.got_configuration
        assert answer.code is grpc.StatusCode.PERMISSION_DENIED
        assert "spiffe://cluster.local/ns/bookinfo/sa/default" in answer.details

    await in_both_workers(mesh, foreign_namespace, "namespace mismatch")
    await in_both_workers(mesh, another_identity, "node id held by another identity")
    own = workload_credentials(ca, ca.bundle_pem, "payments")
    mine = await claim(
        target, "sidecar~mine.payments~1", {**metadata, "NAMESPACE": "payments"}, own
    )
    assert mine.got_configuration
    assert await sidecar.appended() == ["one"]


async def test_a_node_id_held_in_another_worker_is_refused_before_anything_is_sent(
    mesh: Mesh,
) -> None:
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "one"}))
    ca = mesh.running.ca
    assert ca is not None
    workers = pool(mesh)
    # A claim racing the broadcast: only the main process knows the holder yet.
    holder = "spiffe://cluster.local/ns/bookinfo/sa/holder"
    assert workers._claims.admit("sidecar~1.1.1.1~held.bookinfo~x", 7, holder).admitted
    metadata = {"NAMESPACE": "bookinfo", "LABELS": HTTPBIN, "INBOUND_PORT": "9080"}

    async def racing_claim() -> None:
        other = workload_credentials(ca, ca.bundle_pem, "bookinfo")
        answer = await claim(
            str(mesh.running.xds_address), "sidecar~1.1.1.1~held.bookinfo~x", metadata, other
        )
        assert not answer.got_configuration
        assert answer.code is grpc.StatusCode.PERMISSION_DENIED
        assert f"connected as {holder}" in answer.details

    await in_both_workers(mesh, racing_claim, "node id held by another identity")
    assert [p.node_id for p in mesh.running.control.proxies()] == []


async def test_a_killed_worker_is_replaced_and_its_proxies_come_back(mesh: Mesh) -> None:
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "one"}))
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["one"], "the header at the app")
    workers = pool(mesh)

    async def holder() -> int | None:
        return await worker_of(mesh, sidecar.node_id)

    async def pids() -> list[int]:
        return workers.worker_pids()

    index = await eventually(holder, lambda found: found is not None, "the stream's worker")
    assert index is not None
    pid = workers.worker_pids()[index]

    def acks() -> float:
        found = workers.registry.get_sample_value(
            "meshext_xds_acks_total", {"type": "TypedExtensionConfig"}
        )
        return found or 0.0

    await mesh.until(lambda: _now(acks()), lambda count: count >= 1, "the ACK counted")
    acked_before = acks()
    os.kill(pid, signal.SIGKILL)

    await mesh.until(pids, lambda now: len(now) == 2 and pid not in now, "a replacement worker")
    assert workers.restarts == 1
    # The proxy reconnects (to either worker) and still gets edits.
    mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "two"}))
    await mesh.until(sidecar.appended, lambda h: h == ["two"], "the edit after the restart")
    await mesh.until_running("tag", proxies=1)
    assert await sidecar.appended() == ["two"]
    # The killed worker's counts are kept in the totals.
    await mesh.until(lambda: _now(acks()), lambda count: count > acked_before, "new ACKs")


async def _now(value: float) -> float:
    return value
