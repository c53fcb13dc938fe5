"""Cosign image signatures: the signed payload, the signature check, the verdict.

``cosign sign --key`` stores, for an image manifest digest ``D``, a signature
manifest whose layers are *simple-signing* payloads (media type
``application/vnd.dev.cosign.simplesigning.v1+json``) with the base64 signature in
the layer annotation ``dev.cosignproject.cosign/signature``. The payload is JSON
whose ``critical.image.docker-manifest-digest`` names the image it vouches for; the
signature is over the payload bytes exactly as stored: ECDSA P-256 with SHA-256 in
ASN.1 DER, or for Ed25519 keys Ed25519ph (RFC 8032, SHA-512 prehash, empty
context), which cosign 2.x uses; pure Ed25519, which older cosign wrote, is accepted
too.

Everything here is pure: :func:`judge` takes the signatures found (by
:mod:`meshext.images.signature_discovery`), the image digest and the trusted keys,
and says whether one signature by a trusted key vouches for that digest, and
otherwise lists what was found and why each candidate did not count. A signature
is counted only when its payload names the very digest being judged, so a valid
signature over another image (an older build, another tag) proves nothing.

All cryptography is done by libraries: ``cryptography`` for ECDSA and pure Ed25519,
PyNaCl's libsodium bindings for Ed25519ph (``cryptography`` has no prehashed
Ed25519). The only code written here is the cosign payload format, which no
maintained Python library reads for key-based signatures without also pulling in the
keyless (Fulcio/Rekor) machinery.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nacl.bindings import (
    crypto_sign_ed25519ph_final_verify,
    crypto_sign_ed25519ph_state,
    crypto_sign_ed25519ph_update,
)
from nacl.exceptions import BadSignatureError, CryptoError

from meshext.images.trust import PublicKey, TrustedKey

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_PAYLOAD_TYPE = "cosign container image signature"
MAX_PAYLOAD = 64 * 1024
MAX_SIGNATURES = 32
COSIGN_KIND = "cosign signature"


@dataclass(frozen=True)
class Signer:
    """Who vouched for an image or module, and in which form.

    Shown in status, ``describe`` and ``image inspect`` as ``<name>, <kind>``, e.g.
    ``ci.pub (sha256:…), cosign signature`` or ``ci.pub (sha256:…), sigstore bundle``.
    """

    name: str
    kind: str

    def __str__(self) -> str:
        return f"{self.name}, {self.kind}"


@dataclass(frozen=True)
class FoundSignature:
    """One signature layer as found, before any check."""

    payload: bytes
    signature_b64: str
    found_via: str
    """Where it came from, for messages: ``tag sha256-….sig``, ``referrers API``, …"""


@dataclass(frozen=True)
class SignatureVerdict:
    """The outcome of judging one image digest."""

    digest: str
    signer: Signer | None
    found_via: str
    findings: tuple[str, ...]

    @property
    def verified(self) -> bool:
        return self.signer is not None

    def explain(self) -> str:
        """Why the image is refused: what was found and why none of it counted."""
        if not self.findings:
            return (
                f"image {self.digest} has no cosign signature or sigstore bundle "
                f"(looked for {self.found_via})"
            )
        return (
            f"image {self.digest} has no valid signature by a trusted key or identity: "
            + "; ".join(self.findings)
        )


class PayloadError(ValueError):
    """A simple-signing payload that cannot be read."""


def signed_digest(payload: bytes) -> str:
    """The image digest a simple-signing payload vouches for."""
    try:
        document = json.loads(payload)
        critical = document["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("the payload is not JSON") from exc
    except (KeyError, TypeError) as exc:
        raise PayloadError(
            f"the payload has no critical.image.docker-manifest-digest ({exc})"
        ) from exc
    if kind != COSIGN_PAYLOAD_TYPE:
        raise PayloadError(f"the payload type is {kind!r}, not {COSIGN_PAYLOAD_TYPE!r}")
    if not isinstance(digest, str):
        raise PayloadError("critical.image.docker-manifest-digest is not a string")
    return digest


def decode_signature(signature_b64: str) -> bytes:
    try:
        return base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError("the signature is not base64") from exc


def public_key_signature_is_valid(key: PublicKey, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies with ``key`` (ECDSA with SHA-256,
    or Ed25519 pure or prehashed)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return _pure_ed25519_valid(key, message, signature) or _ed25519ph_valid(
            key, message, signature
        )
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _pure_ed25519_valid(key: ed25519.Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _ed25519ph_valid(key: ed25519.Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    state = crypto_sign_ed25519ph_state()
    crypto_sign_ed25519ph_update(state, message)
    try:
        return bool(crypto_sign_ed25519ph_final_verify(state, signature, key.public_bytes_raw()))
    except (BadSignatureError, CryptoError):
        return False


def signing_key(
    keys: tuple[TrustedKey, ...], message: bytes, signature: bytes
) -> TrustedKey | None:
    """The first trusted key under which ``signature`` over ``message`` verifies."""
    for key in keys:
        if public_key_signature_is_valid(key.key, message, signature):
            return key
    return None


def judge(
    digest: str,
    found: tuple[FoundSignature, ...],
    keys: tuple[TrustedKey, ...],
    looked_at: str,
    problems: tuple[str, ...] = (),
) -> SignatureVerdict:
    """Whether one of ``found`` is a valid signature by one of ``keys`` over ``digest``.

    ``problems`` (places that could not be read) are reported with the findings.
    """
    findings: list[str] = list(problems)
    for candidate in found:
        where = candidate.found_via
        try:
            raw = decode_signature(candidate.signature_b64)
            named = signed_digest(candidate.payload)
        except PayloadError as exc:
            findings.append(f"{where}: unreadable ({exc})")
            continue
        key = signing_key(keys, candidate.payload, raw)
        if key is None:
            findings.append(f"{where}: signed by no trusted key")
        elif named != digest:
            findings.append(f"{where}: signed by {key}, but for image {named}, not this one")
        else:
            return SignatureVerdict(digest, Signer(str(key), COSIGN_KIND), where, tuple(findings))
    return SignatureVerdict(digest, None, looked_at, tuple(findings))
