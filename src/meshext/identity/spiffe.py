"""SPIFFE ids of workloads: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.

The same shape Istio uses, so a namespace and a service account are read from a
certificate's URI subject alternative name and never from what a proxy says about
itself. The control plane's own id is that of its service account in its namespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from meshext.identity.errors import IdentityError

SCHEME: Final = "spiffe://"
DEFAULT_TRUST_DOMAIN: Final = "cluster.local"
DEFAULT_SERVICE_ACCOUNT: Final = "default"
CONTROL_PLANE_NAMESPACE: Final = "meshext-system"
CONTROL_PLANE_SERVICE_ACCOUNT: Final = "meshext"

_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
_SEGMENT = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """The identity of one service account of one namespace in a trust domain."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        for field, value in (
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not _SEGMENT.match(value):
                raise IdentityError(f"{field} {value!r} cannot be part of a SPIFFE id")

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


def check_trust_domain(trust_domain: str) -> str:
    if not _TRUST_DOMAIN.match(trust_domain) or len(trust_domain) > 255:
        raise IdentityError(f"trust domain {trust_domain!r} is not a lowercase DNS-like name")
    return trust_domain


def parse_spiffe_id(uri: str) -> SpiffeId:
    """The :class:`SpiffeId` written as ``uri``; :class:`IdentityError` if it is another shape."""
    if not uri.startswith(SCHEME):
        raise IdentityError(f"{uri!r} is not a SPIFFE id")
    trust_domain, _, path = uri[len(SCHEME) :].partition("/")
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        raise IdentityError(f"{uri!r} is not of the form spiffe://<domain>/ns/<ns>/sa/<sa>")
    return SpiffeId(trust_domain, parts[1], parts[3])


def control_plane_id(trust_domain: str) -> SpiffeId:
    return SpiffeId(trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT)
