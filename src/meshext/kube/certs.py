"""A self-signed CA and a serving certificate for the conversion webhook.

For tests and for clusters without cert-manager: ``meshext kube certs`` writes the
files, the CA goes into the CRD's ``caBundle``, the pair into the webhook's Secret.
:class:`CertificateAuthority` is the CA on its own, for callers (tests) that need
more than one certificate from it or a client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServingCertificate:
    """PEM bytes: the CA certificate, and the serving certificate with its key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` (0600) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        ca, cert, key = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
        ca.write_bytes(self.ca_pem)
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(self.key_pem)
        return ca, cert, key


def service_hosts(namespace: str, name: str) -> list[str]:
    """The DNS names the API server uses for a webhook Service."""
    return [
        name,
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ]


def self_signed(hosts: Sequence[str], *, days: int = 365) -> ServingCertificate:
    """A fresh CA and a certificate for ``hosts`` (DNS names or IP addresses) signed by it."""
    if not hosts:
        raise ValueError("at least one host name or address is needed")
    ca = CertificateAuthority.generate(days=days)
    cert_pem, key_pem = ca.issue(hosts)
    return ServingCertificate(ca_pem=ca.pem, cert_pem=cert_pem, key_pem=key_pem)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA key and its self-signed certificate; signs certificates valid as long as it is."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, name: str = "meshext webhook CA", *, days: int = 365) -> CertificateAuthority:
        """A fresh CA called ``name``, valid from five minutes ago for ``days`` days."""
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        hosts: Sequence[str],
        *,
        subject: x509.Name | None = None,
        usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
    ) -> tuple[bytes, bytes]:
        """PEM certificate and key for ``hosts`` (DNS names or IP addresses, possibly none).

        The subject is ``subject``, else the first host as common name; ``usage`` is the
        extended key usage (a server certificate unless told otherwise).
        """
        if subject is None:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.certificate.not_valid_before_utc)
            .not_valid_after(self.certificate.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
                critical=False,
            )
        cert = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
        ).sign(self.key, hashes.SHA256())
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(pem), key_pem


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
