"""Which CA a meshext process uses, and the TLS server side built on it.

The CA is the operator's (``--mesh-ca-cert`` and ``--mesh-ca-key``; older roots still
trusted during a rotation in ``trust-bundle.pem`` beside the certificate) or meshext's
own, kept in the state folder and created on first use. ``meshext serve`` and
``meshext bootstrap`` on one host thus agree on it without configuration.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshext.identity import ca as ca_files
from meshext.identity.ca import CertificateAuthority
from meshext.identity.errors import IdentityError
from meshext.identity.peer import ServerCertificate
from meshext.identity.spiffe import DEFAULT_TRUST_DOMAIN
from meshext.identity.state import default_ca_dir


@dataclass(frozen=True)
class CaSettings:
    """Where the CA comes from: explicit files, else a folder (default: the state folder)."""

    cert: Path | None = None
    key: Path | None = None
    directory: Path | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def load(self) -> CertificateAuthority:
        if (self.cert is None) != (self.key is None):
            raise IdentityError("give both --mesh-ca-cert and --mesh-ca-key, or neither")
        if self.cert is not None and self.key is not None:
            extra = self.cert.parent / ca_files.EXTRA_ROOTS_FILE
            return ca_files.load_files(self.cert, self.key, extra_roots=extra)
        return ca_files.load_or_create(self.directory or default_ca_dir(), self.trust_domain)


def server_ssl_context(server: ServerCertificate) -> ssl.SSLContext:
    """A TLS server context presenting the control plane's certificate (for HTTPS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    refresh_ssl_context(context, server)
    return context


def refresh_ssl_context(context: ssl.SSLContext, server: ServerCertificate) -> None:
    """Load the current certificate into ``context`` (new handshakes use it).

    ``ssl`` loads keys only from files: they are written to a private temporary
    folder and removed at once."""
    issued = server.current()
    with tempfile.TemporaryDirectory(prefix="meshext-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(issued.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(issued.key_pem)
        context.load_cert_chain(cert, key)
