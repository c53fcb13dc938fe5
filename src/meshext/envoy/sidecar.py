"""The pure generator: a proxy and its workload's plan → Envoy listeners, clusters, ECDS.

:func:`proxy_resources` does no I/O and reads no clock: the same proxy, plan and
delivery settings always give byte-identical resources (see
:meth:`EnvoyResources.serialized`).

What a proxy gets
-----------------

- A **sidecar** gets one inbound listener per port it serves (``INBOUND_PORT`` and
  ``INBOUND_PORTS``), ``meshext.inbound.<port>`` on ``INBOUND_ADDRESS``, whose HTTP
  connection manager routes every request to the cluster ``meshext.app`` (the
  application at ``APP_ADDRESS``); and one outbound listener per ``OUTBOUND`` entry,
  ``meshext.outbound.<port>`` on ``127.0.0.1:<port>``, routing to the cluster
  ``meshext.outbound.<port>`` (the upstream the application calls).
- A **gateway** gets one listener per port, ``meshext.gateway.<port>``, routing to its
  backend at ``APP_ADDRESS``.

Each listener carries the extensions whose traffic match selects it
(:mod:`meshext.mesh.traffic`): a ServiceMeshExtension runs on inbound and gateway
listeners, a WasmPlugin where its ``match`` says (all listeners by default). NETWORK
extensions are network filters ahead of the connection manager, in phase order.
- ``meshext.modules``, the module server's cluster, when any module is fetched remotely.

The HTTP filter chain
---------------------

The chain holds the mesh's own filters as anchors (:data:`MESH_FILTERS`), real Envoy
filters with neutral configurations that Envoy runs as no-ops:

1. ``envoy.filters.http.jwt_authn`` with no providers and no rules: verifies nothing,
   rejects nothing, strips nothing (counts ``jwt_authn.allowed``);
2. ``envoy.filters.http.rbac`` with no ``rules``: no policy is enforced;
3. ``envoy.filters.http.router``.

Extensions are placed among them by :func:`meshext.mesh.placement.place_phases`:
PreAuthN before jwt_authn; PostAuthN and PreAuthZ before rbac; PostAuthZ right after
rbac; PreStats and PostStats before the router (upstream Envoy has no stats filter to
anchor on: its HTTP stats come from the connection manager itself).

Each extension is its own filter whose config comes from ECDS (``config_discovery``,
type ``Wasm`` only; no default config, except with remote delivery where Envoy
rejects a module until fetched: then the stand-in of :mod:`meshext.envoy.standin`):
the filter's name is the ECDS resource name
(:func:`~meshext.envoy.names.extension_config_name`). Changing an extension's config
changes only its ECDS resource, which Envoy applies in place: the listener does not
drain and other extensions are untouched. Adding or removing an extension changes
the chain, hence the listener.

Shapes
------

A listener is made from its :class:`ListenerShape` only, and a cluster from its
:class:`ClusterShape` only: what the proxy, the plan and the delivery settings
contribute is reduced to a shape first (a listener's spec, and for each extension
filter the name of its ECDS resource, with the stand-in's plugin name and failure
policy when it has one). Equal shapes therefore give equal resources, and a caller
may keep what it made for a shape and give it to the next proxy or the next change
of that shape (``proxy_resources``'s ``listeners`` and ``clusters``). A change of an
extension's config or module changes no shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_authn_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import duration_pb2

from meshext.api.phase import Phase
from meshext.envoy import names
from meshext.envoy.errors import GenerationError
from meshext.envoy.files import ConfigDirectory
from meshext.envoy.node import DeliveryMode, HostPort, ProxyInfo
from meshext.envoy.resources import (
    CLUSTER_TYPE_URL,
    EXTENSION_CONFIG_TYPE_URL,
    LISTENER_TYPE_URL,
    EnvoyResources,
    pack,
)
from meshext.envoy.standin import closes, stand_in_filter
from meshext.envoy.tls import upstream_tls_socket_proto
from meshext.envoy.wasm import (
    NETWORK_WASM_FILTER_TYPE_URL,
    WASM_FILTER_TYPE_URL,
    ModuleDelivery,
    ModuleServerTls,
    extension_config,
)
from meshext.mesh.placement import JWT_AUTHN, RBAC, ROUTER, place_phases
from meshext.mesh.planner import PlannedExtension, WorkloadPlan
from meshext.mesh.traffic import Direction, FilterLayer, Side
from meshext.mesh.workload import ProxyKind

OUTBOUND_ADDRESS: Final = "127.0.0.1"

ExtensionConfigFactory = Callable[[PlannedExtension, DeliveryMode], Any]
"""Makes the ECDS resource of one extension; the default is :func:`extension_config`."""

ListenerFactory = Callable[["ListenerShape"], Any]
"""Makes the listener of a shape; the default is :func:`make_listener`."""

ClusterFactory = Callable[["ClusterShape"], Any]
"""Makes the cluster of a shape; the default is :func:`make_cluster`."""

__all__ = [
    "CLUSTER_TYPE_URL",
    "EXTENSION_CONFIG_TYPE_URL",
    "LISTENER_TYPE_URL",
    "MESH_FILTERS",
    "ClusterShape",
    "EnvoyResources",
    "FilterRef",
    "ListenerShape",
    "filter_chain",
    "listener_shape",
    "make_cluster",
    "make_listener",
    "proxy_resources",
]

MESH_FILTERS: Final = (JWT_AUTHN, RBAC, ROUTER)
"""The mesh's own HTTP filters, in chain order: the anchors extensions are placed among."""

