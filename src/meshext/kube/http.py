"""The controller's HTTP endpoints.

* the admin port (plain HTTP): ``/healthz`` (the process runs), ``/readyz`` (caches are
  filled and reconciliation runs: probes and the Service use it), ``/debug/controller``
  (leadership, queue and write counters as JSON; answered to loopback clients only,
  whatever address the port is bound to), and the module server's
  ``/modules/sha256/<hex>`` from which proxies fetch modules;
* the webhook port (HTTPS): ``/convert`` for the API server's ConversionReviews and
  ``/healthz``.

Every replica serves both, leader or not: the API server and the proxies reach
whichever replica the Service picks.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from meshext.kube.controller import Controller
from meshext.kube.webhook import (
    CONVERT_PATH,
    ReloadingCertificate,
    WebhookServerError,
    webhook_routes,
)
from meshext.server.modules import ModuleStore, module_routes


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _from_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def admin_app(controller: Controller, modules: ModuleStore | None = None) -> web.Application:
    async def readyz(_request: web.Request) -> web.Response:
        reason = controller.unready_reason()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"{reason}\n")

    async def debug(request: web.Request) -> web.Response:
        if not _from_loopback(request):
            raise web.HTTPForbidden(text="/debug is served to loopback clients only\n")
        stats = controller.stats
        connectivity = controller.client.connectivity
        return web.json_response(
            {
                "identity": controller.settings.identity,
                "leader": controller.is_leader,
                "ready": controller.ready,
                "unreadyReason": controller.unready_reason(),
                "apiServer": {
                    "reachable": connectivity.reachable,
                    "lostForSeconds": round(connectivity.lost_for(), 1),
                    "problem": connectivity.problem,
                    "outages": connectivity.outages,
                },
                "queue": {"pending": controller.queue.pending},
                "writes": {
                    "status": stats.status_writes,
                    "created": stats.created,
                    "updated": stats.updated,
                    "deleted": stats.deleted,
                },
                "reconciles": stats.reconciles,
                "informers": {
                    str(i.rtype): {
                        "objects": len(i.objects),
                        "served": i.served,
                        "lists": i.lists,
                        "problem": i.problem,
                    }
                    for i in controller.informers
                },
            }
        )

    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/controller", debug)
    if modules is not None:
        app.add_routes(module_routes(modules))
    return app


def webhook_app() -> web.Application:
    app = web.Application()
    webhook_routes(app)
    app.router.add_get("/healthz", _healthz)
    return app


@dataclass
class WebhookServer:
    """The conversion webhook listening with TLS on ``host:port``."""

    runner: web.AppRunner
    host: str
    port: int
    certificate: ReloadingCertificate

    @property
    def url(self) -> str:
        """The ``url`` for a CRD's ``clientConfig``."""
        return f"https://{self.host}:{self.port}{CONVERT_PATH}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_webhook_server(
    cert: Path, key: Path, host: str = "127.0.0.1", port: int = 0
) -> WebhookServer:
    """Serve the conversion webhook over HTTPS; ``port`` 0 picks a free port."""
    try:
        certificate = ReloadingCertificate(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebhookServerError(f"cannot load the webhook certificate {cert}: {exc}") from exc
    runner = web.AppRunner(webhook_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=certificate.context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise WebhookServerError(f"webhook cannot listen on {host}:{port}: {exc}") from exc
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    return WebhookServer(runner, host, bound, certificate)
