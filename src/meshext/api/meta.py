"""Object identity and where a resource came from, shared by every kind."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshext.api.kube_values import check_labels

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

DEFAULT_NAMESPACE = "default"

ANNOTATION_PREFIX = "meshext.io/"
KNOWN_ANNOTATIONS = frozenset(
    {
        "meshext.io/root-id",  # the root id of an extension's module
        "meshext.io/placement",  # how an extension is rendered for Istio
        "meshext.io/owner",  # the extension a rendered Istio object belongs to
        "meshext.io/v1alpha1-config",  # a v1alpha1 config text kept byte for byte
    }
)
"""Every ``meshext.io/`` annotation meshext reads; any other is a (misspelt) error."""


@dataclass(frozen=True, order=True)
class ResourceKey:
    """Kind, namespace and name: what a user reads in an error or a status line."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class SourceLocation:
    """Where a document was read from; ``document`` counts from 1 inside a YAML stream."""

    path: str
    document: int = 1

    def __str__(self) -> str:
        return f"{self.path} (document {self.document})"


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata meshext reads; the rest is ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int = Field(default=1, ge=0)
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")

    @field_validator("name")
    @classmethod
    def _name_is_dns_subdomain(cls, value: str) -> str:
        if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
            raise ValueError(
                f"{value!r} is not a valid name: lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _labels_are_valid(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(value)
        return value

    @field_validator("annotations")
    @classmethod
    def _meshext_annotations_are_known(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(
            k for k in value if k.startswith(ANNOTATION_PREFIX) and k not in KNOWN_ANNOTATIONS
        )
        if unknown:
            raise ValueError(
                f"unknown annotation {', '.join(repr(k) for k in unknown)}; meshext reads "
                f"{', '.join(sorted(KNOWN_ANNOTATIONS))}"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace_is_dns_label(cls, value: str) -> str:
        if len(value) > 63 or not _DNS1123_LABEL.match(value):
            raise ValueError(
                f"{value!r} is not a valid namespace: lowercase letters, digits and '-', "
                "at most 63 characters"
            )
        return value
