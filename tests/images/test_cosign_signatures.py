"""Images signed with the real cosign in a real registry pass the signature policy;
unsigned, wrongly signed and tampered images never resolve."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from meshext.cli.describe import describe
from meshext.cli.image import image as image_cli
from meshext.cli.trust_options import signature_policy
from meshext.images.cache import ModuleCache
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import FolderPullSecretStore
from meshext.images.signatures import SIGNATURE_ANNOTATION, SIMPLE_SIGNING
from meshext.images.trust import SignatureMode, SignaturePolicy, load_trusted_keys
from meshext.images.verification import SignatureVerifier
from meshext.mesh.resolution import Resolution, ResolutionState
from tests.images.conftest import (
    FAST_RETRIES,
    CountingTransport,
    cache_is_clean,
    dockerconfigjson,
    extension,
    registry_config,
    run,
    skopeo_manifest_digest,
    skopeo_push,
    unique,
    write_pull_secret,
)
from tests.images.cosign import Cosign, KeyPair
from tests.images.layouts import OCI_LAYER_GZIP, Entry, Layout, tar_layer
from tests.images.registry import Registry
from tests.images.signed_images import by_digest, imported_ed25519_key, push_image, trust_folder
from tests.images.wasm import proxy_wasm_module
from tests.server.mesh import CONTROL_PLANE

pytestmark = pytest.mark.e2e


def resolver(
    cache: ModuleCache,
    registry: Registry,
    policy: SignaturePolicy,
    *,
    secrets: Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ImageResolver:
    return ImageResolver(
        cache,
        FolderPullSecretStore(secrets or cache.root.parent / "no-secrets"),
        registry_config=registry_config(registry),
        retries=FAST_RETRIES,
        transport=transport,
        signatures=SignatureVerifier(policy),
    )


async def resolve(
    cache: ModuleCache,
    registry: Registry,
    trusted: Path,
    image: str,
    mode: SignatureMode = SignatureMode.ENFORCE,
) -> Resolution:
    image_resolver = resolver(cache, registry, SignaturePolicy(mode, load_trusted_keys(trusted)))
    try:
        return await image_resolver.resolve(extension(image, policy="Always"))
    finally:
        await image_resolver.aclose()


def tags(registry: Registry, repository: str) -> set[str]:
    out = run(
        "skopeo", "list-tags", *registry.skopeo_args(), f"docker://{registry.host}/{repository}"
    )
    return set(json.loads(out)["Tags"])


async def test_an_image_signed_by_a_trusted_key_resolves_and_names_its_signer(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("signed")
    reference, digest = push_image(tmp_path, plain_registry, repository, "signed")
    cosign.sign(ci_key, by_digest(reference, digest), plain_registry)
    assert f"sha256-{digest[7:]}.sig" in tags(plain_registry, repository)
    trusted = trust_folder(tmp_path, ci_key)
    resolution = await resolve(cache, plain_registry, trusted, reference)
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert resolution.module.image_digest == digest
    key = load_trusted_keys(trusted)[0]
    assert resolution.module.signer == f"key0.pub (sha256:{key.fingerprint}), cosign signature"


async def test_an_unsigned_image_is_refused_naming_its_digest_and_where_it_looked(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, ci_key: KeyPair
) -> None:
    reference, digest = push_image(tmp_path, plain_registry, unique("unsigned"), "unsigned")
    resolution = await resolve(cache, plain_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.FAILED
    assert resolution.module is None
    assert not resolution.retryable
    assert resolution.keep_previous
    assert "refused by the signature policy" in resolution.message
    assert f"image {digest} has no cosign signature" in resolution.message
    assert f"tag sha256-{digest[7:]}.sig" in resolution.message


async def test_an_image_signed_by_another_key_is_refused(
    tmp_path: Path,
    cache: ModuleCache,
    plain_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    rogue_key: KeyPair,
) -> None:
    reference, digest = push_image(tmp_path, plain_registry, unique("rogue"), "rogue")
    cosign.sign(rogue_key, by_digest(reference, digest), plain_registry)
    resolution = await resolve(cache, plain_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.FAILED
    assert f"image {digest} has no valid signature by a trusted key" in resolution.message
    assert f"tag sha256-{digest[7:]}.sig: signed by no trusted key" in resolution.message


async def test_a_genuine_signature_copied_onto_another_image_does_not_count(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("copied")
    signed_ref, signed_digest = push_image(tmp_path, plain_registry, repository, "genuine")
    cosign.sign(ci_key, by_digest(signed_ref, signed_digest), plain_registry)
    layout = Layout(tmp_path / "evil")
    layout.image(
        "v2", [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", proxy_wasm_module("evil"))]))]
    )
    skopeo_push(layout.root, "v2", plain_registry, f"{repository}:v2")
    evil_ref = f"{plain_registry.host}/{repository}:v2"
    evil_digest = skopeo_manifest_digest(plain_registry, evil_ref)
    host = plain_registry.host
    run(
        "skopeo",
        "copy",
        "--quiet",
        *plain_registry.skopeo_args("src-"),
        *plain_registry.skopeo_args("dest-"),
        f"docker://{host}/{repository}:sha256-{signed_digest[7:]}.sig",
        f"docker://{host}/{repository}:sha256-{evil_digest[7:]}.sig",
    )
    trusted = trust_folder(tmp_path, ci_key)
    resolution = await resolve(cache, plain_registry, trusted, evil_ref)
    assert resolution.state is ResolutionState.FAILED
    key = load_trusted_keys(trusted)[0]
    assert (
        f"signed by key0.pub (sha256:{key.fingerprint}), but for image {signed_digest}, "
        "not this one"
    ) in resolution.message
    assert f"image {evil_digest} has no valid signature" in resolution.message


async def test_moving_the_tag_after_signing_refuses_the_image_it_now_names(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("moved")
    reference, signed_digest = push_image(tmp_path, plain_registry, repository, "before")
    cosign.sign(ci_key, by_digest(reference, signed_digest), plain_registry)
    trusted = trust_folder(tmp_path, ci_key)
    before = await resolve(cache, plain_registry, trusted, reference)
    assert before.state is ResolutionState.READY, before.message
    _, moved_digest = push_image(tmp_path, plain_registry, repository, "after")
    assert moved_digest != signed_digest
    after = await resolve(cache, plain_registry, trusted, reference)
    assert after.state is ResolutionState.FAILED
    assert f"image {moved_digest} has no cosign signature" in after.message


async def test_a_re_pushed_manifest_of_the_same_module_needs_its_own_signature(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("repushed")
    reference, oci_digest = push_image(tmp_path, plain_registry, repository, "same module")
    cosign.sign(ci_key, by_digest(reference, oci_digest), plain_registry)
    # The same layout again, converted to a Docker schema 2 manifest: same module bytes,
    # another manifest digest.
    _, docker_digest = push_image(
        tmp_path / "again", plain_registry, repository, "same module", "--format", "v2s2"
    )
    assert docker_digest != oci_digest
    trusted = trust_folder(tmp_path, ci_key)
    refused = await resolve(cache, plain_registry, trusted, reference)
    assert refused.state is ResolutionState.FAILED
    assert f"image {docker_digest} has no cosign signature" in refused.message
    cosign.sign(ci_key, by_digest(reference, docker_digest), plain_registry)
    accepted = await resolve(cache, plain_registry, trusted, reference)
    assert accepted.state is ResolutionState.READY, accepted.message
    assert accepted.module is not None
    assert accepted.module.image_digest == docker_digest


async def test_a_signature_stored_as_an_oci_referrer_is_found_through_the_referrers_tag(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("referrers")
    reference, digest = push_image(tmp_path, plain_registry, repository, "referrers")
    cosign.sign(ci_key, by_digest(reference, digest), plain_registry, referrers=True)
    present = tags(plain_registry, repository)
    # distribution 2.8 has no referrers API, so cosign wrote the fallback index tag.
    assert f"sha256-{digest[7:]}" in present
    assert f"sha256-{digest[7:]}.sig" not in present
    resolution = await resolve(cache, plain_registry, trust_folder(tmp_path, ci_key), reference)
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert resolution.module.signer is not None


async def test_an_ed25519_key_imported_into_cosign_signs_images_meshext_verifies(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign
) -> None:
    key = imported_ed25519_key(cosign, tmp_path)
    reference, digest = push_image(tmp_path, plain_registry, unique("ed25519"), "ed25519")
    cosign.sign(key, by_digest(reference, digest), plain_registry)
    trusted = trust_folder(tmp_path, key)
    assert load_trusted_keys(trusted)[0].algorithm == "ed25519"
    resolution = await resolve(cache, plain_registry, trusted, reference)
    assert resolution.state is ResolutionState.READY, resolution.message


async def test_warn_mode_delivers_an_unsigned_image_without_a_signer(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, ci_key: KeyPair
) -> None:
    reference, _ = push_image(tmp_path, plain_registry, unique("warn"), "warn")
    resolution = await resolve(
        cache, plain_registry, trust_folder(tmp_path, ci_key), reference, SignatureMode.WARN
    )
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert resolution.module.signer is None


async def test_a_signed_image_in_a_tls_registry_verifies(
    tmp_path: Path, cache: ModuleCache, tls_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    reference, digest = push_image(tmp_path, tls_registry, unique("tls"), "tls")
    trusted = trust_folder(tmp_path, ci_key)
    refused = await resolve(cache, tls_registry, trusted, reference)
    assert refused.state is ResolutionState.FAILED
    cosign.sign(ci_key, by_digest(reference, digest), tls_registry)
    accepted = await resolve(cache, tls_registry, trusted, reference)
    assert accepted.state is ResolutionState.READY, accepted.message


async def test_a_file_module_needs_a_detached_signature_by_a_trusted_key(
    tmp_path: Path,
    cache: ModuleCache,
    plain_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    rogue_key: KeyPair,
) -> None:
    module = tmp_path / "filter.wasm"
    module.write_bytes(proxy_wasm_module("file module"))
    trusted = trust_folder(tmp_path, ci_key)
    missing = await resolve(cache, plain_registry, trusted, f"file:{module}")
    assert missing.state is ResolutionState.FAILED
    assert f"has no detached signature {module}.sig" in missing.message
    cosign.sign_blob(rogue_key, module, Path(f"{module}.sig"))
    wrong = await resolve(cache, plain_registry, trusted, f"file:{module}")
    assert wrong.state is ResolutionState.FAILED
    assert "detached signature filter.wasm.sig is signed by no trusted key" in wrong.message
    cosign.sign_blob(ci_key, module, Path(f"{module}.sig"))
    signed = await resolve(cache, plain_registry, trusted, f"file:{module}")
    assert signed.state is ResolutionState.READY, signed.message
    assert signed.module is not None
    assert signed.module.signer is not None
    assert signed.module.sha256 == hashlib.sha256(module.read_bytes()).hexdigest()


def test_image_inspect_shows_the_verified_signer_and_refuses_unsigned_images(
    tmp_path: Path, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("inspect")
    reference, digest = push_image(tmp_path, plain_registry, repository, "inspect")
    trusted = trust_folder(tmp_path, ci_key)
    common = [
        "--insecure-registry",
        "127.0.0.1",
        "--cache",
        str(tmp_path / "cache"),
        "--trusted-keys",
        str(trusted),
        "--quiet",
    ]
    refused = CliRunner().invoke(image_cli, ["inspect", reference, *common])
    assert refused.exit_code == 1
    assert f"image {digest} has no cosign signature" in refused.output
    cosign.sign(ci_key, by_digest(reference, digest), plain_registry)
    shown = CliRunner().invoke(image_cli, ["inspect", reference, *common])
    assert shown.exit_code == 0, shown.output
    key = load_trusted_keys(trusted)[0]
    assert f"signer: key0.pub (sha256:{key.fingerprint}), cosign signature" in shown.output


async def test_an_oci_layout_holding_the_signature_tag_verifies_and_one_without_is_refused(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("layout")
    reference, digest = push_image(tmp_path, plain_registry, repository, "layout")
    cosign.sign(ci_key, by_digest(reference, digest), plain_registry)
    copied = tmp_path / "copied"
    signature_tag = f"sha256-{digest[7:]}.sig"
    for tag in ("v1", signature_tag):
        run(
            "skopeo",
            "copy",
            "--quiet",
            "--preserve-digests",
            *plain_registry.skopeo_args("src-"),
            f"docker://{plain_registry.host}/{repository}:{tag}",
            f"oci:{copied}:{tag}",
        )
    trusted = trust_folder(tmp_path, ci_key)
    signed = await resolve(cache, plain_registry, trusted, f"oci-layout:{copied}:v1")
    assert signed.state is ResolutionState.READY, signed.message
    assert signed.module is not None
    assert signed.module.image_digest == digest
    assert signed.module.signer is not None
    bare = tmp_path / "bare"
    run(
        "skopeo",
        "copy",
        "--quiet",
        "--preserve-digests",
        *plain_registry.skopeo_args("src-"),
        f"docker://{plain_registry.host}/{repository}:v1",
        f"oci:{bare}:v1",
    )
    refused = await resolve(cache, plain_registry, trusted, f"oci-layout:{bare}:v1")
    assert refused.state is ResolutionState.FAILED
    assert f"image {digest} has no cosign signature" in refused.message


def push_signature_manifest(
    tmp_path: Path, registry: Registry, repository: str, digest: str, payload: bytes
) -> None:
    """A hand-made cosign signature manifest for ``digest`` with one payload layer."""
    layout = Layout(tmp_path / "hostile-signature")
    layer = layout.blob(payload, SIMPLE_SIGNING)
    layer["annotations"] = {SIGNATURE_ANNOTATION: "AAAA"}
    media_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": layout.blob(b"{}", "application/vnd.oci.image.config.v1+json"),
        "layers": [layer],
    }
    descriptor = layout.blob(json.dumps(manifest).encode(), media_type)
    tag = f"sha256-{digest[7:]}.sig"
    layout.tag(tag, descriptor)
    skopeo_push(layout.root, tag, registry, f"{repository}:{tag}", "--preserve-digests")


@pytest.mark.parametrize("mode", [SignatureMode.ENFORCE, SignatureMode.WARN])
async def test_an_oversized_signature_payload_is_a_reason_not_a_crash(
    tmp_path: Path,
    cache: ModuleCache,
    plain_registry: Registry,
    ci_key: KeyPair,
    mode: SignatureMode,
) -> None:
    repository = unique("hostile-sig")
    reference, digest = push_image(tmp_path, plain_registry, repository, "hostile")
    push_signature_manifest(tmp_path, plain_registry, repository, digest, b"x" * (65 * 1024))
    resolution = await resolve(
        cache, plain_registry, trust_folder(tmp_path, ci_key), reference, mode
    )
    if mode is SignatureMode.ENFORCE:
        assert resolution.state is ResolutionState.FAILED
        assert f"image {digest} has no valid signature by a trusted key" in resolution.message
        assert f"tag sha256-{digest[7:]}.sig: blob" in resolution.message
        assert "over the limit of 65536 bytes" in resolution.message
    else:
        assert resolution.state is ResolutionState.READY, resolution.message
        assert resolution.module is not None
        assert resolution.module.signer is None


async def test_signatures_of_a_verified_digest_are_fetched_once_per_process(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("once")
    reference, digest = push_image(tmp_path, plain_registry, repository, "once")
    pinned = by_digest(reference, digest)
    cosign.sign(ci_key, pinned, plain_registry)
    counting = CountingTransport(httpx.AsyncHTTPTransport())
    policy = SignaturePolicy(
        SignatureMode.ENFORCE, load_trusted_keys(trust_folder(tmp_path, ci_key))
    )
    image_resolver = resolver(cache, plain_registry, policy, transport=counting)
    try:
        first = await image_resolver.resolve(extension(pinned))
        assert first.state is ResolutionState.READY, first.message
        # the referrers API was asked (distribution 2.8 answers 404)
        assert counting.counts[("GET", f"/v2/{repository}/referrers/{digest}")] == 1
        after_first = counting.registry_requests
        second = await image_resolver.resolve(extension(pinned))
        assert second.state is ResolutionState.READY, second.message
        assert second.module is not None
        assert second.module.signer is not None
        assert counting.registry_requests == after_first
    finally:
        await image_resolver.aclose()


async def test_the_layers_of_an_unsigned_image_are_never_downloaded_under_enforce(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, ci_key: KeyPair
) -> None:
    reference, digest = push_image(tmp_path, plain_registry, unique("untouched"), "untouched")
    counting = CountingTransport(httpx.AsyncHTTPTransport())
    policy = SignaturePolicy(
        SignatureMode.ENFORCE, load_trusted_keys(trust_folder(tmp_path, ci_key))
    )
    image_resolver = resolver(cache, plain_registry, policy, transport=counting)
    try:
        resolution = await image_resolver.resolve(extension(reference))
    finally:
        await image_resolver.aclose()
    assert resolution.state is ResolutionState.FAILED
    assert f"image {digest} has no cosign signature" in resolution.message
    assert counting.blob_downloads == 0
    assert cache_is_clean(cache)


async def test_a_namespace_key_counts_for_that_namespaces_extensions_only(
    tmp_path: Path,
    cache: ModuleCache,
    plain_registry: Registry,
    cosign: Cosign,
    ci_key: KeyPair,
    rogue_key: KeyPair,
) -> None:
    reference, digest = push_image(tmp_path, plain_registry, unique("team"), "team")
    cosign.sign(rogue_key, by_digest(reference, digest), plain_registry)
    trusted = trust_folder(tmp_path, ci_key)
    (trusted / "team-a").mkdir()
    shutil.copy(rogue_key.public, trusted / "team-a" / "team.pub")
    policy = signature_policy(trusted, None)
    image_resolver = resolver(cache, plain_registry, policy)
    try:
        own = await image_resolver.resolve(extension(reference, namespace="team-a"))
        other = await image_resolver.resolve(extension(reference, namespace="team-b"))
    finally:
        await image_resolver.aclose()
    assert own.state is ResolutionState.READY, own.message
    assert own.module is not None
    assert own.module.signer is not None
    assert own.module.signer.startswith("team-a/team.pub (sha256:")
    assert other.state is ResolutionState.FAILED
    assert f"image {digest} has no valid signature by a trusted key" in other.message
    assert "signed by no trusted key" in other.message


async def test_signatures_in_a_private_registry_are_read_with_the_extensions_pull_secret(
    tmp_path: Path,
    cache: ModuleCache,
    basic_registry: Registry,
    secrets_folder: Path,
    cosign: Cosign,
    ci_key: KeyPair,
) -> None:
    reference, digest = push_image(tmp_path, basic_registry, unique("private"), "private")
    cosign.sign(ci_key, by_digest(reference, digest), basic_registry)
    assert basic_registry.username is not None
    assert basic_registry.password is not None
    write_pull_secret(
        secrets_folder,
        "team-a",
        "regcred",
        dockerconfigjson(basic_registry.host, basic_registry.username, basic_registry.password),
    )
    policy = signature_policy(trust_folder(tmp_path, ci_key), None)
    image_resolver = resolver(cache, basic_registry, policy, secrets=secrets_folder)
    try:
        resolution = await image_resolver.resolve(
            extension(reference, namespace="team-a", secrets=("regcred",))
        )
    finally:
        await image_resolver.aclose()
    assert resolution.state is ResolutionState.READY, resolution.message
    assert resolution.module is not None
    assert resolution.module.signer is not None


def test_describe_shows_the_signer_and_leaves_out_an_unsigned_image(
    tmp_path: Path, plain_registry: Registry, cosign: Cosign, ci_key: KeyPair
) -> None:
    repository = unique("describe")
    signed_ref, signed_digest = push_image(tmp_path, plain_registry, repository, "described")
    cosign.sign(ci_key, by_digest(signed_ref, signed_digest), plain_registry)
    unsigned_ref, unsigned_digest = push_image(
        tmp_path / "unsigned", plain_registry, unique("describe"), "not described"
    )
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(CONTROL_PLANE.format(enabled="true", members="bookinfo"))
    documents = [
        {
            "apiVersion": "maistra.io/v1",
            "kind": "ServiceMeshExtension",
            "metadata": {"name": name, "namespace": "bookinfo"},
            "spec": {"image": image, "phase": "PostAuthZ"},
        }
        for name, image in (("signed", signed_ref), ("unsigned", unsigned_ref))
    ]
    (config / "ext.yaml").write_text("\n---\n".join(json.dumps(d) for d in documents))
    trusted = trust_folder(tmp_path, ci_key)
    result = CliRunner().invoke(
        describe,
        [
            str(config), "-n", "bookinfo", "-o", "json",
            "--cache-dir", str(tmp_path / "cache"),
            "--insecure-registry", "127.0.0.1",
            "--trusted-keys", str(trusted),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    [applied] = plan["extensions"]
    assert applied["name"] == "signed"
    assert applied["imageDigest"] == signed_digest
    key = load_trusted_keys(trusted)[0]
    assert applied["signer"] == f"key0.pub (sha256:{key.fingerprint}), cosign signature"
    [skipped] = plan["skipped"]
    assert skipped["name"] == "unsigned"
    assert f"image {unsigned_digest} has no cosign signature" in skipped["detail"]
