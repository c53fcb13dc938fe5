"""Helpers for the tests that install meshext on a fresh API server as the docs say."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.kube.support import MESHEXT, unique
from tests.kube_harness import KubeApiServer
from tests.network import free_port

SME_CRD = "servicemeshextensions.maistra.io"


def run_meshext(*args: str) -> str:
    return subprocess.run(
        [str(MESHEXT), *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


class ControllerProcess:
    """``meshext kube controller`` as a process on loopback, stopped with SIGTERM."""

    def __init__(self, api: KubeApiServer, workdir: Path, *args: str) -> None:
        self.admin = f"127.0.0.1:{free_port()}"
        self.log_path = workdir / f"controller-{unique('run')}.log"
        setpriv = shutil.which("setpriv")
        command = [
            *([setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []),
            str(MESHEXT),
            "kube",
            "controller",
            f"--admin-address={self.admin}",
            f"--cache={workdir / 'cache'}",
            *args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def readyz(self) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.admin}/readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def ca_bundle(api: KubeApiServer) -> str:
    crd = json.loads(api.kubectl("get", "crd", SME_CRD, "-o", "json").stdout)
    config = crd["spec"]["conversion"]["webhook"]["clientConfig"]
    return str(config.get("caBundle") or "")


def service_account_kubeconfig(api: KubeApiServer, path: Path) -> Path:
    token = api.kubectl("create", "token", "meshext", "-n", "meshext-system").stdout.strip()
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": api.url, "certificate-authority": str(api.ca_path)}}
        ],
        "users": [{"name": "meshext", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "meshext"}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def create_webhook_secret(api: KubeApiServer, certs: Path) -> None:
    """Install step 1 of docs/kubernetes.md: the webhook's certificate and its CA, in
    the Secret the Deployment mounts."""
    run_meshext("kube", "certs", f"--out={certs}", "--service=meshext-system/meshext")
    api.kubectl("create", "namespace", "meshext-system")
    api.kubectl(
        "-n",
        "meshext-system",
        "create",
        "secret",
        "generic",
        "meshext-webhook-tls",
        f"--from-file={certs / 'ca.crt'}",
        f"--from-file={certs / 'tls.crt'}",
        f"--from-file={certs / 'tls.key'}",
    )
