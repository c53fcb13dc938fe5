"""Trusted keys published in the cluster: per mesh, and per member namespace.

A mesh turns signature checks on with one field of its ServiceMeshControlPlane,
``spec.techPreview.wasmExtensions.signaturePolicy: enforce`` (or ``warn``, ``off``).
Keys are PEM public keys in ConfigMaps labelled ``meshext.io/trusted-keys: "true"``:

* in the control-plane namespace, they are the **mesh's** keys, trusted for every
  extension of the mesh;
* in a member namespace, they are trusted **in addition** for that namespace's own
  extensions only.

Every entry of such a ConfigMap's ``data`` holds one or more ``PUBLIC KEY`` blocks
and is reported as ``ConfigMap <namespace>/<name>:<entry>``. ConfigMaps of
namespaces outside a mesh count for nothing. How the parts combine with the
operator's ``--trusted-keys`` / ``--signature-policy`` is
:func:`meshext.images.trust_scopes.scoped_trust`.

One :class:`~meshext.kube.watching.Informer` keeps the labelled ConfigMaps (and only
those: the label selector is sent to the API server); each version is parsed once,
and what cannot be read is logged once, naming the object and the entry.
"""

from __future__ import annotations

import logging

from meshext.images.scoped_verification import ScopedSignatureVerifier
from meshext.images.trust import SignaturePolicy
from meshext.images.trust_scopes import (
    KeySet,
    MeshSignatures,
    ScopedTrust,
    parse_key_entries,
    scoped_trust,
)
from meshext.kube.client import KubeClient
from meshext.kube.resources import (
    CONFIG_MAP,
    KubeObject,
    ObjectKey,
    resource_version,
)
from meshext.kube.watching import Informer
from meshext.mesh.topology import Mesh

log = logging.getLogger(__name__)

TRUSTED_KEYS_LABEL = "meshext.io/trusted-keys"
TRUSTED_KEYS_SELECTOR = f"{TRUSTED_KEYS_LABEL}=true"


class ClusterTrust:
    """The operator's policy plus the keys and modes published in the cluster."""

    def __init__(
        self, client: KubeClient, operator: SignaturePolicy, *, watch_timeout: int = 300
    ) -> None:
        self.operator = operator
        self.verifier = ScopedSignatureVerifier(operator)
        """The verifier to give the image resolver."""
        self.config_maps = Informer(
            client,
            CONFIG_MAP,
            label_selector=TRUSTED_KEYS_SELECTOR,
            on_change=self._on_config_map,
            watch_timeout=watch_timeout,
        )
        self._parsed: dict[ObjectKey, tuple[str, KeySet]] = {}

    def __repr__(self) -> str:
        return f"<ClusterTrust {self.operator.mode.value}: {self.config_maps!r}>"

    def trust_for(self, namespace: str, mesh: Mesh) -> ScopedTrust:
        """The policy for extensions in ``namespace``, a namespace of ``mesh``."""
        plane = mesh.control_plane.metadata
        settings = MeshSignatures(
            origin=f"ServiceMeshControlPlane {plane.namespace}/{plane.name}",
            mode=mesh.control_plane.signature_policy,
            keys=_merged(self.keys_in(mesh.namespace)),
            keys_hint=(
                f"label a ConfigMap in namespace {mesh.namespace!r} with "
                f"{TRUSTED_KEYS_SELECTOR} holding PEM public keys"
            ),
        )
        published = self.keys_in(namespace) if namespace != mesh.namespace else []
        return scoped_trust(
            self.operator,
            namespace,
            mesh_namespace=mesh.namespace,
            mesh=settings,
            namespace_keys=published,
        )

    def keys_in(self, namespace: str) -> list[KeySet]:
        """The keys of every labelled ConfigMap in ``namespace``, by name."""
        return [
            self._keys_of(key, obj)
            for key, obj in sorted(self.config_maps.objects.items())
            if key.namespace == namespace
        ]

    def _keys_of(self, key: ObjectKey, obj: KubeObject) -> KeySet:
        version = resource_version(obj)
        known = self._parsed.get(key)
        if known is not None and known[0] == version:
            return known[1]
        keys = _parse(key, obj)
        self._parsed[key] = (version, keys)
        return keys

    def _on_config_map(
        self, key: ObjectKey, old: KubeObject | None, new: KubeObject | None
    ) -> None:
        if new is None:
            self._parsed.pop(key, None)
            log.info("trusted keys of ConfigMap %s removed", key)
            return
        keys = self._keys_of(key, new)
        for problem in keys.problems:
            log.warning("trusted keys: %s (the other keys still count)", problem)
        log.info(
            "trusted keys of ConfigMap %s: %s",
            key,
            ", ".join(str(k) for k in keys.keys) or "none",
        )


def _parse(key: ObjectKey, obj: KubeObject) -> KeySet:
    where = f"ConfigMap {key}"
    data = obj.get("data")
    entries = data if isinstance(data, dict) else {}
    parsed = parse_key_entries(entries, where)
    binary = obj.get("binaryData")
    if isinstance(binary, dict) and binary:
        names = ", ".join(sorted(str(name) for name in binary))
        extra = f"{where}: binaryData ({names}) is not read; put PEM keys in data"
        return KeySet(parsed.keys, (*parsed.problems, extra))
    return parsed


def _merged(sets: list[KeySet]) -> KeySet:
    return KeySet(
        tuple(k for s in sets for k in s.keys),
        tuple(p for s in sets for p in s.problems),
    )
