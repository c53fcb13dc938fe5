"""``meshext kube controller`` as a process: status, modules, webhook, clean shutdown."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshext.kube.certs import self_signed
from tests.kube.support import (
    MESHEXT,
    Cluster,
    Mesh,
    eventually,
    extension,
    unique,
    wasm_file,
)
from tests.kube_harness import KubeApiServer
from tests.network import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


async def test_the_controller_command_serves_status_modules_and_conversions(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    admin_port, webhook_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    ca, cert, key = self_signed(["127.0.0.1"]).write(tmp_path / "tls")
    lease = unique("lease")
    setpriv = shutil.which("setpriv")
    command = [
        *([setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []),
        str(MESHEXT),
        "kube",
        "controller",
        f"--kubeconfig={kube_apiserver.kubeconfig_path}",
        "--namespace=default",
        "--identity=process",
        f"--lease-name={lease}",
        "--istio",
        f"--module-url={admin}",
        f"--admin-address=127.0.0.1:{admin_port}",
        f"--webhook-address=127.0.0.1:{webhook_port}",
        f"--webhook-cert={cert}",
        f"--webhook-key={key}",
        f"--cache={tmp_path / 'cache'}",
        f"--local-images={tmp_path}",
    ]
    log_path = tmp_path / "controller.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        await eventually(lambda: _get(f"{admin}/readyz")[0] == 200 or None, "the controller ready")
        module = wasm_file(tmp_path / "modules", "process")
        sha = hashlib.sha256(module.read_bytes()).hexdigest()
        namespace = mesh.members[0]
        cluster.apply(extension("served", namespace, f"file:{module}"))

        def status() -> dict[str, Any] | None:
            found = cluster.get("sme", "served", namespace) or {}
            deployment = (found.get("status") or {}).get("deployment") or {}
            return deployment if deployment.get("ready") else None

        deployment = await eventually(status, "a ready status")
        assert deployment["url"] == f"{admin}/modules/sha256/{sha}"
        code, body = _get(deployment["url"])
        assert code == 200
        assert hashlib.sha256(body).hexdigest() == sha
        plugin = cluster.get("wasmplugins.extensions.istio.io", "served", namespace)
        assert plugin is not None
        assert plugin["spec"]["url"] == deployment["url"]

        debug = json.loads(_get(f"{admin}/debug/controller")[1])
        assert debug["leader"] is True
        assert debug["identity"] == "process"
        context = ssl.create_default_context(cafile=str(ca))
        assert _get(f"https://127.0.0.1:{webhook_port}/healthz", context)[0] == 200

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
        held = json.loads(cluster.kubectl("get", "lease", lease, "-n", "default", "-o", "json"))
        assert held["spec"]["holderIdentity"] == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
