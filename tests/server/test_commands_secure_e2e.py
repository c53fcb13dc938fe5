"""The README's commands with the secure defaults: ``meshext serve`` and
``meshext bootstrap`` share the CA kept in meshext's state folder, the sidecar
reaches xDS over mutual TLS, and ``--insecure-xds`` is plaintext and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshext.quickstart.echo import start_echo_app
from meshext.quickstart.envoy_process import EnvoyProcess
from tests.envoy.harness import eventually
from tests.envoy.support import build_examples
from tests.network import free_port
from tests.server.mesh import CONTROL_PLANE, sme

pytestmark = pytest.mark.e2e


def meshext(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshext", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def state(tmp_path: Path) -> dict[str, str]:
    """An environment whose meshext state folder is empty."""
    return {**os.environ, "MESHEXT_CACHE": str(tmp_path / "state")}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "mesh.yaml").write_text(CONTROL_PLANE.format(enabled="true", members="bookinfo"))
    (folder / "tag.yaml").write_text(
        sme("bookinfo", "tag", "header-append", config={"value": "secure"})
    )
    return folder


class Served:
    def __init__(self, xds: int, admin: int, log: Path) -> None:
        self.xds, self.admin, self.log = xds, admin, log


def start_serve(config: Path, env: dict[str, str], tmp_path: Path, *extra: str) -> Iterator[Served]:
    served = Served(free_port(), free_port(), tmp_path / "serve.log")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "meshext", "serve", "--config", str(config),
            "--xds-address", f"127.0.0.1:{served.xds}",
            "--admin-address", f"127.0.0.1:{served.admin}",
            "--module-address", f"127.0.0.1:{free_port()}",
            "--local-images", str(build_examples()),
            *extra,
        ],
        stdout=served.log.open("w"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def sidecar_serves(bootstrap: dict[str, object], port: int, tmp_path: Path) -> None:
    async with EnvoyProcess(bootstrap, tmp_path, name="sidecar"):

        async def appended() -> list[str]:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://127.0.0.1:{port}/")
            if response.status_code != 200:
                return []
            return [v for k, v in response.json()["headers"] if k == "x-header-append"]

        await eventually(appended, lambda h: h == ["secure"], "the header", deadline=90)


def bootstrap_args(served: Served, port: int, app_port: int) -> list[str]:
    return [
        "bootstrap", "--name", "httpbin", "-n", "bookinfo", "-l", "app=httpbin",
        "--listen", f"127.0.0.1:{port}", "--app", f"127.0.0.1:{app_port}",
        "--xds-address", f"127.0.0.1:{served.xds}", "--admin-port", str(free_port()),
    ]  # fmt: skip


async def test_serve_and_bootstrap_use_mutual_tls_by_default(
    config: Path, state: dict[str, str], tmp_path: Path
) -> None:
    app = await start_echo_app()
    try:
        for served in start_serve(config, state, tmp_path):
            port = free_port()
            printed = meshext(*bootstrap_args(served, port, app.port), env=state)
            assert printed.returncode == 0, printed.stderr
            bootstrap = yaml.safe_load(printed.stdout)
            socket = bootstrap["static_resources"]["clusters"][0]["transport_socket"]
            assert socket["name"] == "envoy.transport_sockets.tls"
            credentials = Path(state["MESHEXT_CACHE"]) / "credentials" / "bookinfo" / "default"
            assert {"cert.pem", "key.pem", "ca.pem"} <= {p.name for p in credentials.iterdir()}
            assert (credentials / "key.pem").stat().st_mode & 0o077 == 0
            await sidecar_serves(bootstrap, port, tmp_path)
            status = meshext(
                "status", "--admin", f"http://127.0.0.1:{served.admin}", "-o", "json", env=state
            )
            assert json.loads(status.stdout)["security"] == {"xds": "mutual-tls"}
            assert "mutual TLS" in served.log.read_text()
    finally:
        await app.stop()


async def test_insecure_xds_serves_plaintext_and_status_warns(
    config: Path, state: dict[str, str], tmp_path: Path
) -> None:
    app = await start_echo_app()
    try:
        for served in start_serve(config, state, tmp_path, "--insecure-xds"):
            port = free_port()
            printed = meshext(*bootstrap_args(served, port, app.port), "--insecure-xds", env=state)
            assert printed.returncode == 0, printed.stderr
            bootstrap = yaml.safe_load(printed.stdout)
            assert "transport_socket" not in bootstrap["static_resources"]["clusters"][0]
            await sidecar_serves(bootstrap, port, tmp_path)
            status = meshext("status", "--admin", f"http://127.0.0.1:{served.admin}", env=state)
            assert "WARNING" in status.stdout
            assert "PLAINTEXT" in status.stdout
            assert "PLAINTEXT" in served.log.read_text()
    finally:
        await app.stop()
