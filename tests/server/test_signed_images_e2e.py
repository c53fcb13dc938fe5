"""With a signature policy, only images signed by a trusted key reach real Envoy
sidecars; a refused newer image leaves the verified one running."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshext.cli.status import status
from meshext.images.config import RegistryConfig
from meshext.images.trust import SignatureMode, SignaturePolicy, load_trusted_keys
from meshext.server.control import ExtensionReport
from tests.images.cosign import Cosign, KeyPair, find_cosign
from tests.images.registry import Registry, start_registry
from tests.images.signed_images import push_header_append
from tests.server.mesh import Mesh, running_mesh, serve_options

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin", "version": "v1"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    running = start_registry(tmp_path_factory.mktemp("signed-registry"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    return Cosign(find_cosign(), tmp_path_factory.mktemp("cosign-home"))


@pytest.fixture(scope="module")
def ci_key(cosign: Cosign, tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign.generate_key_pair(tmp_path_factory.mktemp("ci-key"))


@pytest.fixture
async def mesh(tmp_path: Path, ci_key: KeyPair) -> AsyncIterator[Mesh]:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(ci_key.public, trusted / "ci.pub")
    options = replace(
        serve_options(tmp_path),
        registry=RegistryConfig(insecure_registries=frozenset({"127.0.0.1"})),
        signatures=SignaturePolicy(SignatureMode.ENFORCE, load_trusted_keys(trusted)),
    )
    async with running_mesh(tmp_path, options) as running:
        running.control_plane()
        yield running


def image_sme(name: str, image: str, value: str) -> str:
    return json.dumps(
        {
            "apiVersion": "maistra.io/v1",
            "kind": "ServiceMeshExtension",
            "metadata": {"name": name, "namespace": "bookinfo"},
            "spec": {
                "image": image,
                "phase": "PostAuthZ",
                "priority": 10 if name == "signed" else 5,
                "config": {"value": value},
            },
        }
    )


async def test_only_the_signed_image_reaches_envoy_and_status_names_signer_and_refusal(
    tmp_path: Path, mesh: Mesh, registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    signed_ref, signed_digest = push_header_append(tmp_path, registry, "ext-signed")
    cosign.sign(ci_key, f"{registry.host}/ext-signed@{signed_digest}", registry)
    unsigned_ref, unsigned_digest = push_header_append(
        tmp_path, registry, "ext-unsigned", "--format", "v2s2"
    )
    mesh.write(
        "ext.yaml",
        image_sme("signed", signed_ref, "signed"),
        image_sme("unsigned", unsigned_ref, "unsigned"),
    )
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["signed"], "only the signed extension")

    running = await mesh.until_running("signed")
    assert running.status.deployment.container_sha256 == signed_digest
    assert running.status.deployment.signer is not None
    assert running.status.deployment.signer.startswith("ci.pub (sha256:")
    shown = await asyncio.to_thread(CliRunner().invoke, status, ["--admin", mesh.running.admin_url])
    assert shown.exit_code == 0, shown.output
    assert (
        f"bookinfo/signed: image {signed_digest} signed by {running.status.deployment.signer}"
        in " ".join(shown.output.split())
    )

    async def refused() -> ExtensionReport:
        return mesh.report("unsigned")

    report = await mesh.until(
        refused, lambda r: bool(r.status.deployment.message), "the refusal in status"
    )
    assert not report.status.deployment.ready
    assert report.proxies == () or all(p.state.value != "Running" for p in report.proxies)
    message = report.status.deployment.message or ""
    assert "refused by the signature policy" in message
    assert f"image {unsigned_digest} has no cosign signature" in message

    # Pointing the running extension at an unsigned image keeps the verified module.
    mesh.write(
        "ext.yaml",
        image_sme("signed", unsigned_ref, "signed"),
        image_sme("unsigned", unsigned_ref, "unsigned"),
    )

    async def signed_report() -> ExtensionReport:
        return mesh.report("signed")

    kept = await mesh.until(
        signed_report,
        lambda r: "refused by the signature policy" in (r.status.deployment.message or ""),
        "the refusal of the new image on the running extension",
    )
    assert kept.status.deployment.ready
    assert kept.status.deployment.container_sha256 == signed_digest
    assert await sidecar.appended() == ["signed"]
