"""Real Envoy for the tests, fed from files (no xDS server), and a tiny echo application.

``EnvoyProxy`` starts ``.venv/bin/envoy`` with a bootstrap from
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
import json
import os
import re
import signal
import socket
import subprocess
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

ENVOY = Path(sys.executable).with_name("envoy")
DEADLINE_SECONDS = 60.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        self.log_path = workdir / "envoy.log"
        self._resources = resources
        self._process: subprocess.Popen[bytes] | None = None
        self.client = httpx.AsyncClient(timeout=30.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.inbound_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

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
        config = self.workdir / "bootstrap.json"
        config.write_text(json.dumps(self.bootstrap(), indent=1))
        self._process = subprocess.Popen(
            [
                str(ENVOY),
                "--config-path",
                str(config),
                "--base-id",
                str(self.admin_port),
                "--concurrency",
                "1",
                "--log-level",
                "warning",
                "--component-log-level",
                "wasm:info",
                "--log-path",
                str(self.log_path),
                "--disable-hot-restart",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        await eventually(self._admin_ready, bool, "Envoy's admin endpoint")
        if wait_for_listener:
            await self.wait_for_stat("listener_manager.total_listeners_active", lambda v: v >= 1)

    async def _admin_ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"Envoy exited with {self._process.returncode}:\n{self.log()}")
        response = await self.client.get(f"{self.admin_url}/ready")
        return response.status_code in (200, 503)

    async def stop(self) -> None:
        await self.client.aclose()
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)

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
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (``/stats``), by name."""
        response = await self.client.get(f"{self.admin_url}/stats")
        response.raise_for_status()
        values: dict[str, int] = {}
        for line in response.text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and re.fullmatch(r"-?\d+", value):
                values[name] = int(value)
        return values

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
