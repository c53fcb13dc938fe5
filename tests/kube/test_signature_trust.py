"""Trusted keys read from the ConfigMaps the controller caches (no API server needed:
the informer's cache is filled by hand)."""

from __future__ import annotations

from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshext.api.controlplane import ServiceMeshControlPlane, ServiceMeshMemberRoll
from meshext.images.trust import SIGNATURES_OFF, SignatureMode
from meshext.kube.client import KubeClient
from meshext.kube.resources import ObjectKey
from meshext.kube.signature_trust import TRUSTED_KEYS_LABEL, ClusterTrust
from meshext.mesh.topology import Mesh, build_topology

CONTROL_PLANE = "istio-system"
TEAM = "team-a"


def pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def config_map(namespace: str, name: str, version: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": version,
            "labels": {TRUSTED_KEYS_LABEL: "true"},
        },
        **fields,
    }


def the_mesh(mode: str | None) -> Mesh:
    wasm: dict[str, Any] = {"enabled": True}
    if mode is not None:
        wasm["signaturePolicy"] = mode
    plane = ServiceMeshControlPlane.model_validate(
        {
            "metadata": {"name": "basic", "namespace": CONTROL_PLANE},
            "spec": {"techPreview": {"wasmExtensions": wasm}},
        }
    )
    roll = ServiceMeshMemberRoll.model_validate(
        {"metadata": {"name": "default", "namespace": CONTROL_PLANE}, "spec": {"members": [TEAM]}}
    )
    mesh = build_topology([plane], [roll]).mesh_of(TEAM)
    assert mesh is not None
    return mesh


def cluster_trust(*objects: dict[str, Any]) -> ClusterTrust:
    # The client is never used: nothing is listed or watched in these tests.
    trust = ClusterTrust(cast(KubeClient, object()), SIGNATURES_OFF)
    for obj in objects:
        key = ObjectKey(obj["metadata"]["namespace"], obj["metadata"]["name"])
        trust.config_maps.objects[key] = obj
    return trust


def test_the_control_plane_field_and_its_config_maps_make_the_mesh_policy() -> None:
    trust = cluster_trust(config_map(CONTROL_PLANE, "keys", "1", data={"ci.pub": pem()}))
    scope = trust.trust_for(TEAM, the_mesh("enforce"))
    assert scope.mode is SignatureMode.ENFORCE
    assert [k.name for k in scope.keys] == [f"ConfigMap {CONTROL_PLANE}/keys:ci.pub"]
    assert scope.decided_by == f"ServiceMeshControlPlane {CONTROL_PLANE}/basic"


def test_a_member_config_map_adds_keys_for_that_member_only() -> None:
    trust = cluster_trust(
        config_map(CONTROL_PLANE, "keys", "1", data={"ci.pub": pem()}),
        config_map(TEAM, "keys", "2", data={"team.pub": pem()}),
        config_map("team-b", "keys", "3", data={"other.pub": pem()}),
    )
    mesh = the_mesh("enforce")
    assert [k.name for k in trust.trust_for(TEAM, mesh).keys] == [
        f"ConfigMap {CONTROL_PLANE}/keys:ci.pub",
        f"ConfigMap {TEAM}/keys:team.pub",
    ]
    assert [k.name for k in trust.trust_for(CONTROL_PLANE, mesh).keys] == [
        f"ConfigMap {CONTROL_PLANE}/keys:ci.pub"
    ]


def test_binary_data_is_named_as_not_read() -> None:
    trust = cluster_trust(
        config_map(TEAM, "keys", "1", data={"team.pub": pem()}, binaryData={"k.der": "AAAA"})
    )
    scope = trust.trust_for(TEAM, the_mesh("warn"))
    assert len(scope.keys) == 1
    assert scope.problems == (
        f"ConfigMap {TEAM}/keys: binaryData (k.der) is not read; put PEM keys in data",
    )


def test_each_version_of_a_config_map_is_parsed_once() -> None:
    trust = cluster_trust(config_map(TEAM, "keys", "1", data={"team.pub": pem()}))
    first = trust.keys_in(TEAM)
    assert trust.keys_in(TEAM)[0] is first[0]
    trust.config_maps.objects[ObjectKey(TEAM, "keys")] = config_map(
        TEAM, "keys", "2", data={"team.pub": pem()}
    )
    assert trust.keys_in(TEAM)[0] is not first[0]