CONNECT_TIMEOUT: Final = duration_pb2.Duration(seconds=5)

_ANCHOR_CONFIGS: Final = {
    JWT_AUTHN: jwt_authn_pb2.JwtAuthentication(),
    RBAC: rbac_pb2.RBAC(),
    ROUTER: router_pb2.Router(),
}


def proxy_resources(
    proxy: ProxyInfo,
    plan: WorkloadPlan,
    delivery: ModuleDelivery,
    *,
    config_source: ConfigDirectory | None = None,
    extension_configs: ExtensionConfigFactory | None = None,
    listeners: ListenerFactory | None = None,
    clusters: ClusterFactory | None = None,
) -> EnvoyResources:
    """The listeners, clusters and extension configs of ``proxy``.

    ``plan`` must be the plan of the proxy's own workload (checked: a plan for another
    namespace or label set would cross the tenant boundary). Extension filters fetch
    their config over ADS, or from files under ``config_source`` when given (a proxy
    run without an xDS server). ``extension_configs`` replaces the function making each
    extension's ECDS resource (which depends on the extension, its module and the
    delivery mode only, so a caller may share them between proxies); ``listeners`` and
    ``clusters`` replace :func:`make_listener` and :func:`make_cluster` (a caller may
    keep what they made per shape, see the module's documentation). Raises
    :class:`GenerationError` when an applied
    extension has no resolved module or remote delivery has no module server.
    """
    if plan.workload != proxy.workload:
        raise GenerationError(
            f"proxy {proxy.node_id!r}: the plan is for workload {_describe(plan.workload)}, "
            f"the proxy runs {_describe(proxy.workload)}"
        )
    mode = delivery.mode_for(proxy) if plan.applied else delivery.mode
    make_config = extension_configs or (lambda p, m: extension_config(p, m, delivery))
    stand_in = delivery.stands_in(mode) and bool(plan.applied)
    shapes = [listener_shape(spec, plan, config_source, stand_in) for spec in listener_specs(proxy)]
    # An extension whose traffic match selects none of the listeners gets no ECDS resource.
    used = {
        ref.config_name
        for shape in shapes
        for ref in (*shape.network, *shape.http)
        if not isinstance(ref, str)
    }
    configs = {
        name: make_config(p, mode)
        for p in plan.applied
        if (name := names.extension_config_name(p.key)) in used
    }
    listener_of = listeners or make_listener
    cluster_of = clusters or make_cluster
    clusters_of = [ClusterShape(names.APP_CLUSTER, proxy.app)]
    clusters_of.extend(
        ClusterShape(names.outbound_cluster_name(o.port), o.upstream) for o in proxy.outbound
    )
    if plan.applied and mode is DeliveryMode.REMOTE and delivery.server is not None:
        clusters_of.append(ClusterShape(names.MODULES_CLUSTER, delivery.server, delivery.tls))
    return EnvoyResources(
        listeners=tuple(listener_of(shape) for shape in shapes),
        clusters=tuple(cluster_of(c) for c in sorted(clusters_of, key=lambda c: c.name)),
        extension_configs=dict(sorted(configs.items())),
    )


@dataclass(frozen=True)
class ListenerSpec:
    """One listener of a proxy: where it binds, where it forwards, what traffic it carries."""

    name: str
    stat_prefix: str
    address: str
    port: int
    cluster: str
    side: Side

    @property
    def traffic_direction(self) -> Any:
        return _DIRECTIONS[self.side.direction]


