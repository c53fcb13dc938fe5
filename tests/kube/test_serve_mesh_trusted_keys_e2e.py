"""``meshext serve --kubeconfig`` judges images as the controller does: by the
``signaturePolicy`` of each mesh and the keys published in labelled ConfigMaps.

serve runs in this process (wired by :func:`meshext.server.app.running_from_cluster`,
as the command wires it) with the operator's defaults (no ``--trusted-keys``, policy
off), against the real kube-apiserver; images are signed with real cosign in a
loopback registry, and a real Envoy sidecar shows what is delivered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshext.cli.status import status as status_command
from meshext.server.app import running_from_cluster
from tests.envoy.support import build_examples
from tests.images.cosign import Cosign
from tests.images.registry import Registry
from tests.kube.mesh_keys import (
    REFUSED,
    fingerprint,
    key_pair,
    ready,
    refused,
    settled,
    signature_policy,
    signed_image,
    trusted_keys,
)
from tests.kube.support import INSECURE, Cluster, Mesh, extension
from tests.kube_harness import KubeApiServer
from tests.server.mesh import Mesh as Sidecars
from tests.server.mesh import mesh_of, serve_options

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin"}


@pytest.fixture
def mesh_members() -> int:
    return 2


@asynccontextmanager
async def serving(api: KubeApiServer, workdir: Path) -> AsyncIterator[Sidecars]:
    """serve from the cluster of ``api``, with sidecars to start against it."""
    options = replace(serve_options(workdir), config=None, registry=INSECURE)
    async with (
        running_from_cluster(options, api.kubeconfig_path, watch_timeout=30) as running,
        mesh_of(running, workdir, workdir) as sidecars,
    ):
        yield sidecars


async def shown_status(sidecars: Sidecars, name: str) -> dict[str, Any]:
    """What ``meshext status -o json`` says of extension ``name``."""
    admin = sidecars.running.admin_url
    shown = await asyncio.to_thread(
        CliRunner().invoke, status_command, ["--admin", admin, "-o", "json"]
    )
    assert shown.exit_code == 0, shown.output
    (found,) = [e for e in json.loads(shown.output)["extensions"] if e["name"] == name]
    result: dict[str, Any] = found["status"]
    return result


async def test_a_mesh_key_admits_a_signed_image_into_a_member_sidecar_until_it_is_removed(
    kube_apiserver: KubeApiServer,
    cluster: Cluster,
    mesh: Mesh,
    registry: Registry,
    cosign: Cosign,
    tmp_path: Path,
) -> None:
    team, _ = mesh.members
    key = key_pair(cosign, tmp_path, "mesh")
    other_key = key_pair(cosign, tmp_path, "other")
    header_append = build_examples() / "header-append.wasm"
    image, digest = signed_image(
        cosign, registry, tmp_path, "serve-signed", key, module=header_append
    )
    unsigned, unsigned_digest = signed_image(cosign, registry, tmp_path, "serve-unsigned")
    cluster.apply(
        trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": key.public.read_text()}),
        signature_policy(mesh, "enforce"),
        extension("signed", team, image, config={"value": "signed-by-the-mesh-key"}),
        extension("unsigned", team, unsigned, config={"value": "unsigned"}),
    )
    async with serving(kube_apiserver, tmp_path) as sidecars:
        sidecar = await sidecars.sidecar("httpbin", team, HTTPBIN)
        await sidecars.until(
            sidecar.appended, lambda h: h == ["signed-by-the-mesh-key"], "the signed extension"
        )
        status = await settled(cluster, "signed", team, ready, "verified with the mesh key")
        assert status["deployment"]["containerSha256"] == digest
        assert status["deployment"]["signer"] == (
            f"ConfigMap {mesh.control_plane}/mesh-keys:ci.pub (sha256:{fingerprint(key)}), "
            "cosign signature"
        )
        status = await settled(cluster, "unsigned", team, refused, "refused")
        assert f"image {unsigned_digest} has no cosign signature" in status["deployment"]["message"]
        shown = await shown_status(sidecars, "unsigned")
        assert shown["deployment"]["ready"] is False
        assert REFUSED in shown["deployment"]["message"]
        assert unsigned_digest in shown["deployment"]["message"]

        # The mesh's key replaced in its ConfigMap: the module it alone verified is
        # taken out of the running sidecar, without a restart.
        cluster.apply(
            trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": other_key.public.read_text()})
        )
        status = await settled(cluster, "signed", team, refused, "refused once the key is gone")
        assert "signed by no trusted key" in status["deployment"]["message"]
        assert "containerSha256" not in status["deployment"]
        await sidecars.until(sidecar.appended, lambda h: h == [], "the module taken out")


async def test_a_namespace_key_admits_only_that_namespace_and_the_mesh_mode_rechecks(
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
    image, digest = signed_image(cosign, registry, tmp_path, "serve-team-signed", team_key)
    cluster.apply(
        trusted_keys(mesh.control_plane, "mesh-keys", {"ci.pub": mesh_key.public.read_text()}),
        trusted_keys(team, "team-keys", {"team.pub": team_key.public.read_text()}),
        signature_policy(mesh, "enforce"),
        extension("team", team, image),
        extension("borrowed", other, image),
        extension("mesh-wide", mesh.control_plane, image),
    )
    async with serving(kube_apiserver, tmp_path) as sidecars:
        status = await settled(cluster, "team", team, ready, "verified with the team key")
        assert status["deployment"]["containerSha256"] == digest
        assert status["deployment"]["signer"] == (
            f"ConfigMap {team}/team-keys:team.pub (sha256:{fingerprint(team_key)}), "
            "cosign signature"
        )
        for name, namespace in (("borrowed", other), ("mesh-wide", mesh.control_plane)):
            status = await settled(cluster, name, namespace, refused, "refused")
            assert "signed by no trusted key" in status["deployment"]["message"]
        shown = await shown_status(sidecars, "borrowed")
        assert "signed by no trusted key" in shown["deployment"]["message"]

        # The control plane's field is part of the policy: under warn the refused
        # images are checked again and delivered.
        cluster.apply(signature_policy(mesh, "warn"))
        status = await settled(cluster, "borrowed", other, ready, "delivered under warn")
        assert "signer" not in status["deployment"]
