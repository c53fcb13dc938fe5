"""The byte-counter example (a network filter) under a wasmtime host: counts and memory."""

from __future__ import annotations

from pathlib import Path

from meshext.api.manifest import parse_manifest
from meshext.api.phase import Phase
from tests.envoy.support import EXAMPLES
from tests.envoy.wasm_host import FakeEnvoyHost

CONTINUE = 0


def connection(vm: FakeEnvoyHost, sent: list[int], returned: list[int]) -> None:
    """One connection through the network callbacks, as Envoy calls them."""
    context = vm.next_context = vm.next_context + 1
    vm.call("proxy_on_context_create", context, vm.root_context)
    assert vm.call("proxy_on_new_connection", context) == CONTINUE
    for size in sent:
        assert vm.call("proxy_on_downstream_data", context, size, 0) == CONTINUE
    for size in returned:
        assert vm.call("proxy_on_upstream_data", context, size, 0) == CONTINUE
    vm.call_if_exported("proxy_on_done", context)
    vm.call("proxy_on_delete", context)


def counter(examples: Path, config: bytes) -> FakeEnvoyHost:
    vm = FakeEnvoyHost(examples / "byte-counter.wasm")
    assert vm.start()
    assert vm.configure(config), vm.logs
    return vm


def test_byte_counter_counts_each_direction_and_each_connection(examples: Path) -> None:
    vm = counter(examples, b'{"name": "edge"}')
    connection(vm, [100, 20], [300])
    connection(vm, [0, 5], [])
    assert vm.metric_values["edge.downstream_bytes"] == 125
    assert vm.metric_values["edge.upstream_bytes"] == 300
    assert vm.metric_values["edge.connections"] == 2


def test_byte_counter_refuses_an_empty_prefix(examples: Path) -> None:
    vm = FakeEnvoyHost(examples / "byte-counter.wasm")
    assert vm.start()
    assert not vm.configure(b"")
    assert any("needs a counter prefix" in text for _, text in vm.logs)


def test_byte_counter_memory_stays_flat_over_many_connections(examples: Path) -> None:
    vm = counter(examples, b"flat")
    for _ in range(100):
        connection(vm, [10], [10])
    warmed_up = vm.memory_bytes()
    for _ in range(5_000):
        connection(vm, [10], [10])
    assert vm.memory_bytes() == warmed_up


def test_byte_counter_has_a_maistra_manifest() -> None:
    manifest = parse_manifest((EXAMPLES / "byte-counter" / "manifest.yaml").read_bytes())
    assert manifest.name == "byte-counter"
    assert manifest.phase is Phase.POST_STATS
    assert manifest.module_path == "extension.wasm"
