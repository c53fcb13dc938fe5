"""Real Envoy for the tests, fed from files (no xDS server), and a tiny echo application.

``EnvoyProxy`` starts ``.venv/bin/envoy`` (through
:class:`meshext.quickstart.envoy_process.EnvoyProcess`) with a bootstrap from
:func:`meshext.envoy.bootstrap.sidecar_bootstrap` whose listeners, clusters and
extension configs are files under a :class:`ConfigDirectory`, written from
:func:`meshext.envoy.files.config_files`. ``apply`` moves new files into place, which
Envoy picks up exactly like an xDS push. Each Envoy gets its own admin port and a
``--base-id`` derived from it, so tests running side by side do not clash; ``stop``
(or leaving the ``async with``) terminates it.

``EchoApp`` answers every request with the request's method, path and headers (in
arrival order, repeated headers kept) as JSON.

Waiting is by polling a condition until it holds; the deadline exists only to turn a
hang into a readable failure, never to assert speed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from aiohttp import web

from meshext.envoy.bootstrap import sidecar_bootstrap
from meshext.envoy.files import ConfigDirectory, config_files
from meshext.envoy.node import DeliveryMode, ProxyInfo
from meshext.envoy.resources import EnvoyResources
from meshext.quickstart.envoy_process import EnvoyProcess
from tests.network import free_port

ENVOY = Path(sys.executable).with_name("envoy")
DEADLINE_SECONDS = 60.0

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    what: str,
    *,
    deadline: float = DEADLINE_SECONDS,
) -> T:
    """Polls ``probe`` until ``done`` holds for its result; fails naming ``what`` otherwise."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: T | None = None
    last_error: BaseException | None = None
    while loop.time() < end:
        try:
            last = await probe()
            if done(last):
                return last
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"gave up waiting for {what}; last result {last!r}, last error {last_error!r}"
    )


def write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file and renames it over ``path`` (what Envoy watches for)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class EchoApp:
    """The application behind the proxy: echoes each request as JSON."""

    def __init__(self) -> None:
        self.port = 0
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _echo(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = {
            "method": request.method,
            "path": request.path_qs,
            "headers": [[k.lower(), v] for k, v in request.headers.items()],
        }
        return web.json_response(body)

    async def __aenter__(self) -> EchoApp:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def headers_named(echo: Mapping[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` the application received, in order."""
    return [value for key, value in echo["headers"] if key == name]


class EnvoyProxy:
    """One Envoy process serving ``proxy``'s resources from files under ``workdir``."""

    def __init__(self, workdir: Path, proxy: ProxyInfo, resources: EnvoyResources) -> None:
        self.workdir = workdir
        self.proxy = proxy
        self.directory = ConfigDirectory(str(workdir / "xds"))
        self.admin_port = free_port()
        self._resources = resources
        self._envoy = EnvoyProcess(
            self.bootstrap(),
            workdir,
            concurrency=1,
            log_level="warning",
            extra_args=("--base-id", str(self.admin_port), "--component-log-level", "wasm:info"),
        )
        self.log_path = self._envoy.log_path
        self.client = httpx.AsyncClient(timeout=30.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.inbound_port}"

    @property
    def admin_url(self) -> str:
        return self._envoy.admin_url

    def bootstrap(self) -> dict[str, Any]:
        return sidecar_bootstrap(
            name=self.proxy.workload.name,
            namespace=self.proxy.namespace,
            labels=self.proxy.workload.labels,
            listen=f"{self.proxy.inbound_address}:{self.proxy.inbound_port}",
            app=self.proxy.app_address,
            xds=self.directory,
            admin_port=self.admin_port,
            kind=self.proxy.kind,
            node_id=self.proxy.node_id,
            module_delivery=self.proxy.module_delivery or DeliveryMode.LOCAL,
            extra_ports=self.proxy.extra_inbound_ports,
            outbound=[str(o) for o in self.proxy.outbound],
        )

    def write(self, resources: EnvoyResources) -> None:
        """Moves the files of ``resources`` into place (extension configs first, as a server pushes)."""
        files = config_files(resources, self.directory)
        listeners, clusters = self.directory.listeners_path, self.directory.clusters_path
        for path, text in sorted(files.items()):
            if path not in (listeners, clusters):
                write_atomically(Path(path), text)
        write_atomically(Path(clusters), files[clusters])
        write_atomically(Path(listeners), files[listeners])
        self._resources = resources

    async def start(self, *, wait_for_listener: bool = True) -> None:
        self.write(self._resources)
        await self._envoy.start(timeout=DEADLINE_SECONDS)
        if wait_for_listener:
            await self.wait_for_stat("listener_manager.total_listeners_active", lambda v: v >= 1)

    async def stop(self) -> None:
        await self.client.aclose()
        await self._envoy.stop()

    async def __aenter__(self) -> EnvoyProxy:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def log(self) -> str:
        return self._envoy.log()

    @property
    def pid(self) -> int:
        pid = self._envoy.pid
        assert pid is not None
        return pid

    async def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (``/stats``), by name."""
        return await self._envoy.stats()

    async def wait_for_stat(self, name: str, done: Callable[[int], bool]) -> int:
        async def probe() -> int | None:
            return (await self.stats()).get(name)

        value = await eventually(probe, lambda v: v is not None and done(v), f"stat {name}")
        assert value is not None
        return value

    async def request(
        self, path: str = "/", headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.get(self.url + path, headers=dict(headers or {}))

    async def echo(
        self, path: str = "/", headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """A request through the proxy that must reach the application; its echo."""
        response = await self.request(path, headers)
        assert response.status_code == 200, (
            response.status_code,
            response.text,
            self.log()[-3000:],
        )
        echoed: dict[str, Any] = response.json()
        return echoed
