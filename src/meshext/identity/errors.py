"""Errors of the identity package: a CA that cannot be loaded or created, credentials
that cannot be written, an identity that is not a SPIFFE id of this mesh."""

from __future__ import annotations

from meshext.errors import MeshextError


class IdentityError(MeshextError):
    """A certificate, key or SPIFFE id is missing, unreadable or invalid."""

    retryable = False
