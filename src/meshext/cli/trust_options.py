"""``--trusted-keys`` and ``--signature-policy``: the signature policy of a command.

``--trusted-keys DIR`` alone turns enforcement on (keys in ``DIR/<namespace>/`` are
trusted in addition for that namespace's extensions); ``--signature-policy`` chooses
``enforce``, ``warn`` or ``off`` explicitly (``warn`` and ``enforce`` need keys).
Without either, signatures are not checked.

The folder may also trust certificate-signed Sigstore bundles: ``trusted_root.json``
and/or ``*.crt`` authorities plus ``identities.yaml``
(:mod:`meshext.images.certificate_trust`); then it needs no public key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from meshext.images.certificate_trust import load_certificate_trust
from meshext.images.trust import (
    SIGNATURES_OFF,
    SignatureMode,
    SignaturePolicy,
    TrustConfigError,
    load_namespace_keys,
    load_trusted_keys,
)

F = TypeVar("F", bound=Callable[..., Any])


def signature_options(command: F) -> F:
    """Add ``--trusted-keys`` and ``--signature-policy`` to a click command."""
    command = click.option(
        "--signature-policy",
        type=click.Choice([m.value for m in SignatureMode]),
        default=None,
        help="What an image without a valid signature by a trusted key does "
        "(default: enforce with --trusted-keys, else off).",
    )(command)
    return click.option(
        "--trusted-keys",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="Folder of PEM public keys (*.pem, *.pub) whose cosign signatures and Sigstore "
        "bundles are trusted; DIR/<namespace>/ adds keys for that namespace's extensions; "
        "trusted_root.json / *.crt with identities.yaml trust certificate-signed bundles.",
    )(command)


def signature_policy(trusted_keys: Path | None, mode: str | None) -> SignaturePolicy:
    """The policy the two options describe; a usage error if they contradict."""
    chosen = SignatureMode(mode) if mode else None
    if chosen is SignatureMode.OFF or (chosen is None and trusted_keys is None):
        return SIGNATURES_OFF
    if trusted_keys is None:
        raise click.UsageError(f"--signature-policy {mode} needs --trusted-keys DIR")
    try:
        certificates = load_certificate_trust(trusted_keys)
        keys = load_trusted_keys(trusted_keys, required=certificates is None)
        namespaces = load_namespace_keys(trusted_keys)
    except TrustConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-keys") from exc
    return SignaturePolicy(chosen or SignatureMode.ENFORCE, keys, namespaces, certificates)
