"""The admin HTTP API of ``meshext serve``.

``/healthz`` (the process is up), ``/readyz`` (configuration loaded and the ADS server
listening), ``/metrics`` (Prometheus), and JSON views under ``/api/v1``: extensions
with their status and per-proxy delivery, proxies with what they acknowledged, the
configuration generated for one proxy, and configuration errors. The ``meshext
status``, ``proxies`` and ``config-dump`` commands read these views.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshext.api.extension import status_to_dict
from meshext.server.control import ControlPlane, ExtensionReport, ProxyRecord, delivery_summary
from meshext.xds.protocol import TypeStatus
from meshext.xds.server import ConnectionInfo, StreamSecurity


class StreamView(Protocol):
    """What the admin API reads of the xDS side: an ``AdsServer`` or a worker pool."""

    @property
    def security(self) -> StreamSecurity | None: ...

    def connections(self) -> list[ConnectionInfo]: ...


async def _current_connections(ads: StreamView) -> list[ConnectionInfo]:
    """Open streams; a worker pool is asked for them first (they live in its workers)."""
    refresh = getattr(ads, "refresh_connections", None)
    if refresh is not None:
        await refresh()
    return ads.connections()


CONTROL_PLANE: web.AppKey[ControlPlane] = web.AppKey("control_plane", ControlPlane)
ADS_SERVER: web.AppKey[StreamView] = web.AppKey("ads_server")
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
READY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")


INSECURE_WARNING = (
    "xDS and the module server run in PLAINTEXT (--insecure-xds): any client that reaches "
    "them can read and change the configuration of any proxy"
)


def admin_app(
    control: ControlPlane, ads: StreamView, registry: CollectorRegistry, ready: Callable[[], bool]
) -> web.Application:
    app = web.Application()
    app[CONTROL_PLANE] = control
    app[ADS_SERVER] = ads
    app[REGISTRY] = registry
    app[READY] = ready
    app.add_routes(
        [
            web.get("/healthz", _healthz),
            web.get("/readyz", _readyz),
            web.get("/metrics", _metrics),
            web.get("/api/v1/extensions", _extensions),
            web.get("/api/v1/proxies", _proxies),
            web.get("/api/v1/proxies/{node_id}/config", _proxy_config),
            web.get("/api/v1/errors", _errors),
            web.get("/api/v1/security", _security),
        ]
    )
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.Response(text="ready\n")
    faults = request.app[CONTROL_PLANE].faults.current()
    if faults:
        return web.Response(status=503, text="".join(f"not ready: {f}\n" for f in faults))
    return web.Response(status=503, text="not ready: configuration not loaded yet\n")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _security(request: web.Request) -> web.Response:
    secure = request.app[ADS_SERVER].security is not None
    body: dict[str, Any] = {"xds": "mutual-tls" if secure else "plaintext"}
    if not secure:
        body["warning"] = INSECURE_WARNING
    return web.json_response(body)


async def _extensions(request: web.Request) -> web.Response:
    reports = request.app[CONTROL_PLANE].reports()
    return web.json_response({"extensions": [report_json(r) for r in reports]})


async def _proxies(request: web.Request) -> web.Response:
    control = request.app[CONTROL_PLANE]
    connections = await _connections_by_node(request.app[ADS_SERVER])
    return web.json_response(
        {"proxies": [proxy_json(p, connections.get(p.node_id, [])) for p in control.proxies()]}
    )


async def _proxy_config(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    record = request.app[CONTROL_PLANE].proxy(node_id)
    if record is None:
        raise web.HTTPNotFound(text=f"no connected proxy {node_id!r}\n")
    if record.resources is None:
        return web.json_response({"node": node_id, "error": record.error, "resources": {}})
    resources = {
        type_url.rsplit("/", 1)[-1]: {
            name: json_format.MessageToDict(message) for name, message in by_name.items()
        }
        for type_url, by_name in record.resources.by_type().items()
    }
    return web.json_response({"node": node_id, "error": record.error, "resources": resources})


async def _errors(request: web.Request) -> web.Response:
    control = request.app[CONTROL_PLANE]
    errors = [*control.faults.current(), *control.config_errors]
    return web.json_response({"errors": [str(e) for e in errors]})


def report_json(report: ExtensionReport) -> dict[str, Any]:
    return {
        "kind": report.key.kind,
        "namespace": report.key.namespace,
        "name": report.key.name,
        "apiVersion": report.served_version,
        "status": status_to_dict(report.status),
        "summary": delivery_summary(report.proxies),
        "proxies": [
            {
                "proxy": p.proxy,
                "state": p.state.value,
                "version": p.version,
                "runningVersion": p.running_version,
                "message": p.message,
            }
            for p in report.proxies
        ],
    }


def proxy_json(record: ProxyRecord, connections: list[ConnectionInfo]) -> dict[str, Any]:
    proxy = record.proxy
    plan = record.plan
    body: dict[str, Any] = {"node": record.node_id, "error": record.error}
    if proxy is not None:
        body["workload"] = {
            "namespace": proxy.namespace,
            "labels": dict(proxy.workload.labels),
            "kind": proxy.kind.value,
            "inboundPort": proxy.inbound_port,
            "app": proxy.app_address,
        }
    if plan is not None:
        body["extensions"] = [
            {
                "kind": p.key.kind,
                "namespace": p.key.namespace,
                "name": p.key.name,
                "phase": p.phase.value,
                "priority": p.priority,
                "leftOut": record.left_out.get(p.key),
            }
            for p in plan.applied
        ]
    body["rejections"] = dict(record.rejections)
    body["streams"] = [
        {
            "protocol": str(c.protocol),
            "peer": c.peer,
            "identity": c.identity or None,
            "connectedSince": c.connected_since.isoformat(),
            "responsesSent": c.responses_sent,
            "types": {
                type_url.rsplit("/", 1)[-1]: _type_status_json(status)
                for type_url, status in c.types.items()
            },
        }
        for c in connections
    ]
    return body


def _type_status_json(status: TypeStatus) -> dict[str, Any]:
    return {
        "wildcard": status.wildcard,
        "subscribed": list(status.subscribed),
        "ackedVersion": status.acked_version,
        "resources": dict(status.resources),
        "rejected": dict(status.rejected),
        "lastNack": status.last_nack,
        "acks": status.acks,
        "nacks": status.nacks,
    }


async def _connections_by_node(ads: StreamView) -> dict[str, list[ConnectionInfo]]:
    by_node: dict[str, list[ConnectionInfo]] = {}
    for connection in await _current_connections(ads):
        by_node.setdefault(connection.node_id, []).append(connection)
    return by_node
