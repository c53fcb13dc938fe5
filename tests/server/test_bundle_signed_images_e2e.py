"""With a signature policy trusting a certificate authority and an identity, only the
image whose Sigstore bundle is signed by that identity reaches real Envoy sidecars;
one signed by another identity of the same authority is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshext.cli.status import status
from meshext.cli.trust_options import signature_policy
from meshext.images.config import RegistryConfig
from meshext.server.control import ExtensionReport
from tests.images.cosign import Cosign, KeyPair, find_cosign
from tests.images.oci_registry import start_oci_registry
from tests.images.registry import Registry, make_ca
from tests.images.signed_images import push_header_append
from tests.images.signing_certificates import ISSUER, SigningAuthority, identities_yaml
from tests.server.mesh import Mesh, running_mesh, serve_options

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin", "version": "v1"}
RELEASE = "release@ci.example"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("bundle-registry")
    running = start_oci_registry(base, make_ca(base / "pki"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    return Cosign(find_cosign(), tmp_path_factory.mktemp("cosign-home"))


@pytest.fixture(scope="module")
def ci_key(cosign: Cosign, tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign.generate_key_pair(tmp_path_factory.mktemp("ci-key"))


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.generate("release CA", intermediate=True)


@pytest.fixture
async def mesh(
    tmp_path: Path, registry: Registry, authority: SigningAuthority
) -> AsyncIterator[Mesh]:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    authority.write_chain(trusted / "release.crt")
    identities_yaml(trusted / "identities.yaml", (RELEASE, ISSUER))
    assert registry.ca is not None
    options = replace(
        serve_options(tmp_path),
        registry=RegistryConfig(
            ca_file=registry.ca.ca_file, allowed_private_registries=frozenset({"127.0.0.1"})
        ),
        signatures=signature_policy(trusted, "enforce"),
    )
    async with running_mesh(tmp_path, options) as running:
        running.control_plane()
        yield running


def image_sme(name: str, image: str, value: str, priority: int) -> str:
    return json.dumps(
        {
            "apiVersion": "maistra.io/v1",
            "kind": "ServiceMeshExtension",
            "metadata": {"name": name, "namespace": "bookinfo"},
            "spec": {
                "image": image,
                "phase": "PostAuthZ",
                "priority": priority,
                "config": {"value": value},
            },
        }
    )


def sign_as(
    cosign: Cosign,
    key: KeyPair,
    authority: SigningAuthority,
    email: str,
    image: str,
    registry: Registry,
    folder: Path,
) -> None:
    folder.mkdir()
    certificate = authority.certify(key.public, email, folder / "leaf.pem")
    chain = authority.write_chain(folder / "chain.pem")
    cosign.sign_bundle(key, image, registry, certificate=certificate, chain=chain)


async def test_only_the_image_bundled_by_a_trusted_identity_reaches_envoy(
    tmp_path: Path,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    authority: SigningAuthority,
) -> None:
    signed_ref, signed_digest = push_header_append(tmp_path, registry, "bundled")
    sign_as(
        cosign,
        ci_key,
        authority,
        RELEASE,
        f"{registry.host}/bundled@{signed_digest}",
        registry,
        tmp_path / "release",
    )
    other_ref, other_digest = push_header_append(
        tmp_path, registry, "bundled-by-intern", "--format", "v2s2"
    )
    sign_as(
        cosign,
        ci_key,
        authority,
        "intern@ci.example",
        f"{registry.host}/bundled-by-intern@{other_digest}",
        registry,
        tmp_path / "intern",
    )
    mesh.write(
        "ext.yaml",
        image_sme("signed", signed_ref, "signed", 10),
        image_sme("intern", other_ref, "intern", 5),
    )
    sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
    await mesh.until(sidecar.appended, lambda h: h == ["signed"], "only the bundled extension")

    running = await mesh.until_running("signed")
    assert running.status.deployment.container_sha256 == signed_digest
    signer = running.status.deployment.signer
    assert signer is not None
    assert signer.startswith(f"{RELEASE} (issuer {ISSUER}, CA CN=release CA root)")
    assert signer.endswith(", sigstore bundle")
    shown = await asyncio.to_thread(CliRunner().invoke, status, ["--admin", mesh.running.admin_url])
    assert shown.exit_code == 0, shown.output
    assert f"bookinfo/signed: image {signed_digest} signed by {signer}" in " ".join(
        shown.output.split()
    )

    async def refused() -> ExtensionReport:
        return mesh.report("intern")

    report = await mesh.until(
        refused, lambda r: bool(r.status.deployment.message), "the refusal in status"
    )
    assert not report.status.deployment.ready
    message = report.status.deployment.message or ""
    assert "refused by the signature policy" in message
    assert "names intern@ci.example" in message
    assert "which is no trusted identity" in message
    assert await sidecar.appended() == ["signed"]
