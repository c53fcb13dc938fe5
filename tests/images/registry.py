"""A real OCI registry (Debian's ``docker-registry``, the CNCF distribution) for tests.

:func:`start_registry` writes a config, starts ``docker-registry serve`` on a free
127.0.0.1 port, waits until ``/v2/`` answers and returns a handle that stops the
process. Setups: anonymous, htpasswd basic auth, bearer tokens from
:mod:`tests.images.tokens`, each over plain HTTP or TLS with a CA the test made.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from meshext.kube import certs
from tests.network import free_port

REGISTRY_BINARY = "/usr/bin/docker-registry"
USERNAME = "meshext"
PASSWORD = "s3cret-pa55"


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA made for one test session, and a server certificate for 127.0.0.1 it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_ca(folder: Path) -> CertificateAuthority:
    folder.mkdir(parents=True, exist_ok=True)
    ca = certs.CertificateAuthority.generate("meshext test CA", days=1)
    cert_pem, key_pem = ca.issue(["127.0.0.1", "localhost"])
    (folder / "ca").mkdir(exist_ok=True)
    (folder / "server").mkdir(exist_ok=True)
    ca_file = folder / "ca" / "ca.crt"
    cert_file, key_file = folder / "server" / "server.crt", folder / "server" / "server.key"
    ca_file.write_bytes(ca.pem)
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    return CertificateAuthority(ca_file, cert_file, key_file)


@dataclass(frozen=True)
class TokenAuth:
    """Registry side of bearer-token auth: where tokens come from, who signs them."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass
class Registry:
    """A running registry process."""

    host: str
    scheme: str
    storage: Path
    log: Path
    process: subprocess.Popen[bytes]
    ca: CertificateAuthority | None = None
    username: str | None = None
    password: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def blob_data(self, digest: str) -> Path:
        """Where the registry stores blob ``digest`` on disk."""
        hex_digest = digest.removeprefix("sha256:")
        return (
            self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
        )

    def skopeo_args(self, prefix: str = "") -> list[str]:
        """skopeo options to reach this registry (``prefix``: "src-", "dest-" or none)."""
        args = []
        if self.ca is not None:
            args.append(f"--{prefix}cert-dir={self.ca.ca_file.parent}")
        else:
            args.append(f"--{prefix}tls-verify=false")
        if self.username:
            args.append(f"--{prefix}creds={self.username}:{self.password}")
        return args

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_registry(
    base: Path,
    *,
    htpasswd: bool = False,
    token: TokenAuth | None = None,
    ca: CertificateAuthority | None = None,
) -> Registry:
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host = f"127.0.0.1:{port}"
    storage = base / "storage"
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {host}",
        "  secret: meshext-tests",
    ]
    if ca is not None:
        lines += ["  tls:", f"    certificate: {ca.cert_file}", f"    key: {ca.key_file}"]
    username = password = None
    if htpasswd:
        users = base / "htpasswd"
        entry = subprocess.run(
            ["htpasswd", "-Bbn", USERNAME, PASSWORD], check=True, capture_output=True
        ).stdout
        users.write_bytes(entry)
        lines += ["auth:", "  htpasswd:", "    realm: meshext-tests", f"    path: {users}"]
        username, password = USERNAME, PASSWORD
    if token is not None:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.service}",
            f"    issuer: {token.issuer}",
            f"    rootcertbundle: {token.rootcertbundle}",
        ]
        username, password = USERNAME, PASSWORD
    config = base / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = base / "registry.log"
    with log.open("wb") as log_stream:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        )
    registry = Registry(
        host=host,
        scheme="https" if ca else "http",
        storage=storage,
        log=log,
        process=process,
        ca=ca,
        username=username,
        password=password,
    )
    try:
        _wait_ready(registry)
    except BaseException:
        registry.stop()
        raise
    return registry


def _wait_ready(registry: Registry) -> None:
    context = ssl.create_default_context(cafile=str(registry.ca.ca_file)) if registry.ca else None
    deadline = time.monotonic() + 30
    while True:
        if registry.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {registry.log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{registry.url}/v2/", timeout=2, context=context).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
