"""Sigstore bundles attached to images, verified offline.

``cosign sign --new-bundle-format`` stores, for an image manifest digest ``D``, an
OCI 1.1 referrer of ``D`` (``artifactType``
``application/vnd.dev.sigstore.bundle.v0.3+json``) whose one layer is a Sigstore
bundle: the signature, and the material to check it with. Two contents are read:

* a DSSE envelope (what cosign writes) whose payload is an in-toto statement: the
  signature is over DSSE's pre-authentication encoding of the payload type and
  payload, and the statement's ``subject`` entries name the images it vouches for
  by ``sha256`` digest;
* a message signature: the signature is over an artifact whose SHA-256 the bundle
  carries; the artifact is the image manifest, so that digest is the image digest.

A bundle counts for image ``D`` only if it names ``D`` (a bundle for another image
proves nothing) and its signature verifies either

* with one of the trusted public keys (the bundle's key hint is not relied on: every
  trusted key is tried), or
* with the certificate in the bundle, when that certificate chains to an authority
  and names an identity the operator trusts (:mod:`meshext.images.certificate_trust`).

Offline means no transparency log and no timestamp authority: a bundle's
``tlogEntries`` and ``timestampVerificationData`` are not checked (nor required),
so a signature is trusted on the key or certificate alone; docs/security.md lists
this under Limits.

The ``sigstore`` package (sigstore-python) was evaluated and is not used: its
verifier requires a transparency log inclusion proof or signed timestamp in every
bundle, verifies identities only for Fulcio-issued certificates with an embedded
SCT matching a CT log of its trusted root, and fetches that root through TUF over the
network by default. None of that holds for key-signed bundles made with
``--tlog-upload=false`` or for an operator's own CA. What is written here is the
bundle and in-toto JSON layout and DSSE's pre-authentication encoding (a few lines
of the DSSE specification); all cryptography is ``cryptography``'s (and PyNaCl's for
Ed25519ph, through :func:`meshext.images.signatures.public_key_signature_is_valid`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from meshext.images.certificate_trust import (
    CertificateRefused,
    CertificateTrust,
    verify_certificate,
)
from meshext.images.signatures import (
    SignatureVerdict,
    Signer,
    public_key_signature_is_valid,
)
from meshext.images.trust import TrustedKey

BUNDLE_ARTIFACT = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_MEDIA_TYPES = frozenset(
    {
        BUNDLE_ARTIFACT,
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    }
)
BUNDLE_KIND = "sigstore bundle"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPES = frozenset(
    {"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}
)
MAX_BUNDLE = 64 * 1024
_MAX_SUBJECTS = 64


class BundleError(ValueError):
    """A bundle that cannot be read; the message says which field."""


@dataclass(frozen=True)
class FoundBundle:
    """One bundle as found, before any check."""

    data: bytes
    found_via: str


@dataclass(frozen=True)
class SigstoreBundle:
    """What a bundle signs and with which material."""

    content: str
    """``DSSE envelope`` or ``message signature``."""
    signed: bytes
    """The bytes the signature is over, or their SHA-256 when ``prehashed``."""
    prehashed: bool
    signature: bytes
    subjects: tuple[str, ...]
    """The image digests (``sha256:<hex>``) the bundle vouches for."""
    certificate: x509.Certificate | None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what a DSSE signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{field} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{field} is not base64") from exc


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{field} is missing or not an object")
    return value


def parse_bundle(data: bytes) -> SigstoreBundle:
    """The content of a Sigstore bundle (JSON, versions 0.1 to 0.3)."""
    if len(data) > MAX_BUNDLE:
        raise BundleError(f"over {MAX_BUNDLE} bytes")
    try:
        document = _object(json.loads(data), "the bundle")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError("not JSON") from exc
    media_type = document.get("mediaType")
    if media_type not in BUNDLE_MEDIA_TYPES:
        raise BundleError(f"mediaType {media_type!r} is not a Sigstore bundle 0.1-0.3")
    certificate = _certificate(
        _object(document.get("verificationMaterial"), "verificationMaterial")
    )
    if "dsseEnvelope" in document:
        return _dsse(_object(document["dsseEnvelope"], "dsseEnvelope"), certificate)
    if "messageSignature" in document:
        return _message(_object(document["messageSignature"], "messageSignature"), certificate)
    raise BundleError("neither dsseEnvelope nor messageSignature is present")


def _certificate(material: dict[str, Any]) -> x509.Certificate | None:
    if "certificate" in material:
        raw = _b64(
            _object(material["certificate"], "verificationMaterial.certificate").get("rawBytes"),
            "verificationMaterial.certificate.rawBytes",
        )
    elif "x509CertificateChain" in material:
        chain = _object(
            material["x509CertificateChain"], "verificationMaterial.x509CertificateChain"
        ).get("certificates")
        if not isinstance(chain, list) or not chain:
            raise BundleError("verificationMaterial.x509CertificateChain.certificates is empty")
        raw = _b64(
            _object(chain[0], "x509CertificateChain.certificates[0]").get("rawBytes"),
            "verificationMaterial.x509CertificateChain.certificates[0].rawBytes",
        )
    else:
        return None
    try:
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise BundleError(f"the certificate is unreadable ({exc})") from exc


def _dsse(envelope: dict[str, Any], certificate: x509.Certificate | None) -> SigstoreBundle:
    payload_type = envelope.get("payloadType")
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise BundleError(
            f"dsseEnvelope.payloadType is {payload_type!r}, not {IN_TOTO_PAYLOAD_TYPE!r}"
        )
    payload = _b64(envelope.get("payload"), "dsseEnvelope.payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise BundleError("dsseEnvelope.signatures must hold exactly one signature")
    signature = _b64(
        _object(signatures[0], "dsseEnvelope.signatures[0]").get("sig"),
        "dsseEnvelope.signatures[0].sig",
    )
    return SigstoreBundle(
        "DSSE envelope",
        pae(payload_type, payload),
        False,
        signature,
        statement_subjects(payload),
        certificate,
    )


def statement_subjects(payload: bytes) -> tuple[str, ...]:
    """The ``sha256`` digests an in-toto statement's subjects name."""
    try:
        statement = _object(json.loads(payload), "the in-toto statement")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError("the DSSE payload is not JSON") from exc
    if statement.get("_type") not in STATEMENT_TYPES:
        raise BundleError(f"the statement _type {statement.get('_type')!r} is not in-toto's")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise BundleError("the statement names no subject")
    found: list[str] = []
    for subject in subjects[:_MAX_SUBJECTS]:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        value = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(value, str) and len(value) == 64:
            found.append(f"sha256:{value.lower()}")
    return tuple(found)


