"""The bootstrap an Envoy proxy starts from, as a plain dict (the CLI writes YAML or JSON).

It names the proxy (node id, cluster, the metadata of :mod:`meshext.envoy.node`), puts
the admin interface on loopback, and takes listeners and clusters dynamically:

- from meshext's ADS server (:class:`AdsServer`) over one gRPC stream, state of the
  world or delta (``delta=True``); extension configs then come over the same stream
  (their filters say ``config_source: {ads: {}}``). With ``tls`` the stream is mutual
  TLS, the proxy's certificate and trust bundle read from its credentials folder
  through file-based SDS (:mod:`meshext.envoy.tls`);
- or from files Envoy watches (:class:`~meshext.envoy.files.ConfigDirectory`), to run
  a proxy without a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from meshext.envoy import names
from meshext.envoy.errors import EnvoyConfigError, NodeMetadataError
from meshext.envoy.files import ConfigDirectory
from meshext.envoy.node import (
    DEFAULT_INBOUND_ADDRESS,
    DeliveryMode,
    HostPort,
    Outbound,
    node_metadata,
    parse_host_port,
    parse_outbound,
    parse_port,
    proxy_from_node,
)
from meshext.envoy.tls import CredentialFiles, upstream_tls_socket
from meshext.mesh.workload import ProxyKind

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class BootstrapError(EnvoyConfigError):
    """An argument of a bootstrap is invalid; the message names it."""


@dataclass(frozen=True)
class XdsTls:
    """Mutual TLS to the ADS server: the proxy's credentials and the server's SPIFFE id."""

    credentials: CredentialFiles
    server_identity: str


@dataclass(frozen=True)
class AdsServer:
    """meshext's ADS server, reached over gRPC: mutual TLS with ``tls``, else cleartext."""

    address: HostPort
    delta: bool = False
    """Use the incremental (delta) protocol instead of state of the world."""
    tls: XdsTls | None = None


def sidecar_bootstrap(
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    listen: int | str,
    app: str,
    xds: AdsServer | ConfigDirectory,
    admin_port: int,
    admin_address: str = "127.0.0.1",
    kind: ProxyKind = ProxyKind.SIDECAR,
    node_id: str | None = None,
    module_delivery: DeliveryMode | None = None,
    extra_ports: Sequence[int | str] = (),
    outbound: Sequence[str] = (),
) -> dict[str, Any]:
    """The bootstrap of proxy ``name`` in ``namespace`` (a sidecar unless ``kind`` says gateway).

    ``listen`` is the inbound port, or ``address:port`` to bind one address (default
    ``0.0.0.0``); ``app`` is the ``host:port`` it forwards to. ``extra_ports`` are more
    inbound ports on the same address, forwarding to the same ``app``; ``outbound``
    entries ``PORT=HOST:PORT`` are outbound listeners (sidecars only). ``node_id``
    defaults to ``<kind>~<name>.<namespace>~<port>``, unique per proxy on one host.
    """
    if not name:
        raise BootstrapError("name: a proxy needs a workload name")
    inbound_address, inbound_port = _listen(listen)
    try:
        app_address = parse_host_port(app)
    except ValueError as exc:
        raise BootstrapError(f"app: {exc}") from exc
    try:
        parse_port(admin_port)
    except ValueError as exc:
        raise BootstrapError(f"admin port: {exc}") from exc
    more_ports, outbound_listeners = _traffic(
        kind, inbound_address, inbound_port, extra_ports, outbound
    )
    metadata = node_metadata(
        namespace=namespace,
        labels=labels,
        workload_name=name,
        kind=kind,
        inbound_port=inbound_port,
        app=app_address,
        inbound_address=inbound_address,
        module_delivery=module_delivery,
        extra_inbound_ports=more_ports,
        outbound=outbound_listeners,
    )
    bootstrap: dict[str, Any] = {
        "node": {
            "id": node_id or f"{kind.value}~{name}.{namespace}~{inbound_port}",
            "cluster": f"{name}.{namespace}",
            "metadata": metadata,
        },
        "admin": {"address": _socket_address(admin_address, admin_port)},
    }
    _check_node(bootstrap["node"])
    if isinstance(xds, ConfigDirectory):
        bootstrap["dynamic_resources"] = {
            "lds_config": _path_source(xds.listeners_path),
            "cds_config": _path_source(xds.clusters_path),
        }
        return bootstrap
    ads = {"ads": {}, "resource_api_version": "V3"}
    bootstrap["dynamic_resources"] = {
        "ads_config": {
            "api_type": "DELTA_GRPC" if xds.delta else "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": names.XDS_CLUSTER}}],
            "set_node_on_first_message_only": True,
        },
        "lds_config": ads,
        "cds_config": dict(ads),
    }
    bootstrap["static_resources"] = {"clusters": [_secured(_xds_cluster(xds.address), xds)]}
    return bootstrap


