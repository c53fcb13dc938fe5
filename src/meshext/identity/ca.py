"""meshext's certificate authority: a self-signed root that signs short-lived workload
certificates and the control plane's serving certificate.

All X.509 work goes through ``cryptography``. Keys are ECDSA P-256 (small, quick to
generate and to verify in every TLS handshake). The root carries the trust domain as
its URI subject alternative name (``spiffe://<trust-domain>``), so whoever loads the
CA knows the trust domain without a second setting.

:func:`load_or_create` keeps the CA in a folder (``ca.crt``, ``ca.key`` readable by the
owner only, and an optional ``trust-bundle.pem`` of further roots still trusted while
a CA is being rotated); :func:`load_files` takes an operator's own certificate and key.
Creation is guarded by a lock so two processes starting together make one CA.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshext.identity.errors import IdentityError
from meshext.identity.spiffe import SCHEME, SpiffeId, check_trust_domain

CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
EXTRA_ROOTS_FILE: Final = "trust-bundle.pem"

CA_LIFETIME: Final = timedelta(days=3650)
WORKLOAD_LIFETIME: Final = timedelta(hours=24)
SERVER_LIFETIME: Final = timedelta(days=7)
#: Certificates start a little in the past so a peer whose clock is behind accepts them.
BACKDATE: Final = timedelta(minutes=5)

PRIVATE_KEY_FORMAT: Final = serialization.PrivateFormat.PKCS8


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A private key, its certificate and the roots that verify it, all PEM."""

    key_pem: bytes
    cert_pem: bytes
    bundle_pem: bytes
    not_before: datetime
    not_after: datetime

    def renew_after(self) -> datetime:
        """Half of the lifetime: renewing then leaves the other half for retries."""
        return self.not_before + (self.not_after - self.not_before) / 2


class CertificateAuthority:
    """A root certificate and its key, able to issue workload and server certificates."""

    def __init__(
        self,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        extra_roots: Sequence[x509.Certificate] = (),
    ) -> None:
        if certificate.public_key() != key.public_key():
            raise IdentityError("the CA key does not belong to the CA certificate")
        self.certificate = certificate
        self.key = key
        self.trust_domain = _trust_domain_of(certificate)
        self.extra_roots = tuple(extra_roots)

    @property
    def bundle_pem(self) -> bytes:
        """Every root a peer of this mesh must trust: this CA first, then older roots."""
        roots = (self.certificate, *self.extra_roots)
        return b"".join(root.public_bytes(serialization.Encoding.PEM) for root in roots)

    def issue_workload(
        self,
        identity: SpiffeId,
        *,
        lifetime: timedelta = WORKLOAD_LIFETIME,
        now: datetime | None = None,
    ) -> IssuedCertificate:
        """A new key and a certificate proving ``identity`` (client and server use)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), identity, lifetime=lifetime, now=now)
        return self._issued(key, cert)

    def issue_server(
        self,
        identity: SpiffeId,
        hosts: Sequence[str],
        *,
        lifetime: timedelta = SERVER_LIFETIME,
        now: datetime | None = None,
    ) -> IssuedCertificate:
        """The control plane's serving certificate: ``identity`` plus each of ``hosts``
        (names or IP addresses) clients may use to reach it."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), identity, lifetime=lifetime, now=now, hosts=hosts)
        return self._issued(key, cert)

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        identity: SpiffeId,
        *,
        lifetime: timedelta,
        now: datetime | None = None,
        hosts: Sequence[str] = (),
    ) -> x509.Certificate:
        """A certificate binding ``public_key`` to ``identity`` (and ``hosts``)."""
        if identity.trust_domain != self.trust_domain:
            raise IdentityError(
                f"{identity} is not in this CA's trust domain {self.trust_domain!r}"
            )
        start = (now or datetime.now(UTC)) - BACKDATE
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        names.extend(_host_name(host) for host in dict.fromkeys(hosts))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + BACKDATE + lifetime)
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(key_agreement=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        return builder.sign(self.key, hashes.SHA256())

    def _issued(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> IssuedCertificate:
        return IssuedCertificate(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM, PRIVATE_KEY_FORMAT, serialization.NoEncryption()
            ),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            bundle_pem=self.bundle_pem,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(trust_domain={self.trust_domain!r}, "
            f"expires={self.certificate.not_valid_after_utc:%Y-%m-%d})"
        )


def create(trust_domain: str, *, now: datetime | None = None) -> CertificateAuthority:
    """A new self-signed root for ``trust_domain``."""
    check_trust_domain(trust_domain)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshext"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshext root CA for {trust_domain}"),
        ]
    )
    start = (now or datetime.now(UTC)) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def load_or_create(directory: Path, trust_domain: str) -> CertificateAuthority:
    """The CA kept in ``directory``, created there (for ``trust_domain``) on first use."""
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(directory):
            if not cert_path.exists():
                ca = create(trust_domain)
                _write_private(key_path, _key_pem(ca.key))
                _write_public(cert_path, ca.certificate.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise IdentityError(f"cannot create the CA in {directory}: {exc}") from exc
    ca = load_files(cert_path, key_path, extra_roots=directory / EXTRA_ROOTS_FILE)
    if ca.trust_domain != trust_domain:
        raise IdentityError(
            f"the CA in {directory} is for trust domain {ca.trust_domain!r}, not {trust_domain!r}"
        )
    return ca


def load_files(
    cert_path: Path, key_path: Path, *, extra_roots: Path | None = None
) -> CertificateAuthority:
    """The CA whose PEM certificate and (unencrypted) PEM key are in these files."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        roots = (
            x509.load_pem_x509_certificates(extra_roots.read_bytes())
            if extra_roots is not None and extra_roots.exists()
            else []
        )
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{key_path}: the CA key must be an ECDSA key")
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca:
        raise IdentityError(f"{cert_path} is not a CA certificate")
    return CertificateAuthority(cert, key, extra_roots=roots)


def _key_usage(
    *, key_agreement: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """Digital signatures, plus what the certificate's role needs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _trust_domain_of(certificate: x509.Certificate) -> str:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(SCHEME) and "/" not in uri[len(SCHEME) :]:
            return check_trust_domain(uri[len(SCHEME) :])
    raise IdentityError(
        "the CA certificate has no spiffe://<trust-domain> subject alternative name"
    )


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, PRIVATE_KEY_FORMAT, serialization.NoEncryption()
    )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_private(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o644)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a new file beside ``path`` and rename it over ``path``, so a
    reader (Envoy watching the folder) sees the old content or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
