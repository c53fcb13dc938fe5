"""The resolver under a per-namespace signature scope, with real cosign signatures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshext.images.cache import ModuleCache
from meshext.images.resolver import ImageResolver
from meshext.images.scoped_verification import ScopedSignatureVerifier, signature_scope
from meshext.images.secrets import FolderPullSecretStore
from meshext.images.trust import SIGNATURES_OFF, parse_public_keys
from meshext.images.trust_scopes import KeySet, MeshSignatures, scoped_trust
from meshext.mesh.resolution import Resolution, ResolutionState
from tests.images.conftest import (
    FAST_RETRIES,
    extension,
    registry_config,
    unique,
)
from tests.images.cosign import Cosign, KeyPair
from tests.images.registry import Registry
from tests.images.signed_images import by_digest, push_image

pytestmark = pytest.mark.e2e

MESH = "istio-system"


def keys_of(key: KeyPair, name: str) -> KeySet:
    return KeySet(parse_public_keys(key.public.read_bytes(), name))


async def test_concurrent_resolves_in_two_namespaces_each_get_their_own_verdict(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry, cosign: Cosign
) -> None:
    mesh_key = cosign.generate_key_pair(tmp_path / "mesh-key")
    team_key = cosign.generate_key_pair(tmp_path / "team-key")
    repository = unique("scoped")
    reference, digest = push_image(tmp_path, plain_registry, repository, "scoped")
    cosign.sign(team_key, by_digest(reference, digest), plain_registry)

    mesh = MeshSignatures(
        "ServiceMeshControlPlane istio-system/basic", "enforce", keys_of(mesh_key, "mesh")
    )
    resolver = ImageResolver(
        cache,
        FolderPullSecretStore(tmp_path / "no-secrets"),
        registry_config=registry_config(plain_registry),
        retries=FAST_RETRIES,
        signatures=ScopedSignatureVerifier(),
    )

    async def resolve_in(namespace: str, published: list[KeySet]) -> Resolution:
        trust = scoped_trust(
            SIGNATURES_OFF, namespace, mesh_namespace=MESH, mesh=mesh, namespace_keys=published
        )
        with signature_scope(trust):
            return await resolver.resolve(extension(reference, namespace=namespace))

    try:
        other, own = await asyncio.gather(
            resolve_in("team-b", []), resolve_in("team-a", [keys_of(team_key, "team")])
        )
    finally:
        await resolver.aclose()
    assert other.state is ResolutionState.FAILED
    assert "signed by no trusted key" in other.message
    assert own.state is ResolutionState.READY, own.message
    assert own.module is not None
    assert own.module.signer is not None
    assert own.module.signer.startswith("team (sha256:")
