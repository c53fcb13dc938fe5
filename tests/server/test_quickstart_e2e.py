"""The README's first command: the quickstart runs the whole product on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.network import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]


def quickstart_command(*extra: str) -> tuple[list[str], int]:
    sidecar = free_port()
    command = [
        sys.executable, "-m", "meshext", "quickstart",
        "--config", str(ROOT / "examples" / "quickstart"),
        "--sidecar-port", str(sidecar),
        "--envoy-admin-port", str(free_port()),
        "--xds-address", f"127.0.0.1:{free_port()}",
        "--admin-address", f"127.0.0.1:{free_port()}",
        "--module-address", f"127.0.0.1:{free_port()}",
        *extra,
    ]  # fmt: skip
    return command, sidecar


def test_the_quickstart_tour_passes_every_check(tmp_path: Path) -> None:
    command, _ = quickstart_command("--once")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "MESHEXT_CACHE": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "→ 403" in done.stdout
    assert '["bookinfo", "test", "wasmplugin"]' in done.stdout
    assert "all checks passed" in done.stdout
    assert "stopped the sidecar, the demo app and the control plane" in done.stdout


def test_ctrl_c_stops_every_process_the_quickstart_started(tmp_path: Path) -> None:
    command, sidecar = quickstart_command()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "MESHEXT_CACHE": str(tmp_path)},
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line:
            break
    assert (
        httpx.get(f"http://127.0.0.1:{sidecar}/", headers={"x-mesh-token": "1"}).status_code == 200
    )
    envoys = _envoys_with_port(sidecar)
    assert envoys, "the sidecar's Envoy is running"
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, "".join(lines) + output
    assert "stopped the sidecar, the demo app and the control plane" in output
    deadline = time.monotonic() + 30
    while _envoys_with_port(sidecar) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _envoys_with_port(sidecar) == []


def _envoys_with_port(port: int) -> list[int]:
    """Envoy processes serving the sidecar on ``port`` (its node id ends in ``~port``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not cmdline or not cmdline[0].endswith(b"envoy"):
            continue
        config = next((c for c in cmdline if c.endswith(b".yaml")), b"")
        try:
            if f"~{port}\n".encode() in Path(config.decode()).read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found
