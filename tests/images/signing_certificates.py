"""Code-signing certificate authorities made with ``cryptography`` for bundle tests.

A :class:`SigningAuthority` is a self-signed root (optionally with an intermediate)
that certifies a cosign key's public key for an email identity, with a Fulcio-style
OIDC issuer extension, so ``cosign sign --certificate`` can attach the certificate to
a Sigstore bundle without Fulcio. :func:`trusted_root_json` writes the authorities as
a Sigstore ``trusted_root.json``.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshext.images.certificate_trust import FULCIO_ISSUER_V2

ISSUER = "https://token.ci.example"
_HOUR = datetime.timedelta(hours=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _HOUR)
        .not_valid_after(now + 24 * _HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _der_utf8(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


@dataclass(frozen=True)
class SigningAuthority:
    """A root, an optional intermediate, and the key that issues leaf certificates."""

    root: x509.Certificate
    intermediate: x509.Certificate | None
    issuing_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, name: str, *, intermediate: bool = False) -> SigningAuthority:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _ca_certificate(f"{name} root", root_key, None)
        if not intermediate:
            return cls(root, None, root_key)
        middle_key = ec.generate_private_key(ec.SECP256R1())
        middle = _ca_certificate(f"{name} intermediate", middle_key, (root.subject, root_key))
        return cls(root, middle, middle_key)

    @property
    def issuer(self) -> x509.Certificate:
        return self.intermediate or self.root

    def write_root(self, path: Path) -> Path:
        path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        return path

    def write_chain(self, path: Path) -> Path:
        """The issuers of a leaf, nearest first, as ``cosign --certificate-chain`` takes."""
        chain = [c for c in (self.intermediate, self.root) if c is not None]
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        return path

    def certify(
        self,
        public_key_pem: Path,
        email: str,
        path: Path,
        *,
        issuer: str | None = ISSUER,
        code_signing: bool = True,
    ) -> Path:
        """A leaf certificate for the public key in ``public_key_pem`` naming ``email``."""
        public = serialization.load_pem_public_key(public_key_pem.read_bytes())
        assert isinstance(public, ec.EllipticCurvePublicKey)
        now = datetime.datetime.now(datetime.UTC)
        usage = (
            ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.issuer.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _HOUR)
            .not_valid_after(now + 24 * _HOUR)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(FULCIO_ISSUER_V2, _der_utf8(issuer)), critical=False
            )
        leaf = builder.sign(self.issuing_key, hashes.SHA256())
        path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        return path


def trusted_root_json(path: Path, *authorities: SigningAuthority) -> Path:
    """A Sigstore trusted root naming ``authorities`` (chains ordered leaf-most first)."""

    def entry(authority: SigningAuthority) -> dict[str, object]:
        chain = [c for c in (authority.intermediate, authority.root) if c is not None]
        return {
            "subject": {"organization": "meshext tests", "commonName": "signing"},
            "uri": "https://ca.invalid",
            "certChain": {
                "certificates": [
                    {
                        "rawBytes": base64.b64encode(
                            c.public_bytes(serialization.Encoding.DER)
                        ).decode()
                    }
                    for c in chain
                ]
            },
            "validFor": {"start": "2020-01-01T00:00:00Z"},
        }

    document = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [],
        "certificateAuthorities": [entry(a) for a in authorities],
        "ctlogs": [],
        "timestampAuthorities": [],
    }
    path.write_text(json.dumps(document, indent=2))
    return path


def identities_yaml(path: Path, *identities: tuple[str, str | None]) -> Path:
    lines = ["identities:"]
    for subject, issuer in identities:
        lines.append(f"  - subject: {subject}")
        if issuer is not None:
            lines.append(f"    issuer: {issuer}")
    path.write_text("\n".join(lines) + "\n")
    return path
