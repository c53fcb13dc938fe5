"""Resolving an extension's image as its mesh and namespace say: one wiring, two commands.

``meshext kube controller`` and ``meshext serve --kubeconfig`` judge an extension's
image by the same policy: the operator's ``--trusted-keys``/``--signature-policy``,
the ``signaturePolicy`` of the extension's ServiceMeshControlPlane and the keys
published in the cluster (:class:`~meshext.kube.signature_trust.ClusterTrust`,
combined by :func:`~meshext.images.trust_scopes.scoped_trust`). Both resolve inside
:func:`resolving_in`, which also keeps pull secrets to the extension's own namespace.

The controller decides per reconcile which scope applies. ``serve`` resolves through
:class:`MeshScopedResolver`, which finds the scope from the mesh topology ``serve``
currently plans with, and tells the control loop (through ``judged_by``) when the
scope of an extension changed, so that its image is checked again without a restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from meshext.api.meta import ResourceKey
from meshext.images.scoped_verification import signature_scope
from meshext.images.trust_scopes import ScopedTrust
from meshext.kube.resources import KubeObject, ObjectKey
from meshext.kube.secrets import only_namespace
from meshext.kube.signature_trust import ClusterTrust
from meshext.mesh.extension import Extension
from meshext.mesh.resolution import ModuleResolver, Resolution, ResolutionState
from meshext.mesh.topology import Topology


@contextmanager
def resolving_in(namespace: str, scope: ScopedTrust | None) -> Iterator[None]:
    """Within this block, pull secrets are read only in ``namespace`` and images are
    judged by ``scope`` (``None``: by the operator's policy alone)."""
    with only_namespace(namespace), signature_scope(scope):
        yield


class MeshScopedResolver:
    """A :class:`~meshext.mesh.resolution.ModuleResolver` resolving each extension
    under the signature policy of its mesh and namespace.

    ``topology`` returns the meshes as currently served. An extension outside every
    mesh is judged by the operator's policy alone (it is delivered nowhere anyway).

    As in the controller, a refusal keeps a module verified before (an ``Always`` tag
    moved to an unsigned image) only while the policy that verified it still
    applies: when keys or mode changed, a module that no longer verifies is taken
    out.
    """

    def __init__(
        self, resolver: ModuleResolver, trust: ClusterTrust, topology: Callable[[], Topology]
    ) -> None:
        self._resolver = resolver
        self._trust = trust
        self._topology = topology
        self._verified_under: dict[ResourceKey, tuple[str, ...]] = {}
        self._scopes: dict[str, ScopedTrust | None] = {}
        self._scopes_of: tuple[Topology, int] | None = None
        self._key_changes = 0
        trust.config_maps.add_handler(self._on_keys)

    def __repr__(self) -> str:
        return f"<MeshScopedResolver {self._trust!r}>"

    def scope_for(self, namespace: str) -> ScopedTrust | None:
        """The policy of ``namespace`` under the current topology and keys."""
        # Kept per namespace until the topology or a ConfigMap of keys changes: the
        # control loop asks for every extension on every configuration it applies.
        now = (self._topology(), self._key_changes)
        if (
            self._scopes_of is None
            or self._scopes_of[0] is not now[0]
            or self._scopes_of[1] != now[1]
        ):
            self._scopes.clear()
            self._scopes_of = now
        if namespace not in self._scopes:
            mesh = now[0].mesh_of(namespace)
            self._scopes[namespace] = (
                None if mesh is None else self._trust.trust_for(namespace, mesh)
            )
        return self._scopes[namespace]

    def judged_by(self, extension: Extension) -> tuple[object, ...]:
        """The mode and keys ``extension`` is judged by; a change re-checks its image."""
        return _identity(self.scope_for(extension.namespace))

    async def resolve(self, extension: Extension) -> Resolution:
        scope = self.scope_for(extension.namespace)
        identity = _identity(scope)
        with resolving_in(extension.namespace, scope):
            resolution = await self._resolver.resolve(extension)
        if resolution.state is ResolutionState.READY:
            self._verified_under[extension.key] = identity
        elif resolution.keep_previous and self._verified_under.get(extension.key) != identity:
            # Refused under another policy than the one that verified the module in use.
            resolution = dataclasses.replace(resolution, keep_previous=False)
        return resolution

    def forget(self, key: ResourceKey) -> None:
        self._verified_under.pop(key, None)
        self._resolver.forget(key)

    def _on_keys(self, key: ObjectKey, old: KubeObject | None, new: KubeObject | None) -> None:
        self._key_changes += 1


def _identity(scope: ScopedTrust | None) -> tuple[str, ...]:
    return () if scope is None else scope.identity
