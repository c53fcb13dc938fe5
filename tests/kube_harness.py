"""A real etcd + kube-apiserver pair on loopback for tests.

The binaries are built from source by ``scripts/setup.d/40-kubernetes.sh`` into
``${MESHEXT_CACHE:-~/.cache/meshext}/k8s/<version>/bin``; this module finds them
there (running the script when something is missing), starts etcd with a
throw-away data directory and starts kube-apiserver against it:

* serving certificate for 127.0.0.1/localhost signed by a fresh test CA,
* a static bearer token for an ``admin`` user in ``system:masters``
  (the kubeconfig uses it), plus an equivalent client certificate,
* RBAC authorization, service-account token signing with a fresh RSA key,
* no admission plugin that relies on a controller-manager being present.

There is no controller-manager, scheduler or kubelet: objects are stored and
served, but nothing acts on them (no garbage collection, no namespace
finalisation, pods stay Pending).

Typical use::

    with KubeApiServer() as api:
        api.kubectl("get", "ns")
        api.stop_apiserver()   # etcd keeps running, data is kept
        api.start_apiserver()  # same URL, same credentials

Importing this module has no side effects and needs no pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshext.kube.certs import CertificateAuthority

__all__ = [
    "REPO_ROOT",
    "SETUP_SCRIPT",
    "KubeApiServer",
    "KubeBinaries",
    "KubeHarnessError",
    "find_binaries",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.d" / "40-kubernetes.sh"
LOOPBACK = "127.0.0.1"
ADMIN_USER = "admin"
ADMIN_GROUP = "system:masters"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class KubeHarnessError(RuntimeError):
    """The binaries could not be found or built, or a component failed to start."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class KubeBinaries:
    """Paths of the cached control-plane artefacts."""

    kube_apiserver: Path
    kubectl: Path
    etcd: Path
    istio_crds: Path

    def all_present(self) -> bool:
        executables = (self.kube_apiserver, self.kubectl, self.etcd)
        return all(os.access(p, os.X_OK) for p in executables) and self.istio_crds.is_file()


def _cache_root() -> Path:
    configured = os.environ.get("MESHEXT_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "meshext"


def _module_version(gomod: Path, module: str) -> str:
    """Version of ``module`` as required by ``gomod`` (same rule as the setup script)."""
    for line in gomod.read_text().splitlines():
        fields = line.split()
        if fields[:2] == ["require", module] and len(fields) > 2 and fields[2].startswith("v"):
            return fields[2]
        if len(fields) > 1 and fields[0] == module and fields[1].startswith("v"):
            return fields[1]
    raise KubeHarnessError(f"{gomod} does not require {module}")


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _expected_binaries() -> KubeBinaries:
    tools = REPO_ROOT / "tools"
    k8s_version = _module_version(tools / "k8s" / "go.mod", "k8s.io/kubernetes")
    istio_version = _read_env_file(tools / "k8s" / "istio-crds.env")["ISTIO_VERSION"]
    root = _cache_root()
    bin_dir = root / "k8s" / k8s_version / "bin"
    return KubeBinaries(
        kube_apiserver=bin_dir / "kube-apiserver",
        kubectl=bin_dir / "kubectl",
        etcd=bin_dir / "etcd",
        istio_crds=root / "istio" / istio_version / "crd-all.gen.yaml",
    )


def find_binaries(*, build: bool = True) -> KubeBinaries:
    """Locate the cached binaries, running the setup script if any is missing.

    Building from an empty Go cache takes several minutes on a small machine.
    With ``build=False`` a missing artefact raises instead.
    """
    expected = _expected_binaries()
    if expected.all_present():
        return expected
    if not build:
        raise KubeHarnessError(f"Kubernetes test binaries missing; run {SETUP_SCRIPT}")
    proc = subprocess.run(
        ["bash", str(SETUP_SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise KubeHarnessError(
            f"{SETUP_SCRIPT} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    reported = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    found = KubeBinaries(
        kube_apiserver=Path(reported["kube-apiserver"]),
        kubectl=Path(reported["kubectl"]),
        etcd=Path(reported["etcd"]),
        istio_crds=Path(reported["istio-crds"]),
    )
    if not found.all_present():
        raise KubeHarnessError(f"{SETUP_SCRIPT} succeeded but reported missing files: {found}")
    return found


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no log>"
    return data[-limit:].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    client_cert: Path
    client_key: Path
    sa_public_key: Path
    sa_private_key: Path


def _generate_pki(directory: Path) -> _Pki:
    """A test CA signing the serving and admin client certificates, and an SA key pair."""
    ca = CertificateAuthority.generate("meshext-test-ca", days=7)
    serving_cert, serving_key = ca.issue(
        [
            LOOPBACK,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
    )
    # Kubernetes maps O= to groups: system:masters bypasses authorization.
    client_cert, client_key = ca.issue(
        [],
        subject=x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ADMIN_GROUP),
                x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_USER),
            ]
        ),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki = _Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        client_cert=directory / "admin.crt",
        client_key=directory / "admin.key",
        sa_public_key=directory / "sa.pub",
        sa_private_key=directory / "sa.key",
    )
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca.pem)
    pki.serving_cert.write_bytes(serving_cert)
    _write_private(pki.serving_key, serving_key)
    pki.client_cert.write_bytes(client_cert)
    _write_private(pki.client_key, client_key)
    pki.sa_public_key.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    _write_private(pki.sa_private_key, _pem_key(sa_key))
    return pki


