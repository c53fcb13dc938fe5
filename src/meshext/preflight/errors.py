"""Errors of the pre-flight sandbox.

::

    MeshextError
     └── PreflightError        the sandbox itself could not run (not the module's fault)

A module that fails its pre-flight is not an error of this kind: that is a result
(:class:`meshext.preflight.host.PreflightResult` with ``passed`` false).
"""

from __future__ import annotations

from meshext.errors import MeshextError


class PreflightError(MeshextError):
    """The sandbox could not run a pre-flight (unreadable module, wasmtime failure)."""
