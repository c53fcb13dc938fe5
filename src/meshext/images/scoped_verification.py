"""Verifying an extension's image with the policy of the scope it lives in.

On Kubernetes (the controller, and ``serve --kubeconfig``), each extension's
:class:`ScopedTrust` (its mesh's mode and keys, its namespace's own keys) is decided
per resolve and the image resolved inside :func:`signature_scope` (see
:mod:`meshext.kube.scoped_resolution`). :class:`ScopedSignatureVerifier` then checks
with exactly that policy; outside any scope (the CLI, ``serve`` from a folder) it is
the plain :class:`SignatureVerifier` of the operator's policy.

A verdict is remembered per set of trusted keys: when a scope's keys change (a key
added, rotated or removed) the next resolve checks the registry again with the new
set, so a removed key stops counting without a restart. A context variable carries
the scope (as :func:`meshext.kube.secrets.only_namespace` does for pull secrets), so
the resolver in between needs to know nothing about meshes; a scope for another
namespace than the one being resolved is refused rather than used.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from meshext.images.signature_discovery import Referrers
from meshext.images.signatures import Signer
from meshext.images.source import ImageSource
from meshext.images.trust import SIGNATURES_OFF, SignatureMode, SignaturePolicy
from meshext.images.trust_scopes import ScopedTrust
from meshext.images.verification import SignatureRefused, SignatureVerifier

log = logging.getLogger(__name__)

_SCOPE: ContextVar[ScopedTrust | None] = ContextVar("signature_scope", default=None)


@contextmanager
def signature_scope(trust: ScopedTrust | None) -> Iterator[None]:
    """Within this block (and tasks it starts) images are judged by ``trust``."""
    token = _SCOPE.set(trust)
    try:
        yield
    finally:
        _SCOPE.reset(token)


class ScopedSignatureVerifier(SignatureVerifier):
    """A :class:`SignatureVerifier` that follows the scope of the current resolve."""

    def __init__(
        self, policy: SignaturePolicy = SIGNATURES_OFF, *, remembered_scopes: int = 256
    ) -> None:
        super().__init__(policy)
        self._scoped: OrderedDict[tuple[str, ...], SignatureVerifier] = OrderedDict()
        self._remembered_scopes = remembered_scopes

    def __repr__(self) -> str:
        return f"ScopedSignatureVerifier({self.policy.mode.value}, scopes={len(self._scoped)})"

    def mode_for(self, namespace: str) -> SignatureMode:
        scope = self._scope(namespace)
        return self.policy.mode if scope is None else scope.mode

    async def check_image(
        self,
        source: ImageSource,
        digests: tuple[str, ...],
        referrers: Referrers | None,
        namespace: str = "",
    ) -> Signer | None:
        scope = self._scope(namespace)
        if scope is None:
            return await super().check_image(source, digests, referrers, namespace)
        verifier = self._verifier(scope, source.name)
        if verifier is None:
            return None
        try:
            return await verifier.check_image(source, digests, referrers, namespace)
        except SignatureRefused as exc:
            raise SignatureRefused(scope.with_problems(str(exc))) from exc

    def check_file(
        self, path: Path, cached: Path, sha256: str, namespace: str = ""
    ) -> Signer | None:
        scope = self._scope(namespace)
        if scope is None:
            return super().check_file(path, cached, sha256, namespace)
        verifier = self._verifier(scope, f"file:{path}")
        if verifier is None:
            return None
        try:
            return verifier.check_file(path, cached, sha256, namespace)
        except SignatureRefused as exc:
            raise SignatureRefused(scope.with_problems(str(exc))) from exc

    def check_url(self, url: str, sha256: str, namespace: str = "") -> None:
        scope = self._scope(namespace)
        if scope is None:
            super().check_url(url, sha256, namespace)
            return
        verifier = self._verifier(scope, url.split("?", 1)[0])
        if verifier is not None:
            verifier.check_url(url, sha256, namespace)

    # ------------------------------------------------------------------ helpers

    def _scope(self, namespace: str) -> ScopedTrust | None:
        scope = _SCOPE.get()
        if scope is not None and scope.namespace != namespace:
            raise SignatureRefused(
                f"refused by the signature policy: the policy of namespace {scope.namespace!r} "
                f"cannot judge an image for namespace {namespace!r}"
            )
        return scope

    def _verifier(self, scope: ScopedTrust, name: str) -> SignatureVerifier | None:
        """The verifier of ``scope``'s keys; ``None`` when nothing is to be checked.

        With the mode on and no key, ``enforce`` refuses and ``warn`` logs.
        """
        if scope.mode is SignatureMode.OFF:
            return None
        policy = scope.policy()
        if policy is None:
            message = scope.with_problems(
                f"signature check of {name} failed: {scope.without_keys()}"
            )
            if scope.mode is SignatureMode.ENFORCE:
                raise SignatureRefused(f"refused by the signature policy: {message}")
            log.warning("%s (signature policy 'warn': delivered anyway)", message)
            return None
        identity = scope.identity
        verifier = self._scoped.get(identity)
        if verifier is None:
            verifier = SignatureVerifier(policy)
            self._scoped[identity] = verifier
            while len(self._scoped) > self._remembered_scopes:
                self._scoped.popitem(last=False)
        else:
            self._scoped.move_to_end(identity)
        return verifier
