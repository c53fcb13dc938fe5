"""A real registry with the OCI 1.1 referrers API, for tests.

Debian's ``docker-registry`` (distribution 2.8) has no referrers API, so bundles and
referrers-mode signatures are tested against ``tools/oci-registry``
(go-containerregistry's ``pkg/registry`` with referrers support), built by
``scripts/setup.d/46-oci-registry.sh``. It serves TLS only, on 127.0.0.1, with a
certificate from a CA the test session made, and keeps everything in memory.

The handle is a :class:`tests.images.registry.Registry`, so the image test helpers
(skopeo pushes, ``registry_config``, cosign) work with it unchanged; it has no
storage folder on disk.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.images.registry import CertificateAuthority, Registry, _wait_ready
from tests.network import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.d" / "46-oci-registry.sh"


def find_oci_registry() -> Path:
    """The cached registry binary, building it through the setup fragment if missing."""
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT} failed:\n{proc.stderr[-4000:]}")
    reported = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Path(reported["oci-registry"])


def start_oci_registry(base: Path, ca: CertificateAuthority) -> Registry:
    """``tools/oci-registry`` on a free loopback port, serving TLS with ``ca``'s certificate."""
    binary = find_oci_registry()
    base.mkdir(parents=True, exist_ok=True)
    host = f"127.0.0.1:{free_port()}"
    log = base / "oci-registry.log"
    command = [str(binary), "-listen", host, "-cert", str(ca.cert_file), "-key", str(ca.key_file)]
    with log.open("wb") as log_stream:
        process = subprocess.Popen(command, stdout=log_stream, stderr=subprocess.STDOUT)
    registry = Registry(
        host=host, scheme="https", storage=base / "no-storage", log=log, process=process, ca=ca
    )
    try:
        _wait_ready(registry)
    except BaseException:
        registry.stop()
        raise
    return registry
