"""What a proxy tells meshext about itself: the node metadata keys and their parsing.

A proxy started from ``meshext bootstrap`` sends these keys in the ``metadata`` of the
``envoy.config.core.v3.Node`` of its first xDS request:

==================  ========  ===========================================================
key                 required  value
==================  ========  ===========================================================
``NAMESPACE``       yes       the workload's namespace (a DNS label)
``LABELS``          no        the workload's labels, an object of strings
``WORKLOAD_NAME``   no        the workload's name, shown in status and logs
``PROXY_KIND``      no        ``sidecar`` (default) or ``gateway``
``INBOUND_PORT``    yes       the port the proxy listens on (number or decimal string)
``INBOUND_ADDRESS`` no        the address it listens on, default ``0.0.0.0``
``APP_ADDRESS``     yes       ``host:port`` of the application (sidecar) or backend
                              (gateway) the proxy forwards to; IPv6 as ``[addr]:port``
``MODULE_DELIVERY`` no        ``local`` (module files are readable on the proxy's host)
                              or ``remote`` (fetch them from meshext's module server)
``INBOUND_PORTS``   no        every port the proxy listens on, comma separated, the
                              first being ``INBOUND_PORT``; all forward to the app
``OUTBOUND``        no        outbound listeners, comma separated ``PORT=HOST:PORT``:
                              the app sends to ``127.0.0.1:PORT``, the proxy forwards
                              to the upstream ``HOST:PORT``
==================  ========  ===========================================================

:func:`proxy_from_node` turns a ``Node`` into a :class:`ProxyInfo`, raising
:class:`~meshext.envoy.errors.NodeMetadataError` that names the node and the key when
something is missing or invalid. :func:`node_metadata` builds the same keys for a
bootstrap, so the two stay in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeVar

from google.protobuf import json_format

from meshext.envoy.errors import NodeMetadataError
from meshext.mesh.workload import ProxyKind, Workload

NAMESPACE: Final = "NAMESPACE"
LABELS: Final = "LABELS"
WORKLOAD_NAME: Final = "WORKLOAD_NAME"
PROXY_KIND: Final = "PROXY_KIND"
INBOUND_PORT: Final = "INBOUND_PORT"
INBOUND_ADDRESS: Final = "INBOUND_ADDRESS"
APP_ADDRESS: Final = "APP_ADDRESS"
MODULE_DELIVERY: Final = "MODULE_DELIVERY"
INBOUND_PORTS: Final = "INBOUND_PORTS"
OUTBOUND: Final = "OUTBOUND"

DEFAULT_INBOUND_ADDRESS: Final = "0.0.0.0"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")


class DeliveryMode(StrEnum):
    """How a proxy gets module bytes."""

    LOCAL = "local"
    """Envoy reads the module file from the disk it shares with meshext."""
    REMOTE = "remote"
    """Envoy fetches the module from meshext's module server over HTTP, checking its sha256."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Outbound:
    """An outbound listener: the app sends to loopback ``port``, Envoy forwards to ``upstream``."""

    port: int
    upstream: HostPort

    def __str__(self) -> str:
        return f"{self.port}={self.upstream}"


@dataclass(frozen=True)
class ProxyInfo:
    """A proxy as meshext sees it: who it is, what it fronts, where it listens."""

    node_id: str
    workload: Workload
    inbound_port: int
    app: HostPort
    inbound_address: str = DEFAULT_INBOUND_ADDRESS
    module_delivery: DeliveryMode | None = None
    """The proxy's own choice of module delivery; ``None`` leaves it to meshext."""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Every metadata key the node sent, as plain JSON values."""
    extra_inbound_ports: tuple[int, ...] = ()
    """Ports the proxy listens on besides ``inbound_port``."""
    outbound: tuple[Outbound, ...] = ()

    @property
    def inbound_ports(self) -> tuple[int, ...]:
        return (self.inbound_port, *self.extra_inbound_ports)

    @property
    def kind(self) -> ProxyKind:
        return self.workload.kind

    @property
    def namespace(self) -> str:
        return self.workload.namespace

    @property
    def app_address(self) -> str:
        """``host:port`` of the application the proxy forwards to."""
        return str(self.app)


def parse_host_port(text: str) -> HostPort:
    """``host:port`` or ``[ipv6]:port``; raises ``ValueError`` saying what is wrong."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [address]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"{host!r} is not an IPv6 address") from exc
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address as [address]:port")
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    return HostPort(host, parse_port(port_text))


