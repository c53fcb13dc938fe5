"""Credentials for a proxy on meshext's host: issued by the mesh CA, written to the
proxy's credentials folder, and the bootstrap settings that use them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshext.envoy.bootstrap import XdsTls
from meshext.identity.authority import CaSettings
from meshext.identity.ca import WORKLOAD_LIFETIME, CertificateAuthority
from meshext.identity.credentials import WrittenCredentials, issue_credentials
from meshext.identity.spiffe import DEFAULT_SERVICE_ACCOUNT, SpiffeId, control_plane_id
from meshext.identity.state import default_credentials_dir


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