def _message(signed: dict[str, Any], certificate: x509.Certificate | None) -> SigstoreBundle:
    digest = _object(signed.get("messageDigest"), "messageSignature.messageDigest")
    if digest.get("algorithm") != "SHA2_256":
        raise BundleError(
            f"messageSignature.messageDigest.algorithm {digest.get('algorithm')!r} is not SHA2_256"
        )
    value = _b64(digest.get("digest"), "messageSignature.messageDigest.digest")
    if len(value) != 32:
        raise BundleError("messageSignature.messageDigest.digest is not 32 bytes")
    signature = _b64(signed.get("signature"), "messageSignature.signature")
    return SigstoreBundle(
        "message signature", value, True, signature, (f"sha256:{value.hex()}",), certificate
    )


def _valid_with(
    key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey, bundle: SigstoreBundle
) -> bool:
    if bundle.prehashed:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        algorithm: ec.ECDSA = ec.ECDSA(Prehashed(hashes.SHA256()))
    elif isinstance(key, ed25519.Ed25519PublicKey):
        return public_key_signature_is_valid(key, bundle.signed, bundle.signature)
    else:
        algorithm = ec.ECDSA(_curve_hash(key))
    try:
        key.verify(bundle.signature, bundle.signed, algorithm)
    except InvalidSignature:
        return False
    return True


def _curve_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    if isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    if isinstance(key.curve, ec.SECP521R1):
        return hashes.SHA512()
    return hashes.SHA256()


def bundle_signer(
    bundle: SigstoreBundle,
    keys: tuple[TrustedKey, ...],
    certificates: CertificateTrust | None,
    at: datetime.datetime | None = None,
) -> Signer:
    """Who signed ``bundle``, among the trusted keys and identities.

    Raises :class:`BundleError` saying why no trusted signer vouches for it.
    """
    for key in keys:
        if _valid_with(key.key, bundle):
            return Signer(str(key), BUNDLE_KIND)
    if bundle.certificate is None:
        raise BundleError("signed by no trusted key")
    if certificates is None:
        raise BundleError("signed with a certificate, and no certificate authority is trusted")
    public = bundle.certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise BundleError(f"the certificate's {type(public).__name__} key is not supported")
    if not _valid_with(public, bundle):
        raise BundleError("the signature does not verify with the bundle's certificate")
    try:
        certified = verify_certificate(certificates, bundle.certificate, at)
    except CertificateRefused as exc:
        raise BundleError(str(exc)) from exc
    return Signer(str(certified), BUNDLE_KIND)


def judge_bundles(
    digest: str,
    found: tuple[FoundBundle, ...],
    keys: tuple[TrustedKey, ...],
    certificates: CertificateTrust | None,
    looked_at: str,
    at: datetime.datetime | None = None,
) -> SignatureVerdict:
    """Whether one of ``found`` is a bundle for ``digest`` by a trusted signer."""
    findings: list[str] = []
    for candidate in found:
        where = candidate.found_via
        try:
            bundle = parse_bundle(candidate.data)
        except BundleError as exc:
            findings.append(f"{where}: unreadable bundle ({exc})")
            continue
        if digest not in bundle.subjects:
            named = ", ".join(bundle.subjects) or "no sha256 digest"
            findings.append(f"{where}: a {bundle.content} for {named}, not this image")
            continue
        try:
            signer = bundle_signer(bundle, keys, certificates, at)
        except BundleError as exc:
            findings.append(f"{where}: {exc}")
            continue
        return SignatureVerdict(digest, signer, where, tuple(findings))
    return SignatureVerdict(digest, None, looked_at, tuple(findings))
