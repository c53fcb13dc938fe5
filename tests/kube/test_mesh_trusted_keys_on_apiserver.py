"""Signature policy per mesh and trusted keys per namespace, published in the cluster.

The controller runs with the operator's defaults (no ``--trusted-keys``, policy off);
the mesh turns checks on with ``spec.techPreview.wasmExtensions.signaturePolicy`` and
publishes keys in labelled ConfigMaps. Images are signed with real cosign in a
registry on loopback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.images.cosign import Cosign
from tests.images.registry import Registry
from tests.kube.mesh_keys import (
    fingerprint,
    key_pair,
    ready,
    refused,
    settled,
    signature_policy,
    signed_image,
    trusted_keys,
)
from tests.kube.support import (
    INSECURE,
    Cluster,
    Mesh,
    control_plane,
    extension,
    running_controller,
    settings,
    unique,
)
from tests.kube_harness import KubeApiServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def mesh_members() -> int:
    return 2


async def test_one_field_on_the_control_plane_and_a_mesh_key_protect_every_member_namespace(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
) -> None:
    first, second = mesh.members
    key = key_pair(cosign, tmp_path, "mesh")
    image, digest = signed_image(cosign, registry, tmp_path, "mesh-signed", key)
    unsigned, unsigned_digest = signed_image(cosign, registry, tmp_path, "mesh-unsigned")
    cluster.apply(
        trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": key.public.read_text()}),
        signature_policy(mesh, "enforce"),
        extension("signed", first, image),
        extension("signed", second, image),
        extension("signed", mesh.control_plane, image),
        extension("unsigned", first, unsigned),
    )
    signer = f"ConfigMap {mesh.control_plane}/mesh-keys:ci.pub (sha256:{fingerprint(key)}), cosign signature"
    async with running_controller(
        kube_apiserver, tmp_path / "cache", settings(istio=None), registry=INSECURE
    ):
        for namespace in (first, second, mesh.control_plane):
            status = await settled(cluster, "signed", namespace, ready, "verified")
            assert status["deployment"]["containerSha256"] == digest
            assert status["deployment"]["signer"] == signer
        status = await settled(cluster, "unsigned", first, refused, "refused")
        assert unsigned_digest in status["deployment"]["message"]

        # warn: checked and reported, delivered anyway.
        cluster.apply(signature_policy(mesh, "warn"))
        status = await settled(cluster, "unsigned", first, ready, "delivered under warn")
        assert "signer" not in status["deployment"]


async def test_a_namespace_key_trusts_only_the_extensions_of_that_namespace_in_the_mesh(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
) -> None:
    team, other = mesh.members
    mesh_key = key_pair(cosign, tmp_path, "mesh")
    team_key = key_pair(cosign, tmp_path, "team")
    outsider_key = key_pair(cosign, tmp_path, "outsider")
    image, digest = signed_image(cosign, registry, tmp_path, "team-signed", team_key)
    foreign, _ = signed_image(cosign, registry, tmp_path, "outsider-signed", outsider_key)
    outsider = cluster.namespace(unique("outsider"))
    cluster.apply(
        trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": mesh_key.public.read_text()}),
        trusted_keys(team, "team-keys", {"team.pub": team_key.public.read_text()}),
        trusted_keys(outsider, "keys", {"outsider.pub": outsider_key.public.read_text()}),
        signature_policy(mesh, "enforce"),
        extension("team", team, image),
        extension("borrowed", other, image),
        extension("mesh-wide", mesh.control_plane, image),
        extension("foreign", other, foreign),
    )
    async with running_controller(
        kube_apiserver, tmp_path / "cache", settings(istio=None), registry=INSECURE
    ):
        status = await settled(cluster, "team", team, ready, "verified with the team key")
        assert status["deployment"]["containerSha256"] == digest
        assert status["deployment"]["signer"] == (
            f"ConfigMap {team}/team-keys:team.pub (sha256:{fingerprint(team_key)}), cosign signature"
        )
        refusals = (("borrowed", other), ("mesh-wide", mesh.control_plane), ("foreign", other))
        for name, namespace in refusals:
            status = await settled(cluster, name, namespace, refused, "refused")
            assert "signed by no trusted key" in status["deployment"]["message"]


async def test_a_namespace_cannot_weaken_the_mode_of_its_mesh(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
) -> None:
    team, _ = mesh.members
    mesh_key = key_pair(cosign, tmp_path, "mesh")
    unsigned, _ = signed_image(cosign, registry, tmp_path, "weakening")
    cluster.apply(
        trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": mesh_key.public.read_text()}),
        trusted_keys(team, "team-policy", {"signaturePolicy": "off"}),
        signature_policy(mesh, "enforce"),
        extension("unsigned", team, unsigned),
    )
    async with running_controller(
        kube_apiserver, tmp_path / "cache", settings(istio=None), registry=INSECURE
    ):
        status = await settled(cluster, "unsigned", team, refused, "refused")
        assert (
            f"ConfigMap {team}/team-policy:signaturePolicy: no PEM"
            in (status["deployment"]["message"])
        )
        # A control plane of its own makes the namespace claimed twice: in no mesh.
        rogue = control_plane(team)
        rogue["spec"]["techPreview"]["wasmExtensions"]["signaturePolicy"] = "off"
        cluster.apply(rogue)
        try:
            status = await settled(
                cluster,
                "unsigned",
                team,
                lambda s: not ready(s) and not refused(s),
                "left out of every mesh",
            )
            assert "not listed in any ServiceMeshMemberRoll" in status["deployment"]["message"]
        finally:
            cluster.delete("servicemeshcontrolplanes.maistra.io", "basic", team)


async def test_a_key_rotated_in_the_config_map_is_used_without_a_restart(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
) -> None:
    team, _ = mesh.members
    old_key = key_pair(cosign, tmp_path, "old")
    new_key = key_pair(cosign, tmp_path, "new")
    image, digest = signed_image(cosign, registry, tmp_path, "rotated", new_key)
    cluster.apply(
        trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": old_key.public.read_text()}),
        signature_policy(mesh, "enforce"),
        extension("rotated", team, image),
    )
    async with running_controller(
        kube_apiserver, tmp_path / "cache", settings(istio=None), registry=INSECURE
    ):
        await settled(cluster, "rotated", team, refused, "refused under the old key")
        cluster.apply(
            trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": new_key.public.read_text()})
        )
        status = await settled(cluster, "rotated", team, ready, "verified with the new key")
        assert status["deployment"]["containerSha256"] == digest
        assert fingerprint(new_key) in status["deployment"]["signer"]
        # Taking the key away again takes the module out: a removed key no longer counts.
        cluster.apply(
            trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": old_key.public.read_text()})
        )
        status = await settled(cluster, "rotated", team, refused, "refused once revoked")
        assert "containerSha256" not in status["deployment"]


async def test_a_bad_key_in_a_config_map_is_reported_and_the_other_keys_still_count(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    team, _ = mesh.members
    mesh_key = key_pair(cosign, tmp_path, "mesh")
    team_key = key_pair(cosign, tmp_path, "team")
    image, _ = signed_image(cosign, registry, tmp_path, "good-key", team_key)
    unsigned, _ = signed_image(cosign, registry, tmp_path, "bad-key")
    broken = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    cluster.apply(
        trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": mesh_key.public.read_text()}),
        trusted_keys(
            team, "team-keys", {"broken.pub": broken, "team.pub": team_key.public.read_text()}
        ),
        signature_policy(mesh, "enforce"),
        extension("signed", team, image),
        extension("unsigned", team, unsigned),
    )
    caplog.set_level(logging.WARNING, logger="meshext.kube.signature_trust")
    async with running_controller(
        kube_apiserver, tmp_path / "cache", settings(istio=None), registry=INSECURE
    ):
        status = await settled(cluster, "signed", team, ready, "verified with the good key")
        assert status["deployment"]["signer"].startswith(f"ConfigMap {team}/team-keys:team.pub")
        status = await settled(cluster, "unsigned", team, refused, "refused")
        problem = f"ConfigMap {team}/team-keys:broken.pub: not a readable public key"
        assert problem in status["deployment"]["message"]
    assert any(problem in record.getMessage() for record in caplog.records)
