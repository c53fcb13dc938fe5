"""The Kubernetes resource types meshext reads and writes, and raw-object helpers.

Objects travel as plain JSON dictionaries (``KubeObject``); the typed view of the
resources meshext owns comes from :func:`meshext.api.decode.decode`. The helpers
here read the few metadata fields every layer needs without validating anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from meshext.api import controlplane, extension, wasmplugin

KubeObject = dict[str, Any]
"""One object as the API server serialises it (JSON decoded)."""


class ObjectKey(NamedTuple):
    """Namespace (``""`` for cluster-scoped objects) and name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the API: group, version, plural name, scope."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``plural.group``, as kubectl and RBAC spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(
        self,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The REST path; without ``namespace`` a namespaced type is listed cluster-wide."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base

    def __str__(self) -> str:
        return self.group_resource


SERVICE_MESH_EXTENSION = ResourceType(
    extension.GROUP, "v1", "servicemeshextensions", extension.KIND
)
SERVICE_MESH_EXTENSION_V1ALPHA1 = ResourceType(
    extension.GROUP, "v1alpha1", "servicemeshextensions", extension.KIND
)
SERVICE_MESH_CONTROL_PLANE = ResourceType(
    "maistra.io", "v2", "servicemeshcontrolplanes", controlplane.SMCP_KIND
)
SERVICE_MESH_MEMBER_ROLL = ResourceType(
    "maistra.io", "v1", "servicemeshmemberrolls", controlplane.SMMR_KIND
)
WASM_PLUGIN = ResourceType("extensions.istio.io", "v1alpha1", "wasmplugins", wasmplugin.KIND)
ENVOY_FILTER = ResourceType("networking.istio.io", "v1alpha3", "envoyfilters", "EnvoyFilter")
SECRET = ResourceType("", "v1", "secrets", "Secret")
CONFIG_MAP = ResourceType("", "v1", "configmaps", "ConfigMap")
LEASE = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
CUSTOM_RESOURCE_DEFINITION = ResourceType(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False
)


def metadata(obj: KubeObject) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def object_key(obj: KubeObject) -> ObjectKey:
    meta = metadata(obj)
    return ObjectKey(str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def resource_version(obj: KubeObject) -> str:
    return str(metadata(obj).get("resourceVersion") or "")


def labels_of(obj: KubeObject) -> dict[str, str]:
    value = metadata(obj).get("labels")
    return value if isinstance(value, dict) else {}


def annotations_of(obj: KubeObject) -> dict[str, str]:
    value = metadata(obj).get("annotations")
    return value if isinstance(value, dict) else {}
