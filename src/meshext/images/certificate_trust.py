"""Which certificate authorities and signer identities a mesh trusts for Sigstore bundles.

Besides public keys, the trusted keys folder (``serve --trusted-keys DIR``) may hold
what is needed to trust a bundle signed with a *certificate*:

* certificate authorities, from either or both of

  - ``trusted_root.json``, a Sigstore trusted root (``cosign trusted-root create``,
    or the one a private Sigstore deployment publishes): the certificate chain of
    each entry of ``certificateAuthorities`` is read; its last certificate is a
    trust anchor, the others are intermediates. Transparency logs, CT logs and
    timestamp authorities in it are not used (see docs/security.md, Limits), nor
    is ``validFor``: the certificates' own validity periods are checked;
  - ``*.crt`` files of PEM ``CERTIFICATE`` blocks: each self-signed one is a trust
    anchor, any other an intermediate that may complete a chain to an anchor;

* ``identities.yaml``, which names who may sign::

      identities:
        - subject: ci@example.com            # a SAN of the signing certificate
          issuer: https://token.example.com  # its OIDC issuer extension; optional

  ``subject`` is compared exactly with the certificate's email and URI subject
  alternative names; ``issuer``, when given, exactly with the Fulcio issuer
  extension (OID 1.3.6.1.4.1.57264.1.8, or the older 1.3.6.1.4.1.57264.1.1). A
  certificate chaining to a trusted authority but naming nobody listed proves
  nothing: any CI job of an organisation's CA could otherwise sign for the mesh.

Authorities without identities, or identities without authorities, are an error
naming the folder: half a configuration would refuse every certificate-signed image
while looking enabled.

Chain building and every signature check are done by ``cryptography``'s X.509
verifier (Web PKI rules for the authorities; for the signing certificate, any
extensions, but the code-signing extended key usage is required). The time checked
against is the verification time: offline there is no trusted record of when the
bundle was signed, so short-lived certificates (Fulcio's last ten minutes) stop
verifying once expired; an operator CA issues signing certificates for the time
their images are meant to run.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from meshext.images.trust import TrustConfigError

TRUSTED_ROOT = "trusted_root.json"
IDENTITIES = "identities.yaml"
CA_SUFFIX = ".crt"
_MAX_FILE = 256 * 1024
_MAX_CHAIN = 8
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)
FULCIO_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
FULCIO_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")


class CertificateRefused(ValueError):
    """A signing certificate that does not chain to a trusted authority or names
    no trusted identity; the message says which."""


@dataclass(frozen=True)
class TrustedIdentity:
    """One signer the operator trusts: a certificate SAN, and its issuer if named."""

    subject: str
    issuer: str | None = None

    def matches(self, subjects: tuple[str, ...], issuer: str | None) -> bool:
        if self.subject not in subjects:
            return False
        return self.issuer is None or self.issuer == issuer

    def __str__(self) -> str:
        return self.subject if self.issuer is None else f"{self.subject} (issuer {self.issuer})"


@dataclass(frozen=True)
class CertificateTrust:
    """Trust anchors, intermediates and identities read from the trusted keys folder."""

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    identities: tuple[TrustedIdentity, ...]

    def __post_init__(self) -> None:
        if not self.anchors or not self.identities:
            raise TrustConfigError("certificate trust needs both authorities and identities")


@dataclass(frozen=True)
class CertifiedSigner:
    """Who a verified certificate names, and the authority it chains to."""

    identity: TrustedIdentity
    subject: str
    issuer: str | None
    authority: str

    def __str__(self) -> str:
        issuer = f"issuer {self.issuer}, " if self.issuer else ""
        return f"{self.subject} ({issuer}CA {self.authority})"


def load_certificate_trust(folder: Path) -> CertificateTrust | None:
    """The certificate trust ``folder`` configures, or ``None`` if it names none."""
    anchors: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    root_file = folder / TRUSTED_ROOT
    if root_file.is_file():
        root_anchors, root_intermediates = parse_trusted_root(_read(root_file), str(root_file))
        anchors += root_anchors
        intermediates += root_intermediates
    for path in sorted(folder.iterdir()):
        if path.suffix == CA_SUFFIX and path.is_file():
            for certificate in parse_pem_certificates(_read(path), str(path)):
                (anchors if _self_signed(certificate) else intermediates).append(certificate)
    identities_file = folder / IDENTITIES
    identities = (
        parse_identities(_read(identities_file), str(identities_file))
        if identities_file.is_file()
        else ()
    )
    if not anchors and not identities:
        return None
    if not identities:
        raise TrustConfigError(
            f"{folder}: certificate authorities are trusted but {IDENTITIES} names no "
            "identity; list the certificate subjects (and issuers) that may sign"
        )
    if not anchors:
        raise TrustConfigError(
            f"{folder}: {IDENTITIES} names identities but no certificate authority is "
            f"trusted; add {TRUSTED_ROOT} or *{CA_SUFFIX} files"
        )
    return CertificateTrust(tuple(anchors), tuple(intermediates), identities)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(_MAX_FILE + 1)
    except OSError as exc:
        raise TrustConfigError(f"cannot read {path}: {exc}") from exc
    if len(data) > _MAX_FILE:
        raise TrustConfigError(f"{path}: over {_MAX_FILE} bytes")
    return data


def _self_signed(certificate: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def parse_pem_certificates(data: bytes, name: str) -> list[x509.Certificate]:
    """Every PEM certificate in ``data``; ``name`` is how errors name the file."""
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise TrustConfigError(f"{name}: no PEM 'CERTIFICATE' block")
    found: list[x509.Certificate] = []
    for number, block in enumerate(blocks, start=1):
        try:
            found.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise TrustConfigError(f"{name}: certificate {number} is unreadable: {exc}") from exc
    return found


def parse_trusted_root(
    data: bytes, name: str
) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Anchors and intermediates of a Sigstore ``trusted_root.json``."""
    try:
        document: Any = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrustConfigError(f"{name}: not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise TrustConfigError(f"{name}: not a JSON object")
    authorities = document.get("certificateAuthorities")
    if not isinstance(authorities, list) or not authorities:
        raise TrustConfigError(f"{name}: certificateAuthorities is missing or empty")
    anchors: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    for index, authority in enumerate(authorities):
        field = f"certificateAuthorities[{index}].certChain.certificates"
        try:
            chain = authority["certChain"]["certificates"]
        except (KeyError, TypeError) as exc:
            raise TrustConfigError(f"{name}: {field} is missing") from exc
        if not isinstance(chain, list) or not chain:
            raise TrustConfigError(f"{name}: {field} is not a non-empty list")
        certificates = []
        for position, entry in enumerate(chain):
            raw = entry.get("rawBytes") if isinstance(entry, dict) else None
            if not isinstance(raw, str):
                raise TrustConfigError(f"{name}: {field}[{position}].rawBytes is missing")
            try:
                certificates.append(
                    x509.load_der_x509_certificate(base64.b64decode(raw, validate=True))
                )
            except (binascii.Error, ValueError) as exc:
                raise TrustConfigError(
                    f"{name}: {field}[{position}].rawBytes is not a DER certificate ({exc})"
                ) from exc
        anchors.append(certificates[-1])
        intermediates.extend(certificates[:-1])
    return anchors, intermediates


def parse_identities(data: bytes, name: str) -> tuple[TrustedIdentity, ...]:
    """The identities of an ``identities.yaml``."""
    try:
        document: Any = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise TrustConfigError(f"{name}: not YAML ({exc})") from exc
    entries = document.get("identities") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise TrustConfigError(f"{name}: 'identities' must be a non-empty list")
    identities: list[TrustedIdentity] = []
    for index, entry in enumerate(entries):
        field = f"identities[{index}]"
        if not isinstance(entry, dict):
            raise TrustConfigError(f"{name}: {field} must be a mapping with 'subject'")
        unknown = set(entry) - {"subject", "issuer"}
        if unknown:
            raise TrustConfigError(f"{name}: {field} has unknown fields {sorted(unknown)}")
        subject, issuer = entry.get("subject"), entry.get("issuer")
        if not isinstance(subject, str) or not subject.strip():
            raise TrustConfigError(f"{name}: {field}.subject must be a non-empty string")
        if issuer is not None and (not isinstance(issuer, str) or not issuer.strip()):
            raise TrustConfigError(f"{name}: {field}.issuer must be a non-empty string")
        identities.append(TrustedIdentity(subject, issuer))
    return tuple(identities)


def certificate_subjects(certificate: x509.Certificate) -> tuple[str, ...]:
    """The email and URI subject alternative names of ``certificate``."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    emails = names.get_values_for_type(x509.RFC822Name)
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return tuple(emails) + tuple(uris)


def certificate_issuer(certificate: x509.Certificate) -> str | None:
    """The OIDC issuer a Fulcio-style certificate names, if any."""
    for oid in (FULCIO_ISSUER_V2, FULCIO_ISSUER_V1):
        try:
            extension = certificate.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if not isinstance(extension, x509.UnrecognizedExtension):
            continue
        raw = extension.value
        if oid == FULCIO_ISSUER_V2:
            raw = _der_utf8_string(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _der_utf8_string(raw: bytes) -> bytes:
    """The content of a DER UTF8String (tag 12, short or long length form).

    Written here because ``cryptography`` exposes unknown extensions as raw DER and
    this one tiny type is all that is needed from it.
    """
    if len(raw) < 2 or raw[0] != 0x0C:
        return b""
    length, start = raw[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(raw) < 2 + count:
            return b""
        length, start = int.from_bytes(raw[2 : 2 + count], "big"), 2 + count
    return raw[start : start + length] if len(raw) == start + length else b""


def _code_signing(
    _policy: verification.Policy, _certificate: x509.Certificate, usage: x509.ExtendedKeyUsage
) -> None:
    if ExtendedKeyUsageOID.CODE_SIGNING not in usage:
        raise ValueError("the certificate is not for code signing (extended key usage)")


def verify_certificate(
    trust: CertificateTrust,
    certificate: x509.Certificate,
    at: datetime.datetime | None = None,
) -> CertifiedSigner:
    """The trusted identity ``certificate`` names, if it chains to a trusted authority.

    Raises :class:`CertificateRefused` saying why not.
    """
    moment = at or datetime.datetime.now(datetime.UTC)
    signing_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _code_signing
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(trust.anchors)))
        .time(moment)
        .max_chain_depth(_MAX_CHAIN)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=signing_policy,
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(certificate, list(trust.intermediates))
    except verification.VerificationError as exc:
        raise CertificateRefused(
            f"certificate {_describe(certificate)} does not chain to a trusted authority ({exc})"
        ) from exc
    subjects = certificate_subjects(certificate)
    issuer = certificate_issuer(certificate)
    for identity in trust.identities:
        if identity.matches(subjects, issuer):
            authority = verified.chain[-1].subject.rfc4514_string() or "(unnamed)"
            return CertifiedSigner(identity, identity.subject, issuer, authority)
    shown_issuer = f", issuer {issuer}" if issuer else ", no issuer"
    raise CertificateRefused(
        f"certificate {_describe(certificate)} names {', '.join(subjects) or 'no subject'}"
        f"{shown_issuer}, which is no trusted identity"
    )


def _describe(certificate: x509.Certificate) -> str:
    return f"serial {certificate.serial_number:x}"