_DIRECTIONS: Final = {
    Direction.INBOUND: base_pb2.INBOUND,
    Direction.OUTBOUND: base_pb2.OUTBOUND,
    Direction.GATEWAY: base_pb2.UNSPECIFIED,
}


def listener_specs(proxy: ProxyInfo) -> tuple[ListenerSpec, ...]:
    """The proxy's listeners: one per inbound (or gateway) port, one per outbound upstream.

    Outbound listeners bind loopback only: they exist for the application beside the proxy.
    An outbound listener's traffic is matched on the upstream's port (the destination).
    """
    gateway = proxy.kind is ProxyKind.GATEWAY
    direction = Direction.GATEWAY if gateway else Direction.INBOUND
    listener_name = names.gateway_listener_name if gateway else names.inbound_listener_name
    stat_prefix = names.gateway_stat_prefix if gateway else names.inbound_stat_prefix
    inbound = tuple(
        ListenerSpec(
            listener_name(port),
            stat_prefix(port),
            proxy.inbound_address,
            port,
            names.APP_CLUSTER,
            Side(direction, port),
        )
        for port in proxy.inbound_ports
    )
    if gateway:
        return inbound
    outbound = tuple(
        ListenerSpec(
            names.outbound_listener_name(o.port),
            names.outbound_stat_prefix(o.port),
            OUTBOUND_ADDRESS,
            o.port,
            names.outbound_cluster_name(o.port),
            Side(Direction.OUTBOUND, o.upstream.port),
        )
        for o in proxy.outbound
    )
    return inbound + outbound


def filter_chain(plan: WorkloadPlan, side: Side | None = None) -> list[str | PlannedExtension]:
    """The HTTP filter chain on ``side`` (every HTTP extension when ``None``): anchor names
    and extensions, in order."""
    return place_phases(MESH_FILTERS, _by_phase(plan, side, FilterLayer.HTTP))


def network_chain(plan: WorkloadPlan, side: Side | None = None) -> list[PlannedExtension]:
    """The network (L4) wasm filters on ``side``, in phase order, all before the
    connection manager."""
    return [p for p in plan.applied if p.extension.layer is FilterLayer.NETWORK and _on(p, side)]


def filter_names(plan: WorkloadPlan, side: Side | None = None) -> list[str]:
    """The HTTP filter chain as Envoy filter names (extensions by their ECDS names)."""
    return [
        item if isinstance(item, str) else names.extension_config_name(item.key)
        for item in filter_chain(plan, side)
    ]


def _on(planned: PlannedExtension, side: Side | None) -> bool:
    return side is None or planned.extension.traffic.selects(side)


def _by_phase(
    plan: WorkloadPlan, side: Side | None, layer: FilterLayer
) -> dict[Phase, list[PlannedExtension]]:
    grouped: dict[Phase, list[PlannedExtension]] = {}
    for planned in plan.applied:
        if planned.extension.layer is layer and _on(planned, side):
            grouped.setdefault(planned.phase, []).append(planned)
    return grouped


@dataclass(frozen=True, slots=True)
class FilterRef:
    """An extension's filter as a listener holds it: the name of its ECDS resource and,
    when its modules are fetched remotely, the stand-in it runs until the module is
    fetched (the extension's plugin name and whether it fails closed)."""

    config_name: str
    stand_in_plugin: str | None = None
    stand_in_closed: bool = False


@dataclass(frozen=True, slots=True)
class ListenerShape:
    """Everything a listener is made of (see the module's documentation, *Shapes*)."""

    spec: ListenerSpec
    network: tuple[FilterRef, ...]
    """The network extensions' filters, in chain order (before the connection manager)."""
    http: tuple[str | FilterRef, ...]
    """The HTTP filter chain: the mesh's own filters by name, and extensions' filters."""
    config_source: ConfigDirectory | None
    """Where extension filters read their config from; ``None``: over ADS."""


@dataclass(frozen=True, slots=True)
class ClusterShape:
    """Everything a cluster is made of: its name, its one endpoint, and the TLS it
    speaks to it (``None``: plaintext)."""

    name: str
    target: HostPort
    tls: ModuleServerTls | None = None


