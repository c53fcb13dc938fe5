"""A real istiod (``pilot-discovery``) on loopback, watching the test kube-apiserver.

The binary is built from the pinned ``istio.io/istio`` module by
``scripts/setup.d/45-istiod.sh`` into
``${MESHEXT_CACHE:-~/.cache/meshext}/istio/<version>/bin``; this module finds it
there (running the script when it is missing) and starts it with:

* the kubeconfig of :class:`tests.kube_harness.KubeApiServer` (cluster admin),
* a mesh config file naming ``istio-system`` as the root namespace,
* plaintext xDS (the ``15010`` port of a real istiod) on a free loopback port,
  HTTP (``/ready``, ``/debug``), monitoring and ControlZ on free loopback ports,
* no secure xDS port and no webhook port, so no TLS files are needed, and no
  Gateway API controllers (their CRDs are not installed).

There is no kubelet: a Service selecting the labels that a test proxy announces
in its node metadata is enough for istiod to build that proxy's inbound
listeners, and a ``networking.istio.io`` Gateway is enough for a gateway proxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import yaml

from tests.kube_harness import REPO_ROOT, KubeApiServer
from tests.network import LOOPBACK, free_port

SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.d" / "45-istiod.sh"
ROOT_NAMESPACE = "istio-system"


class IstiodHarnessError(RuntimeError):
    """pilot-discovery could not be found, built or started."""


def _istio_version() -> str:
    env = REPO_ROOT / "tools" / "k8s" / "istio-crds.env"
    for raw in env.read_text().splitlines():
        key, _, value = raw.strip().partition("=")
        if key == "ISTIO_VERSION":
            return value
    raise IstiodHarnessError(f"{env} names no ISTIO_VERSION")


def find_pilot_discovery() -> Path:
    """The cached pilot-discovery, built by the setup fragment when missing."""
    configured = os.environ.get("MESHEXT_CACHE")
    cache = Path(configured) if configured else Path.home() / ".cache" / "meshext"
    expected = cache / "istio" / _istio_version() / "bin" / "pilot-discovery"
    if os.access(expected, os.X_OK):
        return expected
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not os.access(expected, os.X_OK):
        raise IstiodHarnessError(
            f"{SETUP_SCRIPT} exited {proc.returncode}; {expected} missing:\n{proc.stderr[-4000:]}"
        )
    return expected


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        return path.read_bytes()[-limit:].decode("utf-8", errors="replace")
    except OSError:
        return "<no log>"


class Istiod:
    """pilot-discovery against ``api``; use as a context manager."""

    def __init__(self, api: KubeApiServer, *, startup_timeout: float = 180.0) -> None:
        self.api = api
        self.startup_timeout = startup_timeout
        self.grpc_port = 0
        self.http_port = 0
        self.monitoring_port = 0
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        """Plaintext xDS endpoint, ``127.0.0.1:<port>``."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        if self._workdir is None:
            raise IstiodHarnessError("istiod is not started")
        return self._workdir / "istiod.log"

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def __enter__(self) -> Istiod:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> Istiod:
        binary = find_pilot_discovery()
        self._workdir = Path(tempfile.mkdtemp(prefix="meshext-istiod-", dir=self.api.workdir))
        self.grpc_port, self.http_port, self.monitoring_port = (free_port() for _ in range(3))
        mesh_config = self._workdir / "mesh.yaml"
        mesh_config.write_text(
            yaml.safe_dump(
                {
                    "rootNamespace": ROOT_NAMESPACE,
                    "trustDomain": "cluster.local",
                    "defaultConfig": {"discoveryAddress": self.grpc_address},
                    # Istio's chart enables Prometheus metrics (the istio.stats filter).
                    "extensionProviders": [{"name": "prometheus", "prometheus": {}}],
                    "defaultProviders": {"metrics": ["prometheus"]},
                }
            )
        )
        command = [
            str(binary),
            "discovery",
            f"--kubeconfig={self.api.kubeconfig_path}",
            f"--meshConfig={mesh_config}",
            f"--networksConfig={self._workdir / 'mesh-networks.yaml'}",
            f"--grpcAddr={self.grpc_address}",
            f"--httpAddr={LOOPBACK}:{self.http_port}",
            f"--monitoringAddr={LOOPBACK}:{self.monitoring_port}",
            "--secureGRPCAddr=",
            "--httpsAddr=",
            "--clusterID=Kubernetes",
            "--domain=cluster.local",
            "--shutdownDuration=1s",
            f"--ctrlz_address={LOOPBACK}",
            f"--ctrlz_port={free_port()}",
            "--log_output_level=default:info",
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._workdir),
            "POD_NAMESPACE": ROOT_NAMESPACE,
            "POD_NAME": "istiod-test",
            "REVISION": "default",
            "ENABLE_CA_SERVER": "false",
            "PILOT_ENABLE_GATEWAY_API": "false",
            "PILOT_ENABLE_GATEWAY_API_STATUS": "false",
            "PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER": "false",
            "PILOT_ENABLE_ALPHA_GATEWAY_API": "false",
            "PILOT_ENABLE_STATUS": "false",
            "INJECTION_WEBHOOK_CONFIG_NAME": "",
            "VALIDATION_WEBHOOK_CONFIG_NAME": "",
            # Push as soon as a change arrives (the defaults debounce for 100 ms).
            "PILOT_DEBOUNCE_AFTER": "10ms",
            "PILOT_DEBOUNCE_MAX": "1s",
        }
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*prefix, *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._workdir,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self) -> None:
        url = f"http://{LOOPBACK}:{self.http_port}/ready"
        give_up = time.monotonic() + self.startup_timeout
        while time.monotonic() < give_up:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise IstiodHarnessError(f"istiod exited during startup:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.3)
        raise IstiodHarnessError(
            f"istiod not ready after {self.startup_timeout}s:\n{self.log_tail()}"
        )

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
