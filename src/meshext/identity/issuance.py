"""Credentials for a proxy on meshext's host: issued by the mesh CA, written to the
proxy's credentials folder, the bootstrap settings that use them, and their renewal."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from meshext.envoy import tls
from meshext.envoy.bootstrap import XdsTls
from meshext.identity.authority import CaSettings
from meshext.identity.ca import WORKLOAD_LIFETIME, CertificateAuthority
from meshext.identity.credentials import WrittenCredentials, issue_credentials, read_identity
from meshext.identity.errors import IdentityError
from meshext.identity.spiffe import DEFAULT_SERVICE_ACCOUNT, SpiffeId, control_plane_id
from meshext.identity.state import default_credentials_dir

_log = logging.getLogger(__name__)


def issue_for_proxy(
    settings: CaSettings,
    namespace: str,
    service_account: str,
    directory: Path | None = None,
    *,
    lifetime: timedelta = WORKLOAD_LIFETIME,
) -> tuple[WrittenCredentials, XdsTls]:
    """Issue ``namespace``/``service_account``'s credentials into ``directory`` (default
    the state folder's) and say how a bootstrap reaches the ADS server with them."""
    return proxy_credentials(
        settings.load(), namespace, service_account, directory, lifetime=lifetime
    )


def proxy_credentials(
    ca: CertificateAuthority,
    namespace: str,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    directory: Path | None = None,
    *,
    lifetime: timedelta = WORKLOAD_LIFETIME,
) -> tuple[WrittenCredentials, XdsTls]:
    """:func:`issue_for_proxy` with a CA already loaded."""
    identity = SpiffeId(ca.trust_domain, namespace, service_account)
    written = issue_credentials(
        ca,
        identity,
        directory or default_credentials_dir(namespace, service_account),
        lifetime=lifetime,
    )
    return written, XdsTls(written.files, control_plane_id(ca.trust_domain).uri)


async def keep_renewed(
    ca: CertificateAuthority,
    written: WrittenCredentials,
    *,
    lifetime: timedelta = WORKLOAD_LIFETIME,
) -> None:
    """Renew ``written`` at each half-life, forever (for a process that runs its proxies)."""
    while True:
        wait = (written.issued.renew_after() - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(wait, 1.0))
        written = issue_credentials(ca, written.identity, written.directory, lifetime=lifetime)


def renew_due(
    ca: CertificateAuthority, root: Path, *, now: datetime | None = None
) -> list[WrittenCredentials]:
    """Renew every credentials folder ``<root>/<namespace>/<service-account>`` whose
    certificate is past half its lifetime (or unreadable); returns those renewed.
    Folders of another trust domain are left alone."""
    renewed = []
    moment = now or datetime.now(UTC)
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        try:
            identity = read_identity(folder)
            cert = x509.load_pem_x509_certificate((folder / tls.CERTIFICATE_FILE).read_bytes())
        except (IdentityError, OSError, ValueError):
            continue
        if identity.trust_domain != ca.trust_domain:
            continue
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if moment >= start + (end - start) / 2:
            renewed.append(issue_credentials(ca, identity, folder))
    return renewed


async def keep_folders_renewed(
    ca: CertificateAuthority, root: Path, *, every: float = 600.0
) -> None:
    """:func:`renew_due` every ``every`` seconds, forever (``meshext serve`` runs it over
    the state folder's credentials, so proxies bootstrapped there stay valid)."""
    while True:
        for written in await asyncio.to_thread(renew_due, ca, root):
            _log.info("renewed %s in %s", written.identity, written.directory)
        await asyncio.sleep(every)
