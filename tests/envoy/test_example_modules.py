"""The example modules under a wasmtime host: their configs, their answers, their memory.

Behaviour inside Envoy is covered by test_envoy_runs_extensions; here each module runs
many requests quickly, so a per-request leak would show as linear memory growth.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from meshext.api.manifest import parse_manifest
from meshext.api.phase import Phase
from tests.envoy.support import EXAMPLES
from tests.envoy.wasm_host import FakeEnvoyHost

REQUESTS = 5_000
HEADERS = [(":method", "GET"), (":path", "/"), ("host", "app"), ("x-token", "s3cret")]


def host(examples: Path, name: str, config: bytes) -> FakeEnvoyHost:
    vm = FakeEnvoyHost(examples / f"{name}.wasm")
    assert vm.start()
    assert vm.configure(config), vm.logs
    return vm


def test_header_append_adds_the_plain_text_config_as_x_header_append(examples: Path) -> None:
    stream = host(examples, "header-append", b"test").request(HEADERS)
    assert stream.headers[-1] == ("x-header-append", "test")


def test_header_append_takes_name_and_value_from_json(examples: Path) -> None:
    config = (
        b'{"name": "x-Custom", "value": "caf\\u00e9 \\"quoted\\"", "ignored": [1, {"a": null}]}'
    )
    stream = host(examples, "header-append", config).request(HEADERS)
    assert stream.headers[-1] == ("x-custom", 'café "quoted"')


@pytest.mark.parametrize(
    "config",
    [
        b'{"name": "x-a"}',
        b'{"value": 3}',
        b'{"value": "a"',
        b'{"name": "bad name", "value": "v"}',
        b"a\nb",
    ],
)
def test_header_append_rejects_a_config_it_cannot_apply(examples: Path, config: bytes) -> None:
    vm = FakeEnvoyHost(examples / "header-append.wasm")
    assert vm.start()
    assert not vm.configure(config)
    assert vm.logs, "a rejected config is explained in the log"


def test_deny_unless_header_answers_403_naming_the_missing_header(examples: Path) -> None:
    vm = host(examples, "deny-unless-header", b"x-user\n")
    denied = vm.request(HEADERS)
    passed = vm.request([*HEADERS, ("x-user", "alice")])
    assert denied.local_response is not None
    assert denied.local_response.status == 403
    assert denied.local_response.body == b"forbidden: the request has no x-user header\n"
    assert denied.local_response.headers == [("content-type", "text/plain")]
    assert passed.local_response is None


def test_deny_unless_header_with_a_value_accepts_only_that_value(examples: Path) -> None:
    vm = host(examples, "deny-unless-header", b'{"name": "x-token", "value": "s3cret"}')
    assert vm.request(HEADERS).local_response is None
    wrong = vm.request([(":path", "/"), ("x-token", "guess")])
    assert wrong.local_response is not None
    assert wrong.local_response.status == 403
    assert b"s3cret" not in wrong.local_response.body


def test_request_counter_counts_each_request_in_the_named_counter(examples: Path) -> None:
    vm = host(examples, "request-counter", b'{"name": "orders_requests"}')
    for _ in range(5):
        vm.request(HEADERS)
    assert vm.metric_values["orders_requests"] == 5


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("header-append", b'{"name": "x-trace", "value": "abc"}'),
        ("deny-unless-header", b'{"name": "x-token", "value": "nope"}'),
        ("request-counter", b"requests_total"),
    ],
)
def test_memory_stays_flat_over_many_requests(examples: Path, name: str, config: bytes) -> None:
    vm = host(examples, name, config)
    for _ in range(100):
        vm.request(HEADERS)
    warmed_up = vm.memory_bytes()
    for _ in range(REQUESTS):
        vm.request(HEADERS)
    assert vm.memory_bytes() == warmed_up


def test_reconfiguring_many_times_does_not_grow_memory(examples: Path) -> None:
    vm = host(examples, "header-append", b"v0")
    for i in range(50):
        vm.configure(f'{{"value": "v{i}"}}'.encode())
    warmed_up = vm.memory_bytes()
    for i in range(2_000):
        assert vm.configure(f'{{"value": "value number {i}"}}'.encode())
    assert vm.memory_bytes() == warmed_up
    assert vm.request(HEADERS).headers[-1] == ("x-header-append", "value number 1999")


@pytest.mark.parametrize(
    ("name", "phase", "priority"),
    [
        ("header-append", Phase.POST_AUTHZ, 100),
        ("deny-unless-header", Phase.PRE_AUTHZ, 0),
        ("request-counter", Phase.PRE_STATS, 0),
    ],
)
def test_each_example_has_a_maistra_manifest_naming_its_module(
    name: str, phase: Phase, priority: int
) -> None:
    manifest = parse_manifest((EXAMPLES / name / "manifest.yaml").read_bytes())
    assert manifest.name == name
    assert manifest.phase is phase
    assert manifest.priority == priority
    assert manifest.module_path == "extension.wasm"


@pytest.mark.parametrize("name", ["header-append", "deny-unless-header", "request-counter"])
def test_http_examples_export_no_per_request_callback_they_do_not_need(
    examples: Path, name: str
) -> None:
    # Envoy skips a callback the module does not export; each exported one costs a
    # call into the VM per request and filter.
    vm = host(examples, name, b"x-a")
    per_request = {
        export.name
        for export in wasmtime.Module.from_file(vm.engine, examples / f"{name}.wasm").exports
        if export.name.startswith("proxy_on_") and export.name != "proxy_on_memory_allocate"
    } - {"proxy_on_vm_start", "proxy_on_configure"}
    assert per_request == {
        "proxy_on_context_create",
        "proxy_on_request_headers",
        "proxy_on_delete",
    }


def test_stream_records_are_reused_across_many_concurrent_streams(examples: Path) -> None:
    vm = host(examples, "header-append", b'{"name": "x-a", "value": "1"}')
    contexts = list(range(1_000, 1_600))
    for round_ in range(3):
        for context in contexts:
            vm.call("proxy_on_context_create", context + round_ * 10_000, vm.root_context)
        if round_ == 0:
            grown = vm.memory_bytes()
        vm.stream = None
        for context in contexts:
            vm.call("proxy_on_delete", context + round_ * 10_000)
    assert vm.memory_bytes() == grown
    assert vm.request(HEADERS).headers[-1] == ("x-a", "1")
