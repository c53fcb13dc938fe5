"""Only a proven proxy gets or changes its configuration.

A real sidecar runs an extension that refuses requests without a token. Clients
that claim its node id (copied from its bootstrap) try to read its configuration:
in plaintext, over TLS without a certificate, with a certificate of another CA,
with an expired one, and with a valid certificate of another namespace. None gets
anything, and the sidecar keeps refusing requests without the token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from meshext.identity import ca as mesh_ca
from meshext.identity.spiffe import SpiffeId
from tests.server.mesh import Mesh, Sidecar, running_mesh, sme
from tests.server.xds_client import claim, client_credentials, workload_credentials

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin"}
TOKEN = {"x-token": "yes"}


@pytest.fixture(params=["sotw", "delta"])
async def guarded(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Mesh, Sidecar]]:
    async with running_mesh(tmp_path) as mesh:
        mesh.control_plane()
        mesh.write(
            "a.yaml", sme("bookinfo", "guard", "deny-unless-header", config={"name": "x-token"})
        )
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN, delta=request.param == "delta")
        await mesh.until_running("guard")
        await mesh.until(sidecar.get, lambda r: r.status_code == 403, "requests refused")
        yield mesh, sidecar


def target(mesh: Mesh) -> str:
    return str(mesh.running.xds_address)


def node_metadata(sidecar: Sidecar) -> dict[str, Any]:
    metadata: dict[str, Any] = sidecar.envoy.bootstrap["node"]["metadata"]
    return dict(metadata)


def bundle(mesh: Mesh) -> bytes:
    assert mesh.running.ca is not None
    return mesh.running.ca.bundle_pem


async def still_enforcing(sidecar: Sidecar) -> None:
    assert (await sidecar.get()).status_code == 403
    assert (await sidecar.get(headers=TOKEN)).status_code == 200


@pytest.mark.parametrize("delta", [False, True])
async def test_a_plaintext_client_gets_nothing(guarded: tuple[Mesh, Sidecar], delta: bool) -> None:
    mesh, sidecar = guarded
    answer = await claim(target(mesh), sidecar.node_id, node_metadata(sidecar), None, delta=delta)
    assert not answer.got_configuration
    assert answer.code is grpc.StatusCode.UNAVAILABLE
    await still_enforcing(sidecar)


async def test_a_client_without_a_certificate_gets_nothing(guarded: tuple[Mesh, Sidecar]) -> None:
    mesh, sidecar = guarded
    credentials = client_credentials(bundle(mesh))
    answer = await claim(target(mesh), sidecar.node_id, node_metadata(sidecar), credentials)
    assert not answer.got_configuration
    assert answer.code is grpc.StatusCode.UNAVAILABLE
    await still_enforcing(sidecar)


async def test_a_certificate_of_another_ca_gets_nothing(guarded: tuple[Mesh, Sidecar]) -> None:
    mesh, sidecar = guarded
    other = mesh_ca.create("cluster.local")
    credentials = workload_credentials(other, bundle(mesh), "bookinfo")
    answer = await claim(target(mesh), sidecar.node_id, node_metadata(sidecar), credentials)
    assert not answer.got_configuration
    assert answer.code is grpc.StatusCode.UNAVAILABLE
    await still_enforcing(sidecar)


async def test_an_expired_certificate_gets_nothing(guarded: tuple[Mesh, Sidecar]) -> None:
    mesh, sidecar = guarded
    ca = mesh.running.ca
    assert ca is not None
    expired = ca.issue_workload(
        SpiffeId(ca.trust_domain, "bookinfo", "default"),
        lifetime=timedelta(hours=1),
        now=datetime.now(UTC) - timedelta(days=1),
    )
    assert expired.not_after < datetime.now(UTC)
    credentials = client_credentials(bundle(mesh), expired)
    answer = await claim(target(mesh), sidecar.node_id, node_metadata(sidecar), credentials)
    assert not answer.got_configuration
    assert answer.code is grpc.StatusCode.UNAVAILABLE
    await still_enforcing(sidecar)


@pytest.mark.parametrize("delta", [False, True])
async def test_a_certificate_of_another_namespace_is_denied_with_a_log_and_a_metric(
    guarded: tuple[Mesh, Sidecar], delta: bool, caplog: pytest.LogCaptureFixture
) -> None:
    mesh, sidecar = guarded
    ca = mesh.running.ca
    assert ca is not None
    credentials = workload_credentials(ca, bundle(mesh), "payments")
    with caplog.at_level(logging.WARNING, logger="meshext.xds.server"):
        answer = await claim(
            target(mesh), sidecar.node_id, node_metadata(sidecar), credentials, delta=delta
        )
    assert not answer.got_configuration
    assert answer.code is grpc.StatusCode.PERMISSION_DENIED
    assert "bookinfo" in answer.details
    assert "spiffe://cluster.local/ns/payments/sa/default" in answer.details
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("'bookinfo'" in line and "/ns/payments/" in line for line in logged)
    denied = mesh.running.ads.registry.get_sample_value(
        "meshext_xds_denied_streams_total", {"reason": "namespace mismatch"}
    )
    assert denied == 1.0
    await still_enforcing(sidecar)


async def test_another_identity_of_the_same_namespace_cannot_take_over_a_connected_node(
    guarded: tuple[Mesh, Sidecar],
) -> None:
    mesh, sidecar = guarded
    ca = mesh.running.ca
    assert ca is not None
    credentials = workload_credentials(ca, bundle(mesh), "bookinfo", "intruder")
    answer = await claim(target(mesh), sidecar.node_id, node_metadata(sidecar), credentials)
    assert not answer.got_configuration
    assert answer.code is grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://cluster.local/ns/bookinfo/sa/default" in answer.details
    await still_enforcing(sidecar)


async def test_a_namespace_a_certificate_cannot_read_namespace_b_configuration(
    guarded: tuple[Mesh, Sidecar],
) -> None:
    mesh, sidecar = guarded
    ca = mesh.running.ca
    assert ca is not None
    metadata = node_metadata(sidecar)
    own = workload_credentials(ca, bundle(mesh), "payments")
    # Its own namespace, under a node id nobody holds: it is served.
    mine = await claim(
        target(mesh), "sidecar~mine.payments~1", {**metadata, "NAMESPACE": "payments"}, own
    )
    assert mine.got_configuration
    # Namespace B's workload under a fresh node id: refused all the same.
    theirs = await claim(target(mesh), "sidecar~copy.bookinfo~1", metadata, own)
    assert not theirs.got_configuration
    assert theirs.code is grpc.StatusCode.PERMISSION_DENIED
    await still_enforcing(sidecar)


async def test_the_admin_api_shows_the_identity_each_stream_proved(
    guarded: tuple[Mesh, Sidecar],
) -> None:
    mesh, sidecar = guarded
    async with httpx.AsyncClient(timeout=10) as client:
        body = (await client.get(mesh.running.admin_url + "/api/v1/proxies")).json()
        security = (await client.get(mesh.running.admin_url + "/api/v1/security")).json()
    [proxy] = [p for p in body["proxies"] if p["node"] == sidecar.node_id]
    assert [s["identity"] for s in proxy["streams"]] == [
        "spiffe://cluster.local/ns/bookinfo/sa/default"
    ]
    assert security == {"xds": "mutual-tls"}
