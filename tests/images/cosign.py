"""The real ``cosign`` command, built by ``scripts/setup.d/45-cosign.sh``, for tests.

Every cosign run gets a proxy that leads nowhere (``127.0.0.1:9``) for any host but
127.0.0.1, an empty ``TUF_ROOT`` and ``HOME``, and ``--tlog-upload=false``: signing
talks to the test registry on loopback and to nothing else.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.images.registry import Registry

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.d" / "45-cosign.sh"
KEY_PASSWORD = "cosign-test-password"


def find_cosign() -> Path:
    """The cached cosign binary, building it through the setup fragment if missing."""
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT} failed:\n{proc.stderr[-4000:]}")
    reported = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Path(reported["cosign"])


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


class Cosign:
    """Runs cosign in an isolated home; one instance per test session."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        (home / "tuf").mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "TUF_ROOT": str(self.home / "tuf"),
            "COSIGN_PASSWORD": KEY_PASSWORD,
            "COSIGN_YES": "true",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1",
        }

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.home,
            env={**self.env(), **(extra_env or {})},
            timeout=300,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"cosign {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def generate_key_pair(self, folder: Path) -> KeyPair:
        """``cosign generate-key-pair`` (ECDSA P-256) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        prefix = folder / "cosign"
        self.run("generate-key-pair", "--output-key-prefix", str(prefix))
        return KeyPair(folder / "cosign.key", folder / "cosign.pub")

    def import_key_pair(self, private_pem: Path, folder: Path) -> KeyPair:
        """``cosign import-key-pair`` of a PEM private key (for Ed25519 keys)."""
        folder.mkdir(parents=True, exist_ok=True)
        prefix = folder / "imported"
        self.run("import-key-pair", "--key", str(private_pem), "--output-key-prefix", str(prefix))
        return KeyPair(folder / "imported.key", folder / "imported.pub")

    def sign(
        self, key: KeyPair, image: str, registry: Registry, *, referrers: bool = False
    ) -> None:
        """``cosign sign`` ``image`` (by digest) in ``registry``; OCI 1.1 referrers if asked."""
        args = [
            "sign",
            "--key",
            str(key.private),
            "--tlog-upload=false",
            "--yes",
        ]
        extra: dict[str, str] = {}
        if registry.ca is not None:
            extra["SSL_CERT_FILE"] = str(registry.ca.ca_file)
        else:
            args += ["--allow-insecure-registry", "--allow-http-registry"]
        if registry.username and registry.password:
            args += ["--registry-username", registry.username]
            args += ["--registry-password", registry.password]
        if referrers:
            args.append("--registry-referrers-mode=oci-1-1")
            extra["COSIGN_EXPERIMENTAL"] = "1"
        self.run(*args, image, extra_env=extra)

    def sign_bundle(
        self,
        key: KeyPair,
        image: str,
        registry: Registry,
        *,
        certificate: Path | None = None,
        chain: Path | None = None,
    ) -> None:
        """``cosign sign --new-bundle-format``: a Sigstore bundle attached to ``image`` as
        an OCI 1.1 referrer, signed by ``key`` and, if given, carrying ``certificate``
        (which must certify ``key``'s public key; ``chain`` is its issuers' PEM).

        Needs a TLS registry (``registry.ca``): cosign writes bundles over HTTPS only.
        """
        if registry.ca is None:
            raise ValueError("cosign attaches bundles to TLS registries only")
        args = ["sign", "--key", str(key.private), "--tlog-upload=false", "--yes"]
        args.append("--new-bundle-format")
        if certificate is not None:
            args += ["--certificate", str(certificate)]
        if chain is not None:
            args += ["--certificate-chain", str(chain)]
        if registry.username and registry.password:
            args += ["--registry-username", registry.username]
            args += ["--registry-password", registry.password]
        self.run(*args, image, extra_env={"SSL_CERT_FILE": str(registry.ca.ca_file)})

    def sign_blob(self, key: KeyPair, blob: Path, signature: Path) -> None:
        """``cosign sign-blob`` ``blob``, writing the base64 signature to ``signature``."""
        self.run(
            "sign-blob",
            "--key",
            str(key.private),
            "--tlog-upload=false",
            "--yes",
            "--output-signature",
            str(signature),
            str(blob),
        )