def listener_shape(
    spec: ListenerSpec, plan: WorkloadPlan, config_source: ConfigDirectory | None, stand_in: bool
) -> ListenerShape:
    """The shape of the listener of ``spec`` for a proxy running ``plan``; with
    ``stand_in`` its extension filters carry their stand-in as default config."""

    def ref(planned: PlannedExtension) -> FilterRef:
        name = names.extension_config_name(planned.key)
        if not stand_in:
            return FilterRef(name)
        ext = planned.extension
        return FilterRef(name, ext.name, closes(ext.failure_policy))

    return ListenerShape(
        spec=spec,
        network=tuple(ref(p) for p in network_chain(plan, spec.side)),
        http=tuple(
            item if isinstance(item, str) else ref(item) for item in filter_chain(plan, spec.side)
        ),
        config_source=config_source,
    )


def make_listener(shape: ListenerShape) -> Any:
    """The listener of ``shape``."""
    spec = shape.spec
    network = [
        listener_components_pb2.Filter(
            name=ref.config_name,
            config_discovery=_discovery(ref, shape.config_source, network=True),
        )
        for ref in shape.network
    ]
    hcm = _connection_manager(shape)
    return listener_pb2.Listener(
        name=spec.name,
        address=_socket_address(spec.address, spec.port),
        traffic_direction=spec.traffic_direction,
        filter_chains=[
            listener_components_pb2.FilterChain(
                name="http",
                filters=[
                    *network,
                    listener_components_pb2.Filter(name=names.HCM_FILTER, typed_config=pack(hcm)),
                ],
            )
        ],
    )


def _http_filters(shape: ListenerShape) -> list[Any]:
    filters = []
    for item in shape.http:
        if isinstance(item, str):
            filters.append(hcm_pb2.HttpFilter(name=item, typed_config=pack(_ANCHOR_CONFIGS[item])))
            continue
        filters.append(
            hcm_pb2.HttpFilter(
                name=item.config_name,
                config_discovery=_discovery(item, shape.config_source, network=False),
            )
        )
    return filters


def _discovery(ref: FilterRef, config_source: ConfigDirectory | None, *, network: bool) -> Any:
    """Where an extension's filter gets its config. With a stand-in (remote modules
    Envoy rejects until fetched), the stand-in matching the extension's failure policy
    is the filter's default config, so a listener never waits on, nor a filter fails
    for, a module not fetched."""
    name = ref.config_name
    discovery = config_source_pb2.ExtensionConfigSource(
        config_source=_extension_config_source(name, config_source),
        type_urls=[NETWORK_WASM_FILTER_TYPE_URL if network else WASM_FILTER_TYPE_URL],
    )
    if ref.stand_in_plugin is not None:
        discovery.default_config.CopyFrom(
            pack(stand_in_filter(ref.stand_in_plugin, network=network, closed=ref.stand_in_closed))
        )
    return discovery


def _extension_config_source(name: str, directory: ConfigDirectory | None) -> Any:
    if directory is not None:
        return config_source_pb2.ConfigSource(
            path_config_source=config_source_pb2.PathConfigSource(
                path=directory.extension_config_path(name)
            ),
            resource_api_version=config_source_pb2.V3,
        )
    # No initial fetch timeout: a listener that references an extension waits (warms)
    # until the extension's config arrives, instead of going live after 15 s with a
    # filter that has no config and answers 500. The listener it replaces keeps
    # serving meanwhile.
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
        initial_fetch_timeout=duration_pb2.Duration(seconds=0),
    )


def _connection_manager(shape: ListenerShape) -> Any:
    spec = shape.spec
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=spec.stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name=spec.name,
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name="app",
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            route=route_components_pb2.RouteAction(
                                cluster=spec.cluster,
                                # The application decides how long a request may take.
                                timeout=duration_pb2.Duration(seconds=0),
                            ),
                        )
                    ],
                )
            ],
        ),
        http_filters=_http_filters(shape),
    )


def _socket_address(host: str, port: int) -> Any:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def make_cluster(shape: ClusterShape) -> Any:
    """The cluster of ``shape``: one endpoint, STATIC for an IP address, STRICT_DNS for
    a host name; with ``tls`` (the module server's), verified by the mesh's roots."""
    name, target = shape.name, shape.target
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if target.is_ip else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=_socket_address(target.host, target.port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    if shape.tls is not None:
        cluster.transport_socket.CopyFrom(
            upstream_tls_socket_proto(
                server_identity=shape.tls.server_identity,
                sni=target.host,
                trusted_ca_pem=shape.tls.trusted_ca_pem,
            )
        )
    return cluster


def _describe(workload: Any) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(workload.labels.items()))
    return f"{workload.namespace}/{workload.name or '-'} ({workload.kind}, labels {labels or '-'})"