def gateway_bootstrap(**kwargs: Any) -> dict[str, Any]:
    """:func:`sidecar_bootstrap` for a gateway proxy."""
    return sidecar_bootstrap(kind=ProxyKind.GATEWAY, **kwargs)


def _traffic(
    kind: ProxyKind,
    inbound_address: str,
    inbound_port: int,
    extra_ports: Sequence[int | str],
    outbound: Sequence[str],
) -> tuple[tuple[int, ...], tuple[Outbound, ...]]:
    """The extra inbound ports (all on the first one's address) and the outbound listeners."""
    ports = []
    for listen in extra_ports:
        address, port = _listen(listen)
        if address != inbound_address and not (isinstance(listen, int) or listen.strip().isdigit()):
            raise BootstrapError(
                f"listen: {listen!r}: every inbound port binds the first one's address "
                f"{inbound_address}"
            )
        ports.append(port)
    if len({inbound_port, *ports}) != len(ports) + 1:
        raise BootstrapError("listen: a port is given twice")
    if outbound and kind is ProxyKind.GATEWAY:
        raise BootstrapError("outbound: a gateway has no outbound listeners")
    try:
        entries = tuple(parse_outbound(text) for text in outbound)
    except ValueError as exc:
        raise BootstrapError(f"outbound: {exc}") from exc
    taken = {inbound_port, *ports}
    for entry in entries:
        if entry.port in taken:
            raise BootstrapError(f"outbound: port {entry.port} is already in use")
        taken.add(entry.port)
    return tuple(ports), entries


def _check_node(node: dict[str, Any]) -> None:
    """Reads the node back as the server will, so a bad argument fails here, not later."""
    try:
        proxy_from_node(json_format.ParseDict(node, base_pb2.Node()))
    except NodeMetadataError as exc:
        raise BootstrapError(f"{exc.key or 'node id'}: {exc.problem}") from exc


def _listen(listen: int | str) -> tuple[str, int]:
    try:
        if isinstance(listen, int) or listen.strip().isdigit():
            return DEFAULT_INBOUND_ADDRESS, parse_port(listen)
        address = parse_host_port(listen)
    except ValueError as exc:
        raise BootstrapError(f"listen: {exc}") from exc
    if not address.is_ip:
        raise BootstrapError(f"listen: {address.host!r} is not an IP address")
    return address.host, address.port


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _path_source(path: str) -> dict[str, Any]:
    return {"path_config_source": {"path": path}, "resource_api_version": "V3"}


def _secured(cluster: dict[str, Any], xds: AdsServer) -> dict[str, Any]:
    if xds.tls is not None:
        cluster["transport_socket"] = upstream_tls_socket(
            server_identity=xds.tls.server_identity,
            sni=xds.address.host,
            files=xds.tls.credentials,
        )
    return cluster


def _xds_cluster(address: HostPort) -> dict[str, Any]:
    return {
        "name": names.XDS_CLUSTER,
        "type": "STATIC" if address.is_ip else "STRICT_DNS",
        "connect_timeout": "5s",
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": names.XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(address.host, address.port)}}
                    ]
                }
            ],
        },
    }
