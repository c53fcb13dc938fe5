"""CustomResourceDefinitions for the resources meshext serves, generated from its models.

The pydantic models in :mod:`meshext.api` are the one definition of every field; the
CRDs are derived from their JSON schema, so a field added to a model appears in the
CRD without being written twice. Kubernetes accepts only *structural* schemas, a
subset of OpenAPI v3, so the JSON schema is rewritten:

* ``$ref`` to ``$defs`` is inlined (a recursive model is an error: CRDs cannot
  express recursion);
* ``anyOf [X, null]`` (an optional field) becomes ``X``: an absent field is how
  Kubernetes spells "not set", and a ``null`` sent by a client is pruned;
* ``anyOf [integer, string]`` becomes ``x-kubernetes-int-or-string``;
* an object with free-form content (``dict[str, Any]``, or a model that keeps
  unknown fields) gets ``x-kubernetes-preserve-unknown-fields``; a map with typed
  values keeps ``additionalProperties``; ``additionalProperties: false`` is
  dropped (Kubernetes prunes unknown fields, and kubectl's strict field validation
  reports them as errors);
* enums keep their values; ``title`` and ``default`` are dropped (defaults are the
  models' business, applied when meshext decodes an object, and never persisted).

Anything else that cannot be expressed raises :class:`SchemaError` rather than
producing a schema that silently accepts less or more than the model.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from meshext.api import controlplane, extension
from meshext.api.controlplane import ControlPlaneSpec, MemberRollSpec
from meshext.api.extension import ExtensionSpecV1, ExtensionSpecV1Alpha1, ExtensionStatus
from meshext.errors import MeshextError

PART_OF_LABEL = {"app.kubernetes.io/part-of": "meshext"}
DEFAULT_SERVICE_NAMESPACE = "meshext-system"
DEFAULT_SERVICE_NAME = "meshext"
DEFAULT_SERVICE_PORT = 443
CONVERSION_PATH = "/convert"

_PASSTHROUGH_KEYWORDS = (
    "description",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
)
_FORMATS = frozenset({"int32", "int64", "float", "double", "byte", "date", "date-time", "uri"})
_IGNORED_KEYWORDS = frozenset({"title", "default", "examples", "deprecated", "readOnly"})
_SCALAR_TYPES = frozenset({"string", "integer", "number", "boolean"})


class SchemaError(MeshextError):
    """A model uses a JSON-schema construct that a structural CRD schema cannot express."""


# --------------------------------------------------------------------------- schemas


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The Kubernetes structural OpenAPI v3 schema of ``model`` (wire names, camelCase)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: Mapping[str, Any] = raw.pop("$defs", {})
    return _convert(raw, defs, model.__name__, ())


def _convert(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: str, stack: tuple[str, ...]
) -> dict[str, Any]:
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name in stack:
            raise SchemaError(f"{path}: {name} refers to itself; CRD schemas cannot recurse")
        if name not in defs:
            raise SchemaError(f"{path}: unknown reference {node['$ref']!r}")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _convert({**defs[name], **siblings}, defs, path, (*stack, name))
    if "allOf" in node and len(node["allOf"]) == 1:
        siblings = {k: v for k, v in node.items() if k != "allOf"}
        return _convert({**node["allOf"][0], **siblings}, defs, path, stack)
    if "anyOf" in node or "oneOf" in node:
        return _convert_union(node, defs, path, stack)
    unsupported = (
        set(node)
        - _IGNORED_KEYWORDS
        - set(_PASSTHROUGH_KEYWORDS)
        - {
            "type",
            "enum",
            "const",
            "format",
            "properties",
            "required",
            "additionalProperties",
            "items",
        }
    )
    if unsupported:
        raise SchemaError(f"{path}: unsupported JSON-schema keywords {sorted(unsupported)}")
    out: dict[str, Any] = {}
    kind = node.get("type")
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    if "enum" in node:
        values = list(node["enum"])
        kind = kind or _enum_type(values, path)
    if kind is None:
        # No type at all (``Any``): anything goes, and must not be pruned.
        out["x-kubernetes-preserve-unknown-fields"] = True
        _copy_keywords(node, out)
        return out
    if isinstance(kind, list):
        raise SchemaError(f"{path}: a field of several types {kind} is not structural")
    out["type"] = kind
    _copy_keywords(node, out)
    if "enum" in node:
        out["enum"] = list(node["enum"])
    if kind == "object":
        _convert_object(node, defs, path, stack, out)
    elif kind == "array":
        if "prefixItems" in node or "items" not in node:
            raise SchemaError(f"{path}: arrays need one item schema (no fixed-length tuples)")
        out["items"] = _convert(node["items"], defs, f"{path}[]", stack)
    elif kind not in _SCALAR_TYPES:
        raise SchemaError(f"{path}: unsupported type {kind!r}")
    fmt = node.get("format")
    if fmt in _FORMATS:
        out["format"] = fmt
    return out


def _convert_object(
    node: Mapping[str, Any],
    defs: Mapping[str, Any],
    path: str,
    stack: tuple[str, ...],
    out: dict[str, Any],
) -> None:
    properties: Mapping[str, Any] = node.get("properties") or {}
    extra = node.get("additionalProperties")
    if properties:
        out["properties"] = {
            name: _convert(sub, defs, f"{path}.{name}", stack) for name, sub in properties.items()
        }
        required = [r for r in node.get("required") or () if r in properties]
        if required:
            out["required"] = required
    if isinstance(extra, Mapping):
        if properties:
            raise SchemaError(f"{path}: an object cannot have both fields and typed extra keys")
        out["additionalProperties"] = _convert(extra, defs, f"{path}.*", stack)
    elif extra is True or (extra is None and not properties):
        out["x-kubernetes-preserve-unknown-fields"] = True


def _convert_union(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: str, stack: tuple[str, ...]
) -> dict[str, Any]:
    options: Sequence[Mapping[str, Any]] = node.get("anyOf") or node.get("oneOf") or ()
    siblings = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
    present = [o for o in options if o.get("type") != "null"]
    if len(present) == 1:
        return _convert({**present[0], **siblings}, defs, path, stack)
    types = sorted(str(o.get("type")) for o in present)
    if types == ["integer", "string"] and all(set(o) <= {"type"} for o in present):
        out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
        _copy_keywords(siblings, out)
        return out
    raise SchemaError(f"{path}: a union of {types} cannot be expressed in a structural schema")


def _enum_type(values: Sequence[object], path: str) -> str:
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    raise SchemaError(f"{path}: enum values of mixed types {values!r}")


def _copy_keywords(node: Mapping[str, Any], out: dict[str, Any]) -> None:
    for keyword in _PASSTHROUGH_KEYWORDS:
        if keyword in node:
            out[keyword] = node[keyword]


def object_schema(
    spec: Mapping[str, Any] | None,
    status: Mapping[str, Any] | None,
    *,
    spec_required: bool,
    description: str,
) -> dict[str, Any]:
    """The schema of a whole object: the standard fields plus ``spec`` and ``status``."""
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    }
    if spec is not None:
        properties["spec"] = dict(spec)
    if status is not None:
        properties["status"] = dict(status)
    schema: dict[str, Any] = {
        "description": description,
        "type": "object",
        "properties": properties,
    }
    if spec_required and spec is not None:
        schema["required"] = ["spec"]
    return schema


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class ConversionWebhook:
    """Where the API server sends ConversionReviews: a ``url``, or a Service.

    ``ca_bundle`` is the PEM of the CA that signed the webhook's serving certificate;
    without it the API server trusts its system roots only.
    """

    url: str | None = None
    service_namespace: str = DEFAULT_SERVICE_NAMESPACE
    service_name: str = DEFAULT_SERVICE_NAME
    service_port: int = DEFAULT_SERVICE_PORT
    path: str = CONVERSION_PATH
    ca_bundle: bytes | None = None

    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any]
        if self.url is not None:
            config = {"url": self.url}
        else:
            config = {
                "service": {
                    "namespace": self.service_namespace,
                    "name": self.service_name,
                    "path": self.path,
                    "port": self.service_port,
                }
            }
        if self.ca_bundle:
            config["caBundle"] = base64.b64encode(self.ca_bundle).decode("ascii")
        return config


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Version:
    name: str
    spec: type[BaseModel] | None
    status: type[BaseModel] | None = None
    storage: bool = False
    spec_required: bool = False
    status_free_form: bool = False
    columns: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Definition:
    """One CRD: names, scope, and its versions."""

    group: str
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    versions: tuple[Version, ...]
    description: str
    categories: tuple[str, ...] = ("maistra-io",)
    conversion: bool = False
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.plural}.{self.group}"


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_SME_COLUMNS = (
    {"name": "Ready", "type": "boolean", "jsonPath": ".status.deployment.ready"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Priority", "type": "integer", "jsonPath": ".status.priority"},
    _AGE,
    {"name": "Image", "type": "string", "jsonPath": ".spec.image", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.deployment.message", "priority": 1},
)

SERVICE_MESH_EXTENSION = Definition(
    group=extension.GROUP,
    kind=extension.KIND,
    plural="servicemeshextensions",
    singular="servicemeshextension",
    short_names=("sme",),
    description=(
        "A WebAssembly extension for the Envoy proxies of a service mesh: an image holding "
        "the module, where in the HTTP filter chain it runs, and its configuration."
    ),
    versions=(
        Version(
            "v1alpha1",
            ExtensionSpecV1Alpha1,
            ExtensionStatus,
            spec_required=True,
            columns=_SME_COLUMNS,
        ),
        Version(
            "v1",
            ExtensionSpecV1,
            ExtensionStatus,
            storage=True,
            spec_required=True,
            columns=_SME_COLUMNS,
        ),
    ),
    conversion=True,
)

SERVICE_MESH_CONTROL_PLANE = Definition(
    group="maistra.io",
    kind=controlplane.SMCP_KIND,
    plural="servicemeshcontrolplanes",
    singular="servicemeshcontrolplane",
    short_names=("smcp",),
    description=(
        "A service mesh control plane. meshext reads spec.techPreview.wasmExtensions.enabled "
        "and .signaturePolicy; "
        "every other field belongs to other tools and is kept as written."
    ),
    versions=(
        Version(
            "v2",
            ControlPlaneSpec,
            None,
            storage=True,
            status_free_form=True,
            columns=(
                {
                    "name": "Extensions",
                    "type": "boolean",
                    "jsonPath": ".spec.techPreview.wasmExtensions.enabled",
                },
                _AGE,
            ),
        ),
    ),
)

SERVICE_MESH_MEMBER_ROLL = Definition(
    group="maistra.io",
    kind=controlplane.SMMR_KIND,
    plural="servicemeshmemberrolls",
    singular="servicemeshmemberroll",
    short_names=("smmr",),
    description=(
        "The namespaces that belong to the mesh of the control plane in this namespace; "
        "it must be named 'default'."
    ),
    versions=(
        Version(
            "v1",
            MemberRollSpec,
            None,
            storage=True,
            status_free_form=True,
            columns=(
                {"name": "Members", "type": "string", "jsonPath": ".spec.members"},
                _AGE,
            ),
        ),
    ),
)

DEFINITIONS: tuple[Definition, ...] = (
    SERVICE_MESH_EXTENSION,
    SERVICE_MESH_CONTROL_PLANE,
    SERVICE_MESH_MEMBER_ROLL,
)


def custom_resource_definition(
    definition: Definition, webhook: ConversionWebhook | None = None
) -> dict[str, Any]:
    """The CRD manifest of ``definition``; a multi-version CRD converts through ``webhook``
    (default: meshext's Service in ``meshext-system``)."""
    versions = []
    for version in definition.versions:
        spec = structural_schema(version.spec) if version.spec is not None else None
        status: dict[str, Any] | None = None
        if version.status is not None:
            status = structural_schema(version.status)
        elif version.status_free_form:
            status = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        entry: dict[str, Any] = {
            "name": version.name,
            "served": True,
            "storage": version.storage,
            "schema": {
                "openAPIV3Schema": object_schema(
                    spec,
                    status,
                    spec_required=version.spec_required,
                    description=definition.description,
                )
            },
        }
        if status is not None:
            entry["subresources"] = {"status": {}}
        if version.columns:
            entry["additionalPrinterColumns"] = [dict(c) for c in version.columns]
        versions.append(entry)
    spec_out: dict[str, Any] = {
        "group": definition.group,
        "names": {
            "kind": definition.kind,
            "listKind": f"{definition.kind}List",
            "plural": definition.plural,
            "singular": definition.singular,
            "shortNames": list(definition.short_names),
            "categories": list(definition.categories),
        },
        "scope": "Namespaced",
        "versions": versions,
    }
    if definition.conversion:
        spec_out["conversion"] = {
            "strategy": "Webhook",
            "webhook": {
                "conversionReviewVersions": ["v1"],
                "clientConfig": (webhook or ConversionWebhook()).client_config(),
            },
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": definition.name,
            "labels": {**PART_OF_LABEL, **definition.extra_labels},
        },
        "spec": spec_out,
    }


def custom_resource_definitions(webhook: ConversionWebhook | None = None) -> list[dict[str, Any]]:
    """Every CRD meshext serves, in a stable order."""
    return [custom_resource_definition(d, webhook) for d in DEFINITIONS]
