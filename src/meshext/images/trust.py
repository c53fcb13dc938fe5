"""Which keys a mesh trusts to sign extension images, and what happens without them.

The operator names a folder of PEM public keys (``serve --trusted-keys DIR``): every
``*.pem`` / ``*.pub`` file in it holds one or more ``PUBLIC KEY`` blocks, each an
ECDSA P-256 or Ed25519 key (the kinds ``cosign generate-key-pair`` and
``cosign import-key-pair`` produce). Keys are parsed with ``cryptography``; a file
that names itself a key but does not parse is an error naming the file, because a
key the operator meant to trust silently missing would refuse every image signed by
it (or, worse, hide a typo in a policy believed to be on).

A subfolder named like a namespace holds keys that are trusted *in addition* for
that namespace's extensions only (``DIR/team-a/*.pub``): a namespace can add signers
for its own extensions, never remove the mesh's or turn the policy off.

A key is named in status and ``describe`` by its file (``team-a/ci.pub`` for a
namespace key) and a fingerprint: the first 16 hex digits of the SHA-256 of its DER
``SubjectPublicKeyInfo``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from meshext.errors import MeshextError

if TYPE_CHECKING:
    from meshext.images.certificate_trust import CertificateTrust

KEY_SUFFIXES = (".pem", ".pub")
_MAX_KEY_FILE = 64 * 1024
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class TrustConfigError(MeshextError):
    """The trusted-keys folder or a key in it cannot be used."""


class SignatureMode(StrEnum):
    """What a missing or bad signature does to an image."""

    OFF = "off"
    """Signatures are not looked at."""
    WARN = "warn"
    """Signatures are checked and reported; an image without a trusted one still runs."""
    ENFORCE = "enforce"
    """Only images with a valid signature by a trusted key run."""


@dataclass(frozen=True)
class TrustedKey:
    """One public key the mesh trusts, with the name it is reported under."""

    name: str
    fingerprint: str
    key: PublicKey

    @property
    def algorithm(self) -> str:
        return "ed25519" if isinstance(self.key, ed25519.Ed25519PublicKey) else "ecdsa-p256"

    def __str__(self) -> str:
        return f"{self.name} (sha256:{self.fingerprint})"


@dataclass(frozen=True)
class SignaturePolicy:
    """The mode and the keys; ``keys`` may only be empty when the mode is off."""

    mode: SignatureMode = SignatureMode.OFF
    keys: tuple[TrustedKey, ...] = ()
    namespace_keys: tuple[tuple[str, tuple[TrustedKey, ...]], ...] = ()
    """Keys trusted in addition for one namespace's extensions, by namespace."""
    certificates: CertificateTrust | None = None
    """Authorities and identities trusted for certificate-signed Sigstore bundles."""

    def __post_init__(self) -> None:
        if self.mode is not SignatureMode.OFF and not self.keys and self.certificates is None:
            raise TrustConfigError(f"signature policy {self.mode.value!r} needs trusted keys")

    @property
    def active(self) -> bool:
        return self.mode is not SignatureMode.OFF

    def keys_for(self, namespace: str) -> tuple[TrustedKey, ...]:
        """The mesh's keys, then those ``namespace`` added for its own extensions."""
        for name, extra in self.namespace_keys:
            if name == namespace:
                return self.keys + extra
        return self.keys

    def has_own_keys(self, namespace: str) -> bool:
        return any(name == namespace for name, _ in self.namespace_keys)


SIGNATURES_OFF = SignaturePolicy()


def parse_public_keys(data: bytes, name: str) -> tuple[TrustedKey, ...]:
    """The public keys in PEM text ``data``; ``name`` is how they are reported."""
    blocks = [m for m in _PEM_BLOCK.finditer(data) if m.group(1) == b"PUBLIC KEY"]
    if not blocks:
        raise TrustConfigError(f"{name}: no PEM 'PUBLIC KEY' block")
    keys: list[TrustedKey] = []
    for number, block in enumerate(blocks, start=1):
        label = name if len(blocks) == 1 else f"{name}#{number}"
        try:
            key = serialization.load_pem_public_key(block.group(0))
        except (ValueError, TypeError) as exc:
            raise TrustConfigError(f"{label}: not a readable public key: {exc}") from exc
        if isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise TrustConfigError(
                    f"{label}: ECDSA curve {key.curve.name} is not supported (use P-256)"
                )
        elif not isinstance(key, ed25519.Ed25519PublicKey):
            raise TrustConfigError(
                f"{label}: {type(key).__name__} keys are not supported (use ECDSA P-256 or Ed25519)"
            )
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        keys.append(TrustedKey(label, hashlib.sha256(der).hexdigest()[:16], key))
    return tuple(keys)


def load_namespace_keys(folder: Path) -> tuple[tuple[str, tuple[TrustedKey, ...]], ...]:
    """The keys of each subfolder of ``folder`` named like a namespace, by namespace."""
    found: list[tuple[str, tuple[TrustedKey, ...]]] = []
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        if not _NAMESPACE.match(path.name):
            raise TrustConfigError(
                f"{path}: a subfolder of the trusted keys folder names a namespace, "
                f"and {path.name!r} is not a namespace name"
            )
        keys = load_trusted_keys(path, prefix=f"{path.name}/")
        found.append((path.name, keys))
    return tuple(found)


def load_trusted_keys(
    folder: Path, prefix: str = "", *, required: bool = True
) -> tuple[TrustedKey, ...]:
    """Every public key in the ``*.pem`` and ``*.pub`` files directly in ``folder``;
    none is an error when ``required``."""
    if not folder.is_dir():
        raise TrustConfigError(f"trusted keys folder {folder} does not exist or is not a folder")
    keys: list[TrustedKey] = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in KEY_SUFFIXES or not path.is_file():
            continue
        try:
            with path.open("rb") as stream:
                data = stream.read(_MAX_KEY_FILE + 1)
        except OSError as exc:
            raise TrustConfigError(f"cannot read trusted key {path}: {exc}") from exc
        if len(data) > _MAX_KEY_FILE:
            raise TrustConfigError(f"{path}: over {_MAX_KEY_FILE} bytes, not a public key file")
        keys.extend(parse_public_keys(data, prefix + path.name))
    if not keys and required:
        raise TrustConfigError(f"trusted keys folder {folder} holds no *.pem or *.pub public key")
    seen: dict[str, TrustedKey] = {}
    for key in keys:
        seen.setdefault(key.fingerprint, key)
    return tuple(seen.values())
