"""The Kubernetes controller with a signature policy: status carries the signer of a
verified image and the refusal of an unsigned one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from meshext.images.trust import SignatureMode, SignaturePolicy, load_trusted_keys
from tests.images.cosign import Cosign, KeyPair
from tests.images.registry import Registry
from tests.kube.support import (
    INSECURE,
    Cluster,
    Mesh,
    eventually,
    extension,
    push_image,
    running_controller,
    settings,
    status_of,
    wasm_file,
)
from tests.kube_harness import KubeApiServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def mesh_members() -> int:
    return 1


async def test_status_names_the_signer_of_a_signed_image_and_refuses_an_unsigned_one(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
) -> None:
    (namespace,) = mesh.members
    key: KeyPair = cosign.generate_key_pair(tmp_path / "ci-key")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(key.public, trusted / "ci.pub")
    policy = SignaturePolicy(SignatureMode.ENFORCE, load_trusted_keys(trusted))

    signed_image = f"{registry.host}/extensions/signed:v1"
    signed_digest = push_image(wasm_file(tmp_path / "modules", "signed"), signed_image)
    cosign.sign(key, f"{registry.host}/extensions/signed@{signed_digest}", registry)
    unsigned_image = f"{registry.host}/extensions/unsigned:v1"
    unsigned_digest = push_image(wasm_file(tmp_path / "modules", "unsigned"), unsigned_image)
    cluster.apply(
        extension("signed", namespace, signed_image),
        extension("unsigned", namespace, unsigned_image),
    )
    async with running_controller(
        kube_apiserver,
        tmp_path / "cache",
        settings(istio=None),
        registry=INSECURE,
        signatures=policy,
    ):
        signed = await eventually(
            lambda: status_of(cluster, "signed", namespace), "status of the signed image"
        )
        unsigned = await eventually(
            lambda: status_of(cluster, "unsigned", namespace), "status of the unsigned image"
        )
    assert signed["deployment"]["ready"] is True, signed
    assert signed["deployment"]["containerSha256"] == signed_digest
    fingerprint = policy.keys[0].fingerprint
    assert signed["deployment"]["signer"] == f"ci.pub (sha256:{fingerprint}), cosign signature"
    assert unsigned["deployment"]["ready"] is False
    message = unsigned["deployment"]["message"]
    assert "refused by the signature policy" in message
    assert f"image {unsigned_digest} has no cosign signature" in message


async def test_an_always_tag_moved_to_an_unsigned_image_keeps_the_verified_module(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
) -> None:
    (namespace,) = mesh.members
    key = cosign.generate_key_pair(tmp_path / "ci-key")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(key.public, trusted / "ci.pub")
    policy = SignaturePolicy(SignatureMode.ENFORCE, load_trusted_keys(trusted))
    image = f"{registry.host}/extensions/moving:v1"
    signed_digest = push_image(wasm_file(tmp_path / "modules", "before"), image)
    cosign.sign(key, f"{registry.host}/extensions/moving@{signed_digest}", registry)
    cluster.apply(extension("moving", namespace, image, imagePullPolicy="Always"))
    async with running_controller(
        kube_apiserver,
        tmp_path / "cache",
        settings(istio=None, resync_period=1.0),
        registry=INSECURE,
        signatures=policy,
    ):
        await eventually(
            lambda: (
                (status_of(cluster, "moving", namespace) or {}).get("deployment", {}).get("signer")
            ),
            "the signer in status",
        )
        moved_digest = push_image(wasm_file(tmp_path / "modules", "after"), image)

        def refused() -> dict[str, Any] | None:
            status = status_of(cluster, "moving", namespace)
            message = (status or {}).get("deployment", {}).get("message") or ""
            return status if moved_digest in message else None

        status = await eventually(refused, "the refusal of the moved tag in status")
    deployment = status["deployment"]
    assert deployment["ready"] is True
    assert deployment["containerSha256"] == signed_digest
    assert deployment["signer"].startswith("ci.pub (sha256:")
    assert "refused by the signature policy" in deployment["message"]
