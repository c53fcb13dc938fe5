"""Renewing a sidecar's certificate under load: Envoy picks up each new certificate
from its credentials folder without a restart, no request fails, and the xDS stream
keeps delivering (also after a reconnection, which uses the renewed certificate)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography import x509

from meshext.identity.credentials import issue_credentials
from tests.network import free_port
from tests.server.mesh import Sidecar, running_mesh, serve_options, sme

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin"}
RENEWALS = 3


async def serials_in_use(sidecar: Sidecar) -> set[int]:
    """Serial numbers of the certificates Envoy presents (its admin ``/certs``)."""
    body = (await sidecar.envoy.admin("/certs")).json()
    return {
        int(cert["serial_number"], 16)
        for entry in body.get("certificates", [])
        for cert in entry.get("cert_chain", [])
    }


async def test_renewing_the_certificate_under_load_fails_no_request_and_keeps_xds_flowing(
    tmp_path: Path,
) -> None:
    xds_port = free_port()
    async with running_mesh(tmp_path, serve_options(tmp_path, xds_port=xds_port)) as mesh:
        mesh.control_plane()
        mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "v1"}))
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
        await mesh.until(sidecar.appended, lambda h: h == ["v1"], "the header")
        ca, written = mesh.running.ca, sidecar.credentials
        assert ca is not None
        assert written is not None

        outcomes = {"ok": 0, "failed": 0}
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    response = await sidecar.get()
                    outcomes["ok" if response.status_code == 200 else "failed"] += 1
                except Exception:
                    outcomes["failed"] += 1

        workers = [asyncio.create_task(load()) for _ in range(4)]
        try:
            for _ in range(RENEWALS):
                written = issue_credentials(ca, written.identity, written.directory)
                serial = x509.load_pem_x509_certificate(written.issued.cert_pem).serial_number
                await mesh.until(
                    lambda: serials_in_use(sidecar),
                    lambda s, serial=serial: serial in s,  # type: ignore[misc]
                    "the new certificate",
                )
            # The stream opened before the renewals still delivers.
            mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "v2"}))
            await mesh.until(sidecar.appended, lambda h: h == ["v2"], "the update")
            # A new connection is made with the renewed certificate.
            await mesh.running.ads.stop(grace=0)
            await mesh.running.ads.start(f"127.0.0.1:{xds_port}")

            async def identities() -> list[str]:
                return [c.identity for c in mesh.running.ads.connections()]

            await mesh.until(
                identities,
                lambda ids: ids == ["spiffe://cluster.local/ns/bookinfo/sa/default"],
                "the sidecar reconnected",
            )
            mesh.write("a.yaml", sme("bookinfo", "tag", "header-append", config={"value": "v3"}))
            await mesh.until(
                sidecar.appended, lambda h: h == ["v3"], "the update after reconnecting"
            )
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert outcomes["failed"] == 0
        assert outcomes["ok"] > 0
