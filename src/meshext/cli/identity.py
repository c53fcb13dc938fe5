"""Options and commands about the mesh CA and proxies' credentials.

``meshext credentials issue`` writes (or renews) a credentials folder; running it
again before the certificate's half-life (for instance from a timer) is how a proxy
started from ``meshext bootstrap`` keeps a valid certificate without a restart.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from meshext.identity.authority import CaSettings
from meshext.identity.credentials import read_identity
from meshext.identity.errors import IdentityError
from meshext.identity.exchange import request_certificate
from meshext.identity.issuance import issue_for_proxy
from meshext.identity.spiffe import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN

F = TypeVar("F", bound=Callable[..., Any])


def ca_options(function: F) -> F:
    """``--mesh-ca-cert``, ``--mesh-ca-key`` and ``--trust-domain``."""
    options = [
        click.option(
            "--mesh-ca-cert",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="The mesh CA's certificate (PEM); default: a CA kept in meshext's state folder.",
        ),
        click.option(
            "--mesh-ca-key",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="The mesh CA's private key (PEM, ECDSA), with --mesh-ca-cert.",
        ),
        click.option(
            "--trust-domain",
            default=DEFAULT_TRUST_DOMAIN,
            show_default=True,
            help="Trust domain of the CA meshext creates on first use.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def ca_settings(
    mesh_ca_cert: Path | None, mesh_ca_key: Path | None, trust_domain: str
) -> CaSettings:
    return CaSettings(cert=mesh_ca_cert, key=mesh_ca_key, trust_domain=trust_domain)


@click.group()
def credentials() -> None:
    """Workload credentials issued by the mesh CA."""


@credentials.command("issue")
@click.option("--namespace", "-n", default=None, help="Namespace of the identity.")
@click.option("--service-account", default=None, help=f"Default: {DEFAULT_SERVICE_ACCOUNT}.")
@click.option(
    "--credentials-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write; an existing one is renewed with the identity it holds.",
)
@click.option(
    "--ttl-hours",
    type=click.IntRange(1, 24 * 365),
    default=24,
    show_default=True,
    help="Validity of the issued certificate, in hours.",
)
@ca_options
def issue(
    namespace: str | None,
    service_account: str | None,
    credentials_dir: Path | None,
    ttl_hours: int,
    mesh_ca_cert: Path | None,
    mesh_ca_key: Path | None,
    trust_domain: str,
) -> None:
    """Issue (or renew) a proxy's key and certificate into its credentials folder."""
    try:
        if namespace is None:
            if credentials_dir is None:
                raise IdentityError(
                    "give --namespace, or --credentials-dir of existing credentials"
                )
            held = read_identity(credentials_dir)
            namespace, service_account = held.namespace, service_account or held.service_account
        written, _ = issue_for_proxy(
            ca_settings(mesh_ca_cert, mesh_ca_key, trust_domain),
            namespace,
            service_account or DEFAULT_SERVICE_ACCOUNT,
            credentials_dir,
            lifetime=timedelta(hours=ttl_hours),
        )
    except IdentityError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(
        f"{written.identity} valid until {written.issued.not_after:%Y-%m-%d %H:%M:%S} UTC "
        f"in {written.directory}"
    )


@credentials.command("fetch")
@click.option("--ca-url", required=True, help="meshext's certificate exchange, https://host:port.")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The projected service-account token (audience: meshext's --token-audience).",
)
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The mesh CA's certificate, to verify the exchange.",
)
@click.option(
    "--credentials-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the key, certificate and CA bundle to.",
)
def fetch(ca_url: str, token_file: Path, ca_bundle: Path, credentials_dir: Path) -> None:
    """Exchange a service-account token for a certificate (Kubernetes mode)."""
    try:
        written = asyncio.run(
            request_certificate(
                ca_url, token_file.read_text().strip(), ca_bundle.read_bytes(), credentials_dir
            )
        )
    except IdentityError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(
        f"{written.identity} valid until {written.issued.not_after:%Y-%m-%d %H:%M:%S} UTC "
        f"in {written.directory}"
    )
