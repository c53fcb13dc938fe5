"""The webhook serves HTTPS, picks up a rotated certificate, and the CLI prints CRDs and certs."""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509

from meshext.cli.kube import kube
from meshext.kube.certs import self_signed
from meshext.kube.http import start_webhook_server

REVIEW: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "ConversionReview",
    "request": {
        "uid": "u",
        "desiredAPIVersion": "maistra.io/v1alpha1",
        "objects": [
            {
                "apiVersion": "maistra.io/v1",
                "kind": "ServiceMeshExtension",
                "metadata": {"name": "x", "namespace": "y"},
                "spec": {"image": "a/b:c", "config": {"k": 1}},
            }
        ],
    },
}


async def _status(url: str, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        return response.status


async def test_the_webhook_converts_over_https_with_its_certificate(tmp_path: Path) -> None:
    ca, cert, key = self_signed(["127.0.0.1"]).write(tmp_path)
    server = await start_webhook_server(cert, key)
    try:
        context = ssl.create_default_context(cafile=str(ca))
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.url, json=REVIEW, ssl=context) as response,
        ):
            assert response.status == 200
            answer = await response.json()
        assert answer["response"]["convertedObjects"][0]["spec"]["config"] == '{"k":1}'
    finally:
        await server.stop()


async def test_a_rotated_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    old_ca, cert, key = self_signed(["localhost"]).write(tmp_path / "tls")
    keep = tmp_path / "old-ca.crt"
    keep.write_bytes(old_ca.read_bytes())
    server = await start_webhook_server(cert, key)
    url = f"https://localhost:{server.port}/healthz"
    try:
        assert await _status(url, keep) == 200
        new_ca, cert, key = self_signed(["localhost"]).write(tmp_path / "tls")
        later = os.stat(cert).st_mtime + 10
        os.utime(cert, (later, later))
        os.utime(key, (later, later))
        assert await _status(url, new_ca) == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _status(url, keep)
    finally:
        await server.stop()


def test_kube_crds_prints_the_crds_with_the_given_webhook(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    result = CliRunner().invoke(
        kube, ["crds", "--webhook-url", "https://127.0.0.1:9443/convert", "--ca-bundle", str(ca)]
    )
    assert result.exit_code == 0, result.output
    crds = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [c["metadata"]["name"] for c in crds] == [
        "servicemeshextensions.maistra.io",
        "servicemeshcontrolplanes.maistra.io",
        "servicemeshmemberrolls.maistra.io",
    ]
    client = crds[0]["spec"]["conversion"]["webhook"]["clientConfig"]
    assert client["url"] == "https://127.0.0.1:9443/convert"
    assert base64.b64decode(client["caBundle"]) == ca.read_bytes()


def test_kube_certs_writes_a_certificate_for_the_service_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        kube, ["certs", "--out", str(tmp_path), "--service", "mesh/hooks", "--host", "10.0.0.9"]
    )
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hooks.mesh.svc" in names.get_values_for_type(x509.DNSName)
    assert "hooks.mesh.svc.cluster.local" in names.get_values_for_type(x509.DNSName)
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.9"]
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
