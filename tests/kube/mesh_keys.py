"""Trusted keys published in the cluster and images signed with them, for the tests of
the signature policy per mesh and namespace (controller and ``serve --kubeconfig``):
ConfigMaps of keys, a control plane's ``signaturePolicy``, cosign-signed images in a
loopback registry, and waiting for the status an extension settles on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshext.images.trust import parse_public_keys
from meshext.kube.signature_trust import TRUSTED_KEYS_LABEL
from tests.images.cosign import Cosign, KeyPair
from tests.images.registry import Registry
from tests.kube.support import (
    Cluster,
    Mesh,
    control_plane,
    eventually,
    push_image,
    status_of,
    wasm_file,
)

REFUSED = "refused by the signature policy"
Status = dict[str, Any]


def key_pair(cosign: Cosign, tmp_path: Path, name: str) -> KeyPair:
    return cosign.generate_key_pair(tmp_path / "keys" / name)


def fingerprint(key: KeyPair) -> str:
    (parsed,) = parse_public_keys(key.public.read_bytes(), "key")
    return parsed.fingerprint


def trusted_keys(namespace: str, name: str, entries: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {TRUSTED_KEYS_LABEL: "true"},
        },
        "data": entries,
    }


def signature_policy(mesh: Mesh, mode: str) -> dict[str, Any]:
    plane = control_plane(mesh.control_plane)
    plane["spec"]["techPreview"]["wasmExtensions"]["signaturePolicy"] = mode
    return plane


def signed_image(
    cosign: Cosign,
    registry: Registry,
    tmp_path: Path,
    name: str,
    *keys: KeyPair,
    module: Path | None = None,
) -> tuple[str, str]:
    """A freshly built image ``name`` signed by ``keys`` (none: unsigned), and its digest.

    The image holds ``module``, by default a module of its own (so its digest is too).
    """
    image = f"{registry.host}/extensions/{name}:v1"
    digest = push_image(module or wasm_file(tmp_path / "modules", name), image)
    for key in keys:
        cosign.sign(key, f"{registry.host}/extensions/{name}@{digest}", registry)
    return image, digest


async def settled(
    cluster: Cluster, name: str, namespace: str, wanted: Callable[[Status], bool], what: str
) -> Status:
    def probe() -> Status | None:
        status = status_of(cluster, name, namespace)
        return status if status is not None and wanted(status) else None

    return await eventually(probe, f"{namespace}/{name}: {what}")


def ready(status: Status) -> bool:
    return status["deployment"]["ready"] is True


def refused(status: Status) -> bool:
    return status["deployment"]["ready"] is False and REFUSED in (
        status["deployment"].get("message") or ""
    )
