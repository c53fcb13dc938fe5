"""The address guard: internal addresses are refused unless the operator allowed the
host; the check is on resolved addresses, and registries still work when allowed."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from meshext.images.cache import ModuleCache
from meshext.images.client import RegistryClient
from meshext.images.config import RegistryConfig
from meshext.images.errors import AddressNotAllowed, NotFound
from meshext.net.guard import AddressPolicy, AddressRefused, check_addresses, internal_kind
from tests.images.conftest import extension, resolver_for
from tests.images.registry import Registry
from tests.images.test_registry_pull import push_each_format
from tests.images.wasm import proxy_wasm_module


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local, where cloud metadata services live"),
        ("fe80::1", "link-local, where cloud metadata services live"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local, where cloud metadata services live"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.100.100.200", "not publicly routable"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_addresses_are_classified_as_internal_or_public(address: str, kind: str | None) -> None:
    assert internal_kind(ipaddress.ip_address(address)) == kind


def test_a_host_resolving_only_to_internal_addresses_is_refused_with_the_flag_to_allow_it() -> None:
    with pytest.raises(AddressRefused, match=r"--allow-private-registry registry\.local"):
        check_addresses("registry.local", 5000, ["10.0.0.7", "127.0.0.1"], AddressPolicy())


def test_only_the_public_addresses_of_a_mixed_answer_are_used() -> None:
    used = check_addresses("mixed.example", 443, ["127.0.0.1", "93.184.216.34"], AddressPolicy())
    assert used == ["93.184.216.34"]


@pytest.mark.parametrize("allowed", ["registry.local", "registry.local:5000"])
def test_an_allowed_host_may_resolve_to_internal_addresses(allowed: str) -> None:
    policy = AddressPolicy(frozenset({allowed}))
    assert check_addresses("registry.local", 5000, ["10.0.0.7"], policy) == ["10.0.0.7"]


def test_allowing_a_host_on_one_port_does_not_allow_its_other_ports() -> None:
    policy = AddressPolicy(frozenset({"registry.local:5000"}))
    with pytest.raises(AddressRefused):
        check_addresses("registry.local", 6000, ["10.0.0.7"], policy)


async def test_a_registry_on_loopback_is_refused_before_any_request_unless_listed(
    plain_registry: Registry,
) -> None:
    async with RegistryClient(plain_registry.host, RegistryConfig()) as client:
        with pytest.raises(AddressNotAllowed, match="loopback") as caught:
            await client.get_manifest("team/filter", "v1")
    assert caught.value.retryable is False
    # a registry listed with --insecure-registry is local by nature: it may be internal
    listed = RegistryConfig(insecure_registries=frozenset({"127.0.0.1"}))
    async with RegistryClient(plain_registry.host, listed) as client:
        with pytest.raises(NotFound):
            await client.get_manifest("team/nothing-here", "v1")


async def test_a_tls_registry_on_loopback_resolves_once_allowed(
    tmp_path: Path, tls_registry: Registry
) -> None:
    references = push_each_format(tmp_path, tls_registry, proxy_wasm_module("guard"))
    image = next(iter(references.values()))
    cache = ModuleCache(tmp_path / "cache")
    refused = resolver_for(cache, tls_registry, allowed_private_registries=frozenset())
    allowed = resolver_for(cache, tls_registry)
    try:
        failed = await refused.resolve(extension(image))
        assert "internal addresses" in failed.message
        assert failed.retryable is False
        ready = await allowed.resolve(extension(image))
        assert ready.module is not None
    finally:
        await refused.aclose()
        await allowed.aclose()
