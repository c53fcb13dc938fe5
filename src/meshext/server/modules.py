"""The module server: proxies fetch extension modules from it over HTTP, by sha256.

``GET /modules/sha256/<64 hex>`` answers the module whose bytes hash to that sha256,
as ``application/wasm``, with the hash as ``ETag`` and caching headers that say the
content never changes (the address is the content). Unknown or malformed hashes get
404. ``HEAD`` answers the same headers without the body; ``If-None-Match`` with the
hash gets 304.

Envoy checks the sha256 itself (``remote.sha256`` in the wasm filter), so a module
damaged on disk is refused by the proxy rather than run; this server does not hash
the file on every request.

The routes come from :func:`module_routes`, so the admin API can be served by the
same ``aiohttp`` application (:func:`module_app` builds one holding only these
routes) or by another one on another port. :func:`start_module_server` runs an app
on an address and returns a handle that knows its URL and stops it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from aiohttp import web

from meshext.errors import MeshextError

MODULE_PATH_PREFIX: Final = "/modules/sha256/"
CONTENT_TYPE: Final = "application/wasm"
CACHE_CONTROL: Final = "public, max-age=31536000, immutable"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModuleServerError(MeshextError):
    """The module server cannot listen on the address it was given."""

    retryable = False


class ModuleStore(Protocol):
    """Where the module server finds module bytes (the image cache implements it)."""

    def path_for(self, sha256: str) -> Path | None:
        """The file holding the module whose sha256 is ``sha256`` (lowercase hex), or ``None``."""
        ...


def module_path(sha256: str) -> str:
    """The path under which the module with this sha256 is served."""
    if not _SHA256.match(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 in lowercase hex")
    return MODULE_PATH_PREFIX + sha256


def module_url(base_url: str, sha256: str) -> str:
    """The URL of a module on the module server at ``base_url`` (``http://host:port``)."""
    return base_url.rstrip("/") + module_path(sha256)


def module_routes(
    store: ModuleStore, on_served: Callable[[str], None] | None = None
) -> list[web.RouteDef]:
    """The module server's routes, to add to any ``aiohttp`` application.

    ``on_served`` is called with a module's sha256 each time its whole body has been
    sent (a ``GET``, not a ``HEAD`` or a 304): the control loop then offers it again,
    soon, to proxies that rejected it while fetching it.
    """

    async def serve(request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        if not _SHA256.match(sha256):
            raise web.HTTPNotFound(text="not a sha256 in lowercase hex\n")
        path = store.path_for(sha256)
        if path is None:
            raise web.HTTPNotFound(text=f"no module with sha256 {sha256}\n")
        etag = f'"{sha256}"'
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"no module with sha256 {sha256}\n") from None
        response = web.Response(body=body, content_type=CONTENT_TYPE, headers=headers)
        if on_served is None or request.method != "GET":
            return response
        await response.prepare(request)
        await response.write_eof()
        on_served(sha256)
        return response

    return [web.get(MODULE_PATH_PREFIX + "{sha256}", serve, allow_head=True)]


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    candidates = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates or f"W/{etag}" in candidates


def module_app(
    store: ModuleStore, on_served: Callable[[str], None] | None = None
) -> web.Application:
    """An ``aiohttp`` application serving only the module routes."""
    app = web.Application()
    app.add_routes(module_routes(store, on_served))
    return app


@dataclass
class RunningServer:
    """An ``aiohttp`` application listening on ``host:port``; :meth:`stop` closes it."""

    runner: web.AppRunner
    host: str
    port: int
    tls: bool = False
    ssl_context: ssl.SSLContext | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def stop_listening(self) -> None:
        """Close the listening socket (connections are refused) but keep the application,
        so :meth:`listen_again` serves it on the same address."""
        for site in list(self.runner.sites):
            await site.stop()
        if self.runner.server is not None:  # and the connections already open
            await self.runner.server.shutdown(1.0)

    async def listen_again(self) -> None:
        site = web.TCPSite(self.runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()


async def start_module_server(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> RunningServer:
    """Serve ``app`` (from :func:`module_app`, or one with more routes) on ``host:port``,
    over HTTPS with ``ssl_context``.

    ``port`` 0 picks a free port; the returned handle holds the one bound.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ModuleServerError(f"module server cannot listen on {host}:{port}: {exc}") from exc
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    return RunningServer(runner, host, bound, tls=ssl_context is not None, ssl_context=ssl_context)
