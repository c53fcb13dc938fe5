"""Registry client errors are meshext errors, classified, with httpx's error as cause."""

from __future__ import annotations

import httpx
import pytest

from meshext.errors import MeshextError
from meshext.images.auth import Credentials
from meshext.images.client import RegistryClient
from meshext.images.config import RegistryConfig
from meshext.images.errors import (
    ImageError,
    NotFound,
    TLSError,
    TransientRegistryError,
    Unauthorized,
)
from tests.images.conftest import registry_config, unique
from tests.images.registry import Registry
from tests.network import free_port

pytestmark = pytest.mark.e2e


async def test_connection_refused_is_transient_and_chains_the_httpx_error() -> None:
    config = RegistryConfig(insecure_registries=frozenset({"127.0.0.1"}))
    async with RegistryClient(f"127.0.0.1:{free_port()}", config) as client:
        with pytest.raises(TransientRegistryError) as caught:
            await client.get_manifest("team/filter", "v1")
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert isinstance(caught.value, MeshextError)


async def test_unknown_certificate_authority_is_a_permanent_tls_error(
    tls_registry: Registry,
) -> None:
    allowed = RegistryConfig(allowed_private_registries=frozenset({"127.0.0.1"}))
    async with RegistryClient(tls_registry.host, allowed) as client:
        with pytest.raises(TLSError) as caught:
            await client.get_manifest("team/filter", "v1")
    assert caught.value.retryable is False
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert "--ca-file" in str(caught.value)


async def test_https_client_at_a_plain_http_registry_suggests_insecure_registry(
    plain_registry: Registry,
) -> None:
    allowed = RegistryConfig(allowed_private_registries=frozenset({"127.0.0.1"}))
    async with RegistryClient(plain_registry.host, allowed) as client:
        with pytest.raises(TLSError, match=r"--insecure-registry 127\.0\.0\.1"):
            await client.get_manifest("team/filter", "v1")


async def test_missing_manifest_is_not_found_with_the_registry_error_code(
    plain_registry: Registry,
) -> None:
    async with RegistryClient(plain_registry.host, registry_config(plain_registry)) as client:
        with pytest.raises(NotFound, match="MANIFEST_UNKNOWN") as caught:
            await client.get_manifest(unique("nothing"), "v1")
    assert caught.value.status == 404
    assert caught.value.retryable is False


async def test_refused_credentials_are_unauthorized_and_say_credentials_were_sent(
    basic_registry: Registry,
) -> None:
    config = registry_config(basic_registry)
    async with RegistryClient(basic_registry.host, config, Credentials("x", "y")) as client:
        with pytest.raises(Unauthorized) as caught:
            await client.get_manifest("team/filter", "v1")
    assert caught.value.credentials_used is True
    assert isinstance(caught.value, ImageError)
