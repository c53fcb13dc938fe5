"""A proxy's credentials folder: its key, certificate and trust bundle, as PEM files
for any TLS client and as the SDS documents Envoy watches (:mod:`meshext.envoy.tls`).

Every file is replaced by an atomic rename, the SDS documents last, so Envoy (which
reloads on a rename into the folder) never sees a key without its certificate.
Renewal is writing the folder again (:func:`issue_credentials`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from meshext.envoy import tls
from meshext.identity.ca import (
    WORKLOAD_LIFETIME,
    CertificateAuthority,
    IssuedCertificate,
    write_atomically,
)
from meshext.identity.errors import IdentityError
from meshext.identity.peer import spiffe_id_of
from meshext.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class WrittenCredentials:
    files: tls.CredentialFiles
    identity: SpiffeId
    issued: IssuedCertificate

    @property
    def directory(self) -> Path:
        return Path(self.files.directory)

    @property
    def cert_path(self) -> Path:
        return self.directory / tls.CERTIFICATE_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / tls.KEY_FILE

    @property
    def bundle_path(self) -> Path:
        return self.directory / tls.BUNDLE_FILE


def issue_credentials(
    ca: CertificateAuthority,
    identity: SpiffeId,
    directory: Path,
    *,
    lifetime: timedelta = WORKLOAD_LIFETIME,
) -> WrittenCredentials:
    """Issue a new key and certificate for ``identity`` and write them to ``directory``."""
    return write_credentials(directory, identity, ca.issue_workload(identity, lifetime=lifetime))


def write_credentials(
    directory: Path, identity: SpiffeId, issued: IssuedCertificate
) -> WrittenCredentials:
    directory = directory.absolute()
    files = tls.CredentialFiles(str(directory))
    key, cert, bundle = (
        issued.key_pem.decode(),
        issued.cert_pem.decode(),
        issued.bundle_pem.decode(),
    )
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(directory / tls.KEY_FILE, issued.key_pem, mode=0o600)
        write_atomically(directory / tls.CERTIFICATE_FILE, issued.cert_pem, mode=0o644)
        write_atomically(directory / tls.BUNDLE_FILE, issued.bundle_pem, mode=0o644)
        write_atomically(Path(files.bundle_sds), _json(tls.bundle_sds_document(bundle)), mode=0o644)
        write_atomically(
            Path(files.certificate_sds),
            _json(tls.certificate_sds_document(key, cert)),
            mode=0o600,
        )
    except OSError as exc:
        raise IdentityError(f"cannot write credentials to {directory}: {exc}") from exc
    return WrittenCredentials(files, identity, issued)


def read_identity(directory: Path) -> SpiffeId:
    """The identity of the certificate in a credentials folder (to renew it as is)."""

    path = directory / tls.CERTIFICATE_FILE
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read the certificate {path}: {exc}") from exc
    identity = spiffe_id_of(cert)
    if identity is None:
        raise IdentityError(f"{path} holds no SPIFFE id of the form spiffe://<td>/ns/<ns>/sa/<sa>")
    return identity


def _json(document: object) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()
