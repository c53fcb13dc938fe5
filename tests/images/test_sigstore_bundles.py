"""Sigstore bundles made by the real cosign (``--new-bundle-format``) in a real OCI 1.1
registry are found through the referrers API and verified offline, by a trusted key
or by a certificate naming a trusted identity; anything else never resolves."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meshext.cli.image import image as image_cli
from meshext.cli.trust_options import signature_policy
from meshext.images.cache import ModuleCache
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import FolderPullSecretStore
from meshext.images.sigstore_bundle import BUNDLE_ARTIFACT
from meshext.images.trust import load_trusted_keys
from meshext.images.verification import SignatureVerifier
from meshext.mesh.resolution import Resolution, ResolutionState
from tests.images.conftest import (
    FAST_RETRIES,
    CountingTransport,
    extension,
    registry_config,
    unique,
)
from tests.images.cosign import Cosign, KeyPair
from tests.images.registry import Registry
from tests.images.signed_images import by_digest, imported_ed25519_key, push_image, trust_folder
from tests.images.signing_certificates import (
    ISSUER,
    SigningAuthority,
    identities_yaml,
    trusted_root_json,
)

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SIGNER_EMAIL = "release@ci.example"


@pytest.fixture(scope="session")
def authority() -> SigningAuthority:
    return SigningAuthority.generate("release CA", intermediate=True)


def certificate_folder(
    tmp_path: Path, authority: SigningAuthority, *, as_trusted_root: bool, subject: str
) -> Path:
    """A trust folder with no key: ``authority`` (as ``trusted_root.json`` or a
    ``*.crt`` root) and one identity."""
    folder = tmp_path / "trusted"
    folder.mkdir(exist_ok=True)
    if as_trusted_root:
        trusted_root_json(folder / "trusted_root.json", authority)
    else:
        # the root is the anchor; the intermediate in the same file completes the chain
        authority.write_chain(folder / "release.crt")
    identities_yaml(folder / "identities.yaml", (subject, ISSUER))
    return folder


async def resolve(
    cache: ModuleCache,
    registry: Registry,
    trusted: Path,
    image: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Resolution:
    resolver = ImageResolver(
        cache,
        FolderPullSecretStore(cache.root.parent / "no-secrets"),
        registry_config=registry_config(registry),
        retries=FAST_RETRIES,
        transport=transport,
        signatures=SignatureVerifier(signature_policy(trusted, "enforce")),
    )
    try:
        return await resolver.resolve(extension(image, policy="Always"))
    finally:
        await resolver.aclose()


def client(registry: Registry) -> httpx.Client:
    assert registry.ca is not None
    return httpx.Client(base_url=registry.url, verify=trusting(registry), timeout=10)


def trusting(registry: Registry) -> ssl.SSLContext:
    assert registry.ca is not None
    return ssl.create_default_context(cafile=str(registry.ca.ca_file))


def referrers(registry: Registry, repository: str, digest: str) -> list[dict[str, Any]]:
    with client(registry) as http:
        response = http.get(f"/v2/{repository}/referrers/{digest}")
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()["manifests"]
        return entries


def bundle_manifest(registry: Registry, repository: str, digest: str) -> dict[str, Any]:
    """The one bundle referrer manifest of ``digest``."""
    with client(registry) as http:
        for entry in referrers(registry, repository, digest):
            response = http.get(
                f"/v2/{repository}/manifests/{entry['digest']}", headers={"Accept": OCI_MANIFEST}
            )
            response.raise_for_status()
            document: dict[str, Any] = response.json()
            if document.get("artifactType") == BUNDLE_ARTIFACT:
                return document
    raise AssertionError(f"no bundle referrer for {digest}")


def blob(registry: Registry, repository: str, digest: str) -> bytes:
    with client(registry) as http:
        response = http.get(f"/v2/{repository}/blobs/{digest}")
        response.raise_for_status()
        return response.content


def push_blob(registry: Registry, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with client(registry) as http:
        started = http.post(f"/v2/{repository}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        done = http.put(
            f"{location}{separator}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        done.raise_for_status()
    return digest


def push_manifest(registry: Registry, repository: str, document: dict[str, Any]) -> str:
    data = json.dumps(document).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with client(registry) as http:
        response = http.put(
            f"/v2/{repository}/manifests/{digest}",
            content=data,
            headers={"Content-Type": OCI_MANIFEST},
        )
        response.raise_for_status()
    return digest


def tags(registry: Registry, repository: str) -> set[str]:
    with client(registry) as http:
        response = http.get(f"/v2/{repository}/tags/list")
        response.raise_for_status()
        return set(response.json()["tags"])


async def test_a_bundle_signed_by_a_trusted_key_is_found_by_referrers_and_names_its_kind(
    tmp_path: Path, cache: ModuleCache, oci_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("bundle-key")
    reference, digest = push_image(tmp_path, oci_registry, repository, "bundle by key")
    cosign.sign_bundle(ci_key, by_digest(reference, digest), oci_registry)
    assert tags(oci_registry, repository) == {"v1"}
    trusted = trust_folder(tmp_path, ci_key)
    counting = CountingTransport(httpx.AsyncHTTPTransport(verify=trusting(oci_registry)))
    resolution = await resolve(cache, oci_registry, trusted, reference, counting)
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert resolution.module.image_digest == digest
    key = load_trusted_keys(trusted)[0]
    assert resolution.module.signer == f"key0.pub (sha256:{key.fingerprint}), sigstore bundle"
    assert counting.counts[("GET", f"/v2/{repository}/referrers/{digest}")] == 1


async def test_a_bundle_signed_by_another_key_is_refused(
    tmp_path: Path,
    cache: ModuleCache,
    oci_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    rogue_key: KeyPair,
) -> None:
    repository = unique("bundle-rogue")
    reference, digest = push_image(tmp_path, oci_registry, repository, "bundle rogue")
    cosign.sign_bundle(rogue_key, by_digest(reference, digest), oci_registry)
    resolution = await resolve(cache, oci_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.FAILED
    assert f"image {digest} has no valid signature by a trusted key" in resolution.message
    assert "referrers API sha256:" in resolution.message
    assert "signed by no trusted key" in resolution.message


@pytest.mark.parametrize("as_trusted_root", [True, False], ids=["trusted-root", "crt-file"])
async def test_a_bundle_signed_with_a_certificate_of_a_trusted_identity_resolves(
    tmp_path: Path,
    cache: ModuleCache,
    oci_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    authority: SigningAuthority,
    as_trusted_root: bool,
) -> None:
    repository = unique("bundle-cert")
    reference, digest = push_image(tmp_path, oci_registry, repository, f"cert {as_trusted_root}")
    certificate = authority.certify(ci_key.public, SIGNER_EMAIL, tmp_path / "leaf.crt.pem")
    cosign.sign_bundle(
        ci_key,
        by_digest(reference, digest),
        oci_registry,
        certificate=certificate,
        chain=authority.write_chain(tmp_path / "chain.pem"),
    )
    trusted = certificate_folder(
        tmp_path, authority, as_trusted_root=as_trusted_root, subject=SIGNER_EMAIL
    )
    resolution = await resolve(cache, oci_registry, trusted, reference)
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert resolution.module.signer is not None
    assert resolution.module.signer.startswith(f"{SIGNER_EMAIL} (issuer {ISSUER}, CA CN=release CA")
    assert resolution.module.signer.endswith(", sigstore bundle")


async def test_a_certificate_naming_an_untrusted_identity_is_refused(
    tmp_path: Path,
    cache: ModuleCache,
    oci_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    authority: SigningAuthority,
) -> None:
    repository = unique("bundle-identity")
    reference, digest = push_image(tmp_path, oci_registry, repository, "untrusted identity")
    certificate = authority.certify(ci_key.public, "intern@ci.example", tmp_path / "leaf.pem")
    cosign.sign_bundle(
        ci_key,
        by_digest(reference, digest),
        oci_registry,
        certificate=certificate,
        chain=authority.write_chain(tmp_path / "chain.pem"),
    )
    trusted = certificate_folder(tmp_path, authority, as_trusted_root=True, subject=SIGNER_EMAIL)
    resolution = await resolve(cache, oci_registry, trusted, reference)
    assert resolution.state is ResolutionState.FAILED
    assert (
        f"names intern@ci.example, issuer {ISSUER}, which is no trusted identity"
        in resolution.message
    )


async def test_a_certificate_from_another_authority_is_refused(
    tmp_path: Path,
    cache: ModuleCache,
    oci_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    authority: SigningAuthority,
) -> None:
    repository = unique("bundle-other-ca")
    reference, digest = push_image(tmp_path, oci_registry, repository, "other ca")
    impostor = SigningAuthority.generate("release CA")
    certificate = impostor.certify(ci_key.public, SIGNER_EMAIL, tmp_path / "leaf.pem")
    cosign.sign_bundle(
        ci_key,
        by_digest(reference, digest),
        oci_registry,
        certificate=certificate,
        chain=impostor.write_chain(tmp_path / "chain.pem"),
    )
    trusted = certificate_folder(tmp_path, authority, as_trusted_root=True, subject=SIGNER_EMAIL)
    resolution = await resolve(cache, oci_registry, trusted, reference)
    assert resolution.state is ResolutionState.FAILED
    assert "does not chain to a trusted authority" in resolution.message


async def test_a_bundle_for_another_digest_does_not_count(
    tmp_path: Path, cache: ModuleCache, oci_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("bundle-copied")
    reference, signed_digest = push_image(tmp_path, oci_registry, repository, "genuine bundle")
    cosign.sign_bundle(ci_key, by_digest(reference, signed_digest), oci_registry)
    # The genuine bundle re-attached, unchanged, to another image of the repository.
    evil_ref, evil_digest = push_image(tmp_path, oci_registry, repository, "evil", tag="v2")
    copied = bundle_manifest(oci_registry, repository, signed_digest)
    copied["subject"] = {
        "mediaType": OCI_MANIFEST,
        "digest": evil_digest,
        "size": len(blob_manifest(oci_registry, repository, evil_digest)),
    }
    push_manifest(oci_registry, repository, copied)
    resolution = await resolve(cache, oci_registry, trust_folder(tmp_path, ci_key), evil_ref)
    assert resolution.state is ResolutionState.FAILED
    assert f"image {evil_digest} has no valid signature" in resolution.message
    assert f"a DSSE envelope for {signed_digest}, not this image" in resolution.message


def blob_manifest(registry: Registry, repository: str, digest: str) -> bytes:
    with client(registry) as http:
        response = http.get(
            f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
        )
        response.raise_for_status()
        return response.content


async def test_a_bundle_with_a_tampered_payload_is_refused(
    tmp_path: Path, cache: ModuleCache, oci_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("bundle-tampered")
    reference, digest = push_image(tmp_path, oci_registry, repository, "tampered")
    cosign.sign_bundle(ci_key, by_digest(reference, digest), oci_registry)
    manifest = bundle_manifest(oci_registry, repository, digest)
    layer = manifest["layers"][0]
    bundle = json.loads(blob(oci_registry, repository, layer["digest"]))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"] = {"approved": True}
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    data = json.dumps(bundle).encode()
    layer["digest"], layer["size"] = push_blob(oci_registry, repository, data), len(data)
    tampered = push_manifest(oci_registry, repository, manifest)
    # The genuine bundle is removed: only the tampered one is left to judge.
    with client(oci_registry) as http:
        for entry in referrers(oci_registry, repository, digest):
            if entry["digest"] != tampered:
                http.delete(f"/v2/{repository}/manifests/{entry['digest']}").raise_for_status()
    assert [e["digest"] for e in referrers(oci_registry, repository, digest)] == [tampered]
    resolution = await resolve(cache, oci_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.FAILED
    assert "signed by no trusted key" in resolution.message


async def test_moving_the_tag_after_signing_with_a_bundle_refuses_the_new_image(
    tmp_path: Path, cache: ModuleCache, oci_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("bundle-moved")
    reference, signed_digest = push_image(tmp_path, oci_registry, repository, "bundle before")
    cosign.sign_bundle(ci_key, by_digest(reference, signed_digest), oci_registry)
    trusted = trust_folder(tmp_path, ci_key)
    before = await resolve(cache, oci_registry, trusted, reference)
    assert before.state is ResolutionState.READY, before.message
    _, moved_digest = push_image(tmp_path, oci_registry, repository, "bundle after")
    assert moved_digest != signed_digest
    after = await resolve(cache, oci_registry, trusted, reference)
    assert after.state is ResolutionState.FAILED
    assert f"image {moved_digest} has no cosign signature or sigstore bundle" in after.message


@pytest.mark.parametrize("referrers_mode", [False, True], ids=["tag", "referrers"])
async def test_classic_signatures_are_found_by_tag_or_by_the_referrers_api(
    tmp_path: Path,
    cache: ModuleCache,
    oci_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    referrers_mode: bool,
) -> None:
    repository = unique("classic-oci11")
    reference, digest = push_image(tmp_path, oci_registry, repository, f"classic {referrers_mode}")
    cosign.sign(ci_key, by_digest(reference, digest), oci_registry, referrers=referrers_mode)
    present = tags(oci_registry, repository)
    if referrers_mode:
        # a registry with the referrers API gets no fallback tag and no .sig tag
        assert present == {"v1"}
        assert [e.get("artifactType") for e in referrers(oci_registry, repository, digest)] == [
            "application/vnd.dev.cosign.artifact.sig.v1+json"
        ]
    else:
        assert f"sha256-{digest[7:]}.sig" in present
    resolution = await resolve(cache, oci_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert resolution.module.signer is not None
    assert resolution.module.signer.endswith(", cosign signature")


async def test_a_bundle_on_a_registry_without_the_referrers_api_is_found_by_the_referrers_tag(
    tmp_path: Path, cache: ModuleCache, tls_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("bundle-fallback")
    reference, digest = push_image(tmp_path, tls_registry, repository, "bundle fallback")
    cosign.sign_bundle(ci_key, by_digest(reference, digest), tls_registry)
    # distribution 2.8 has no referrers API: cosign wrote the fallback index tag
    assert f"sha256-{digest[7:]}" in tags(tls_registry, repository)
    resolution = await resolve(cache, tls_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert str(resolution.module.signer).endswith(", sigstore bundle")


def test_image_inspect_names_the_certificate_identity_of_a_bundle(
    tmp_path: Path,
    oci_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    authority: SigningAuthority,
) -> None:
    repository = unique("bundle-inspect")
    reference, digest = push_image(tmp_path, oci_registry, repository, "bundle inspect")
    trusted = certificate_folder(tmp_path, authority, as_trusted_root=False, subject=SIGNER_EMAIL)
    assert oci_registry.ca is not None
    common = [
        "--ca-file",
        str(oci_registry.ca.ca_file),
        "--allow-private-registry",
        "127.0.0.1",
        "--cache",
        str(tmp_path / "cache"),
        "--trusted-keys",
        str(trusted),
        "--quiet",
    ]
    refused = CliRunner().invoke(image_cli, ["inspect", reference, *common])
    assert refused.exit_code == 1
    assert f"image {digest} has no cosign signature or sigstore bundle" in refused.output
    cosign.sign_bundle(
        ci_key,
        by_digest(reference, digest),
        oci_registry,
        certificate=authority.certify(ci_key.public, SIGNER_EMAIL, tmp_path / "leaf.pem"),
        chain=authority.write_chain(tmp_path / "chain.pem"),
    )
    shown = CliRunner().invoke(image_cli, ["inspect", reference, *common, "-o", "json"])
    assert shown.exit_code == 0, shown.output
    signer = json.loads(shown.output)["signer"]
    assert signer == (f"{SIGNER_EMAIL} (issuer {ISSUER}, CA CN=release CA root), sigstore bundle")


async def test_at_most_32_referrers_are_read_whatever_the_registry_lists(
    tmp_path: Path, cache: ModuleCache, oci_registry: Registry, ci_key: KeyPair
) -> None:
    repository = unique("bundle-flood")
    reference, digest = push_image(tmp_path, oci_registry, repository, "flood")
    empty = push_blob(oci_registry, repository, b"{}")
    size = len(blob_manifest(oci_registry, repository, digest))
    for number in range(40):
        junk = f'{{"mediaType": "{BUNDLE_ARTIFACT}", "junk": {number}}}'.encode()
        push_manifest(
            oci_registry,
            repository,
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": BUNDLE_ARTIFACT,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty,
                           "size": 2},
                "layers": [
                    {
                        "mediaType": BUNDLE_ARTIFACT,
                        "digest": push_blob(oci_registry, repository, junk),
                        "size": len(junk),
                    }
                ],
                "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": size},
            },
        )  # fmt: skip
    assert len(referrers(oci_registry, repository, digest)) == 40
    resolution = await resolve(cache, oci_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.FAILED
    assert resolution.message.count("unreadable bundle") == 32


async def test_a_referrer_whose_manifest_names_another_subject_is_ignored(
    tmp_path: Path, cache: ModuleCache, tls_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("bundle-subject")
    reference, signed_digest = push_image(tmp_path, tls_registry, repository, "subject a")
    cosign.sign_bundle(ci_key, by_digest(reference, signed_digest), tls_registry)
    # A referrers tag for another image that lists the first image's bundle.
    other_ref, other_digest = push_image(tmp_path, tls_registry, repository, "other", tag="v2")
    index_type = "application/vnd.oci.image.index.v1+json"
    with client(tls_registry) as http:
        index = http.get(
            f"/v2/{repository}/manifests/sha256-{signed_digest[7:]}",
            headers={"Accept": index_type},
        )
        index.raise_for_status()
        http.put(
            f"/v2/{repository}/manifests/sha256-{other_digest[7:]}",
            content=index.content,
            headers={"Content-Type": index_type},
        ).raise_for_status()
    listed = json.loads(index.content)["manifests"][0]["digest"]
    resolution = await resolve(cache, tls_registry, trust_folder(tmp_path, ci_key), other_ref)
    assert resolution.state is ResolutionState.FAILED
    assert (
        f"referrers tag sha256-{other_digest[7:]} {listed}: its subject is not this image"
        in resolution.message
    )


async def test_a_bundle_signed_by_an_imported_ed25519_key_verifies(
    tmp_path: Path, cache: ModuleCache, oci_registry: Registry, cosign: Cosign
) -> None:
    key = imported_ed25519_key(cosign, tmp_path)
    reference, digest = push_image(tmp_path, oci_registry, unique("bundle-ed"), "bundle ed25519")
    cosign.sign_bundle(key, by_digest(reference, digest), oci_registry)
    resolution = await resolve(cache, oci_registry, trust_folder(tmp_path, key), reference)
    assert resolution.state is ResolutionState.READY, resolution.message
    assert str(resolution.module.signer if resolution.module else None).endswith(
        ", sigstore bundle"
    )
