"""xDS resource types: their type URLs, how a subscription to each works, the push order.

Two families of resource types behave differently on the wire:

* **Complete** types (listeners, clusters): a state-of-the-world response holds every
  resource the client subscribed to, and a resource missing from it is deleted. An
  empty subscription is the legacy wildcard ("everything for this node").
* **Per-name** types (routes, endpoints, secrets, extension configs): the client names
  what it wants; a response may carry any subset, and a missing resource is left
  alone. meshext sends these one resource per response, so that an ACK or NACK names
  exactly one resource (for extension configs: exactly one extension).

:data:`PUSH_ORDER` is the order in which pending changes of several types go out:
clusters before the endpoints and listeners that use them, extension configs before
(or with) the listeners whose filters reference them, routes last.

:class:`Node` is the typed view of the ``envoy.config.core.v3.Node`` a proxy sends.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from google.protobuf import json_format

TYPE_PREFIX: Final = "type.googleapis.com/"

LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
EXTENSION_CONFIG: Final = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

#: Types whose state-of-the-world responses are complete (absence means deletion) and
#: for which an empty subscription is the legacy wildcard.
COMPLETE_TYPES: Final = frozenset({LISTENER, CLUSTER})

#: Types subscribed to by name, sent one resource per response.
PER_NAME_TYPES: Final = frozenset({ROUTE, ENDPOINT, SECRET, EXTENSION_CONFIG})

#: Every type this package knows how to name and version.
KNOWN_TYPES: Final = COMPLETE_TYPES | PER_NAME_TYPES

#: Order in which changes of several types are sent.
PUSH_ORDER: Final = (CLUSTER, ENDPOINT, SECRET, EXTENSION_CONFIG, LISTENER, ROUTE)

#: The explicit wildcard resource name.
WILDCARD: Final = "*"

_NAME_FIELD: Final = {
    LISTENER: "name",
    CLUSTER: "name",
    ROUTE: "name",
    ENDPOINT: "cluster_name",
    SECRET: "name",
    EXTENSION_CONFIG: "name",
}


def is_complete(type_url: str) -> bool:
    """Whether state-of-the-world responses of ``type_url`` must hold every resource."""
    return type_url in COMPLETE_TYPES


def push_rank(type_url: str) -> tuple[int, str]:
    """Sort key putting type URLs in :data:`PUSH_ORDER`, unknown types last by name."""
    try:
        return (PUSH_ORDER.index(type_url), "")
    except ValueError:
        return (len(PUSH_ORDER), type_url)


def message_type_url(message: Any) -> str:
    """The type URL of a protobuf message instance."""
    return TYPE_PREFIX + str(message.DESCRIPTOR.full_name)


def resource_name(type_url: str, message: Any) -> str:
    """The xDS name of ``message`` as a resource of ``type_url``.

    Endpoints are named by ``cluster_name``; every other known type by ``name``.
    """
    return str(getattr(message, _NAME_FIELD.get(type_url, "name")))


@dataclass(frozen=True, slots=True)
class Node:
    """What a proxy says about itself when it opens a stream.

    ``metadata`` is the node's ``metadata`` Struct as plain Python values (Istio-style
    proxies put ``NAMESPACE``, ``LABELS`` and the like there).
    """

    id: str
    cluster: str = ""
    metadata: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    user_agent: str = ""
    locality: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_proto(cls, node: Any) -> Node:
        """Convert an ``envoy.config.core.v3.Node`` message."""
        version = node.user_agent_version if node.HasField("user_agent_version") else ""
        build = node.user_agent_build_version
        if not version and node.HasField("user_agent_build_version"):
            version = ".".join(
                str(part)
                for part in (
                    build.version.major_number,
                    build.version.minor_number,
                    build.version.patch,
                )
            )
        agent = " ".join(part for part in (node.user_agent_name, version) if part)
        locality = {
            key: value
            for key, value in (
                ("region", node.locality.region),
                ("zone", node.locality.zone),
                ("sub_zone", node.locality.sub_zone),
            )
            if value
        }
        return cls(
            id=node.id,
            cluster=sys.intern(node.cluster),
            metadata=_shared_metadata(node.metadata),
            user_agent=sys.intern(agent),
            locality=MappingProxyType(locality) if locality else _NO_LOCALITY,
        )


_NO_LOCALITY: Final[Mapping[str, str]] = MappingProxyType({})

_METADATA_KEPT: Final = 1024
_metadata_seen: dict[bytes, Mapping[str, object]] = {}


def _shared_metadata(struct: Any) -> Mapping[str, object]:
    """The metadata ``struct`` as plain values, one read-only object for every node that
    sent the same bytes.

    The replicas of a workload send identical metadata (namespace, labels, workload
    name, ports); sharing one converted copy instead of one per stream saves about
    1 KiB per connected proxy, and the lookup by the serialized Struct is cheaper than
    the conversion. The most recent :data:`_METADATA_KEPT` distinct values are kept
    (a few MiB at most when every proxy sends metadata of its own).
    """
    key = struct.SerializeToString(deterministic=True)
    known = _metadata_seen.get(key)
    if known is None:
        known = MappingProxyType(struct_to_python(struct))
        if len(_metadata_seen) >= _METADATA_KEPT:
            del _metadata_seen[next(iter(_metadata_seen))]
        _metadata_seen[key] = known
    return known


def struct_to_python(struct: Any) -> dict[str, object]:
    """A ``google.protobuf.Struct`` as plain Python values, as ``json_format.MessageToDict``
    gives it (numbers are floats, an unset value is ``None``).

    Written out because ``MessageToDict`` goes through descriptors field by field and
    costs tens of microseconds for a sidecar's node metadata, once per stream. A
    number JSON cannot hold (infinity, NaN) is left to ``MessageToDict``, which raises
    ``ValueError``.
    """
    try:
        return {key: _value(value) for key, value in struct.fields.items()}
    except _NotJson:
        return dict(json_format.MessageToDict(struct))


class _NotJson(Exception):
    pass


def _value(value: Any) -> object:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "number_value":
        number = float(value.number_value)
        if not math.isfinite(number):
            raise _NotJson
        return number
    if kind == "bool_value":
        return bool(value.bool_value)
    if kind == "struct_value":
        return {key: _value(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None