def _die_with_parent_prefix() -> list[str]:
    """Command prefix making the kernel SIGKILL a server when the test process dies.

    util-linux ``setpriv --pdeathsig`` sets PR_SET_PDEATHSIG and execs the server,
    so a killed test run leaves no etcd or apiserver behind. The signal fires
    when the *thread* that spawned the server exits, so start the harness from
    a long-lived thread (pytest fixtures run on the main thread).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _terminate(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- harness


class KubeApiServer:
    """etcd plus kube-apiserver on 127.0.0.1, authenticated as a cluster admin.

    Construct, then :meth:`start` (or use as a context manager). Attributes are
    valid after :meth:`start` and stay the same across
    :meth:`stop_apiserver` / :meth:`start_apiserver`: the apiserver comes back
    on the same port with the same certificates and token.

    Args:
        binaries: artefact paths; default :func:`find_binaries` (may build).
        base_dir: directory in which the temporary work directory is created.
        startup_timeout: seconds to wait for etcd health and apiserver ``/readyz``.
        extra_apiserver_args: appended to the kube-apiserver command line.
    """

    def __init__(
        self,
        *,
        binaries: KubeBinaries | None = None,
        base_dir: Path | None = None,
        startup_timeout: float = 120.0,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self._binaries = binaries
        self._base_dir = base_dir
        self.startup_timeout = startup_timeout
        self.extra_apiserver_args: tuple[str, ...] = tuple(extra_apiserver_args)

        self._workdir: Path | None = None
        self._pki: _Pki | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._etcd_port = 0
        self._etcd_peer_port = 0
        self._apiserver_port = 0
        self.token = secrets.token_urlsafe(32)

    # ------------------------------------------------------------------ properties

    def _require(self) -> tuple[Path, _Pki]:
        if self._workdir is None or self._pki is None:
            raise KubeHarnessError("KubeApiServer is not started")
        return self._workdir, self._pki

    @property
    def binaries(self) -> KubeBinaries:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def workdir(self) -> Path:
        return self._require()[0]

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>`` of the apiserver."""
        self._require()
        return f"https://{LOOPBACK}:{self._apiserver_port}"

    @property
    def port(self) -> int:
        self._require()
        return self._apiserver_port

    @property
    def etcd_url(self) -> str:
        self._require()
        return f"http://{LOOPBACK}:{self._etcd_port}"

    @property
    def kubeconfig_path(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        """CA certificate that signed the apiserver's serving certificate."""
        return self._require()[1].ca_cert

    @property
    def client_cert_path(self) -> Path:
        """Client certificate for ``admin`` in ``system:masters`` (alternative to the token)."""
        return self._require()[1].client_cert

    @property
    def client_key_path(self) -> Path:
        return self._require()[1].client_key

    @property
    def apiserver_log_path(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    @property
    def etcd_log_path(self) -> Path:
        return self.workdir / "etcd.log"

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> KubeApiServer:
        """Generate credentials, start etcd and the apiserver, wait until ready."""
        if self._workdir is not None:
            raise KubeHarnessError("KubeApiServer already started")
        binaries = self.binaries
        workdir = Path(tempfile.mkdtemp(prefix="meshext-kube-", dir=self._base_dir))
        self._workdir = workdir
        atexit.register(self.close)
        try:
            self._pki = _generate_pki(workdir)
            (workdir / "tokens.csv").write_text(
                f'{self.token},{ADMIN_USER},{ADMIN_USER},"{ADMIN_GROUP}"\n'
            )
            self._write_kubeconfig()
            self._start_etcd(binaries.etcd)
            self._apiserver_port = 0
            self.start_apiserver()
            self._wait_for_system_namespaces()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the apiserver and etcd and delete the work directory. Idempotent."""
        _terminate(self._apiserver, grace=5)
        self._apiserver = None
        _terminate(self._etcd, grace=5)
        self._etcd = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._pki = None
        atexit.unregister(self.close)

    def stop_apiserver(self, *, grace: float = 10.0) -> None:
        """Stop only kube-apiserver (SIGTERM, SIGKILL after ``grace`` seconds); etcd keeps running."""
        self._require()
        _terminate(self._apiserver, grace=grace)
        self._apiserver = None

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again) against the running etcd and wait for ``/readyz``.

        After a :meth:`stop_apiserver` the same port is reused, so clients holding
        :attr:`url` or :attr:`kubeconfig_path` reconnect without changes.
        """
        self._require()
        if self.apiserver_running:
            return
        if self._etcd is None or self._etcd.poll() is not None:
            raise KubeHarnessError("etcd is not running")
        if self._apiserver_port:
            self._launch_apiserver(self._apiserver_port)
            return
        # First start: the port picked may be taken between probing and binding.
        last_error: KubeHarnessError | None = None
        for _ in range(3):
            try:
                self._launch_apiserver(_free_port())
            except KubeHarnessError as err:
                last_error = err
                if "address already in use" not in str(err):
                    raise
            else:
                return
        assert last_error is not None
        raise last_error

    # ------------------------------------------------------------------ kubectl

    def kubectl_env(self) -> dict[str, str]:
        """Environment for running kubectl (or other clients) against this apiserver."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig_path)
        # Keep kubectl's discovery cache inside the work directory.
        env["KUBECACHEDIR"] = str(self.workdir / "kube-cache")
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl with this apiserver's kubeconfig; output is text."""
        command = [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig_path}", *args]
        proc = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.kubectl_env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubeHarnessError(
                f"kubectl {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def get_json(self, path: str, *, timeout: float = 10.0) -> object:
        """GET ``path`` from the apiserver as admin and decode the JSON body."""
        with urllib.request.urlopen(
            self._request(path), timeout=timeout, context=self._ssl_context()
        ) as response:
            body: bytes = response.read()
        decoded: object = json.loads(body)
        return decoded

    # ------------------------------------------------------------------ internals

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def _request(self, path: str) -> urllib.request.Request:
        return urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )

    def _write_kubeconfig(self) -> None:
        # Written before the port is known and rewritten once it is; JSON is valid YAML.
        workdir, pki = self._require()
        config: Mapping[str, object] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "meshext-test",
                    "cluster": {
                        "server": f"https://{LOOPBACK}:{self._apiserver_port}",
                        "certificate-authority": str(pki.ca_cert),
                    },
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "meshext-test",
                    "context": {
                        "cluster": "meshext-test",
                        "user": ADMIN_USER,
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "meshext-test",
            "preferences": {},
        }
        tmp = workdir / "kubeconfig.tmp"
        _write_private(tmp, json.dumps(config, indent=2).encode())
        tmp.replace(workdir / "kubeconfig")

    def _start_etcd(self, etcd: Path) -> None:
        workdir, _ = self._require()
        last_log = ""
        for _ in range(3):
            self._etcd_port, self._etcd_peer_port = _free_port(), _free_port()
            client = f"http://{LOOPBACK}:{self._etcd_port}"
            peer = f"http://{LOOPBACK}:{self._etcd_peer_port}"
            data_dir = workdir / "etcd-data"
            shutil.rmtree(data_dir, ignore_errors=True)
            command = [
                str(etcd),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--initial-cluster-state=new",
                # Test data is disposable: skip fsync for speed.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]
            self._etcd = self._spawn(command, self.etcd_log_path)
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self._etcd.poll() is not None:
                    break
                if self._etcd_healthy(client):
                    return
                time.sleep(0.1)
            last_log = _tail(self.etcd_log_path)
            _terminate(self._etcd, grace=2)
            self._etcd = None
            if "address already in use" not in last_log:
                break
        raise KubeHarnessError(f"etcd did not become healthy; log tail:\n{last_log}")

    @staticmethod
    def _etcd_healthy(client_url: str) -> bool:
        try:
            with urllib.request.urlopen(client_url + "/health", timeout=2) as response:
                body: bytes = response.read()
        except (OSError, urllib.error.URLError):
            return False
        try:
            health = json.loads(body)
        except ValueError:
            return False
        return isinstance(health, dict) and health.get("health") == "true"

    def _apiserver_command(self, port: int) -> list[str]:
        workdir, pki = self._require()
        return [
            str(self.binaries.kube_apiserver),
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--etcd-servers={self.etcd_url}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # Pods would otherwise need a "default" ServiceAccount, which only a
            # controller-manager creates.
            "--disable-admission-plugins=ServiceAccount",
            "--profiling=false",
            "--v=1",
            *self.extra_apiserver_args,
        ]

    def _launch_apiserver(self, port: int) -> None:
        self._apiserver_port = port
        self._write_kubeconfig()
        with self.apiserver_log_path.open("ab") as log:
            log.write(f"\n=== starting kube-apiserver on port {port} ===\n".encode())
        self._apiserver = self._spawn(self._apiserver_command(port), self.apiserver_log_path)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._apiserver.poll() is not None:
                self._apiserver = None
                raise KubeHarnessError(
                    "kube-apiserver exited during startup; log tail:\n"
                    + _tail(self.apiserver_log_path)
                )
            if self._ready():
                return
            time.sleep(0.2)
        _terminate(self._apiserver, grace=2)
        self._apiserver = None
        raise KubeHarnessError(
            f"kube-apiserver not ready after {self.startup_timeout}s; log tail:\n"
            + _tail(self.apiserver_log_path)
        )

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                self._request("/readyz"), timeout=2, context=self._ssl_context()
            ) as response:
                status: int = response.status
        except (OSError, urllib.error.URLError):
            return False
        return status == 200

    def _wait_for_system_namespaces(self) -> None:
        # /readyz can pass a moment before the system namespaces exist.
        deadline = time.monotonic() + self.startup_timeout
        wanted = {"default", "kube-system", "kube-public"}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                listing = self.get_json("/api/v1/namespaces")
                if isinstance(listing, dict):
                    items = listing.get("items") or []
                    names = {item["metadata"]["name"] for item in items}
                    if wanted <= names:
                        return
            time.sleep(0.2)
        raise KubeHarnessError(f"namespaces {sorted(wanted)} did not appear")

    @staticmethod
    def _spawn(command: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [*_die_with_parent_prefix(), *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C aimed at the test runner is handled
                # by the harness's close(), not delivered to the servers mid-test.
                start_new_session=True,
            )