def parse_port(value: object) -> int:
    """A TCP port from a number or a decimal string; raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not a port number")
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port number between 1 and 65535")
    return value


def proxy_from_node(node: Any) -> ProxyInfo:
    """The proxy described by ``node`` (an ``envoy.config.core.v3.Node``).

    Raises :class:`NodeMetadataError` naming the node and the metadata key when a
    required key is missing or a value is invalid.
    """
    return proxy_from_metadata(str(node.id), json_format.MessageToDict(node.metadata))


_parsed: weakref.WeakValueDictionary[int, ProxyInfo] = weakref.WeakValueDictionary()
"""Read-only metadata, by identity -> the first proxy read from it, while that proxy
lives (it holds the metadata, so the identity is not reused meanwhile)."""


def proxy_from_metadata(node_id: str, metadata: Mapping[str, Any]) -> ProxyInfo:
    """The proxy with id ``node_id`` whose node metadata, as plain JSON values, is ``metadata``.

    The replicas of a workload send the same metadata, which :class:`meshext.xds.types.Node`
    hands over as one read-only mapping: for such a mapping the proxy read last time
    is reused under the new node id, sharing its workload, labels and addresses.
    """
    known = _parsed.get(id(metadata))
    if known is not None and known.metadata is metadata and node_id:
        return dataclasses.replace(known, node_id=node_id)
    proxy = _read_proxy(node_id, metadata)
    if isinstance(metadata, MappingProxyType):
        _parsed[id(metadata)] = proxy
    return proxy


def _read_proxy(node_id: str, metadata: Mapping[str, Any]) -> ProxyInfo:
    if not node_id:
        raise NodeMetadataError("", None, "the node id is empty; every proxy needs a unique id")
    # Not copied: the metadata of a node is shared by the replicas of its workload
    # (see meshext.xds.types.Node) and never changed.
    read = _MetadataReader(node_id, metadata)
    workload = Workload(
        namespace=read.namespace(),
        labels=read.labels(),
        kind=read.choice(PROXY_KIND, ProxyKind, ProxyKind.SIDECAR),
        name=read.text(WORKLOAD_NAME) or "",
    )
    inbound_port = read.port(INBOUND_PORT)
    ports = read.port_list(INBOUND_PORTS)
    if ports and ports[0] != inbound_port:
        raise read.fail(INBOUND_PORTS, f"must start with INBOUND_PORT {inbound_port}")
    outbound = read.outbound(OUTBOUND)
    if outbound and workload.kind is ProxyKind.GATEWAY:
        raise read.fail(OUTBOUND, "a gateway has no outbound listeners")
    clash = {inbound_port, *ports} & {o.port for o in outbound}
    if clash:
        raise read.fail(OUTBOUND, f"port {min(clash)} is also an inbound port")
    return ProxyInfo(
        node_id=node_id,
        workload=workload,
        inbound_port=inbound_port,
        app=read.host_port(APP_ADDRESS),
        inbound_address=read.ip_address(INBOUND_ADDRESS, DEFAULT_INBOUND_ADDRESS),
        module_delivery=read.choice(MODULE_DELIVERY, DeliveryMode, None),
        metadata=read.metadata,
        extra_inbound_ports=ports[1:],
        outbound=outbound,
    )


def parse_outbound(text: str) -> Outbound:
    """``PORT=HOST:PORT``; raises ``ValueError`` saying what is wrong."""
    port, sep, upstream = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not PORT=HOST:PORT")
    return Outbound(parse_port(port), parse_host_port(upstream))


E = TypeVar("E", bound=StrEnum)


class _MetadataReader:
    def __init__(self, node_id: str, metadata: Mapping[str, Any]) -> None:
        self.node_id = node_id
        self.metadata = metadata

    def fail(self, key: str, problem: str) -> NodeMetadataError:
        return NodeMetadataError(self.node_id, key, problem)

    def text(self, key: str) -> str | None:
        value = self.metadata.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {json_type(value)}")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise self.fail(key, "missing; the bootstrap must set it")
        return value

    def namespace(self) -> str:
        namespace = self.required_text(NAMESPACE)
        if len(namespace) > 63 or not _DNS1123_LABEL.match(namespace):
            raise self.fail(NAMESPACE, f"{namespace!r} is not a valid namespace name")
        return namespace

    def labels(self) -> dict[str, str]:
        raw = self.metadata.get(LABELS, {})
        if not isinstance(raw, dict):
            raise self.fail(LABELS, f"expected an object of strings, got {json_type(raw)}")
        labels: dict[str, str] = {}
        for label, value in sorted(raw.items()):
            if not isinstance(value, str):
                raise self.fail(
                    LABELS, f"label {label!r}: expected a string, got {json_type(value)}"
                )
            labels[label] = value
        return labels

    def choice(self, key: str, enum: type[E], default: E | None) -> Any:
        value = self.text(key)
        if value is None:
            return default
        try:
            return enum(value)
        except ValueError:
            valid = ", ".join(member.value for member in enum)
            raise self.fail(key, f"unknown value {value!r}; expected one of {valid}") from None

    def port(self, key: str) -> int:
        if key not in self.metadata:
            raise self.fail(key, "missing; the bootstrap must set it")
        try:
            return parse_port(self.metadata[key])
        except ValueError as exc:
            raise self.fail(key, str(exc)) from exc

    def ip_address(self, key: str, default: str) -> str:
        value = self.text(key) or default
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise self.fail(key, f"{value!r} is not an IP address") from exc
        return value

    def port_list(self, key: str) -> tuple[int, ...]:
        text = self.text(key)
        if text is None:
            return ()
        try:
            ports = tuple(parse_port(p) for p in text.split(","))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from exc
        if len(set(ports)) != len(ports):
            raise self.fail(key, f"{text!r} lists a port twice")
        return ports

    def outbound(self, key: str) -> tuple[Outbound, ...]:
        text = self.text(key)
        if text is None:
            return ()
        try:
            entries = tuple(parse_outbound(item) for item in text.split(","))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from exc
        if len({e.port for e in entries}) != len(entries):
            raise self.fail(key, f"{text!r} lists a port twice")
        return entries

    def host_port(self, key: str) -> HostPort:
        try:
            return parse_host_port(self.required_text(key))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from exc


def node_metadata(
    *,
    namespace: str,
    labels: Mapping[str, str],
    workload_name: str,
    kind: ProxyKind,
    inbound_port: int,
    app: HostPort,
    inbound_address: str = DEFAULT_INBOUND_ADDRESS,
    module_delivery: DeliveryMode | None = None,
    extra_inbound_ports: tuple[int, ...] = (),
    outbound: tuple[Outbound, ...] = (),
) -> dict[str, Any]:
    """The node metadata :func:`proxy_from_node` reads, as plain JSON values."""
    metadata: dict[str, Any] = {
        NAMESPACE: namespace,
        LABELS: dict(sorted(labels.items())),
        WORKLOAD_NAME: workload_name,
        PROXY_KIND: kind.value,
        INBOUND_PORT: str(inbound_port),
        INBOUND_ADDRESS: inbound_address,
        APP_ADDRESS: str(app),
    }
    if module_delivery is not None:
        metadata[MODULE_DELIVERY] = module_delivery.value
    if extra_inbound_ports:
        metadata[INBOUND_PORTS] = ",".join(str(p) for p in (inbound_port, *extra_inbound_ports))
    if outbound:
        metadata[OUTBOUND] = ",".join(str(o) for o in outbound)
    return metadata


def json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return "a string"
