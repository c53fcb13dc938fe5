"""The sandbox starts modules as Envoy does, and says in the module's words why one
does not start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import wasmtime

from meshext.envoy.standin import stand_in_module
from meshext.preflight.host import Limits, PreflightInput, run_preflight
from meshext.preflight.runner import PreflightKey, PreflightRunner
from tests.envoy.support import BUILD, build_examples
from tests.sdk_examples import AS_ROOT_ID, sdk_module


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def module(body: str, *, start: str = "") -> bytes:
    """A minimal proxy-wasm module in WAT; ``body`` is spliced into it."""
    return wat(
        f"""
        (module
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          {start}
          {body})
        """
    )


def example(name: str) -> bytes:
    build_examples()
    return (BUILD / f"{name}.wasm").read_bytes()


def test_a_c_module_with_a_configuration_it_accepts_passes() -> None:
    result = run_preflight(example("header-append"), PreflightInput("", b"hello"))
    assert result.passed, result.describe()


def test_a_refused_configuration_fails_in_the_modules_own_words() -> None:
    result = run_preflight(example("header-append"), PreflightInput("", b'{"name": "x-a"}'))
    assert not result.passed
    assert result.stage == "proxy_on_configure"
    assert 'the JSON configuration needs a "value" string' in result.describe()


def test_a_start_function_that_traps_fails_in_the_start_function() -> None:
    wasm = module(
        '(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))',
        start='(func (export "_initialize") unreachable)',
    )
    result = run_preflight(wasm, PreflightInput("", b""))
    assert not result.passed
    assert result.stage == "_initialize"
    assert "trapped" in result.reason


def test_a_module_that_never_stops_runs_out_of_fuel() -> None:
    wasm = module(
        '(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (loop (br 0)) (i32.const 1))'
    )
    result = run_preflight(wasm, PreflightInput("", b""), Limits(fuel=5_000_000))
    assert not result.passed
    assert result.stage == "proxy_on_vm_start"
    assert "budget of 5000000 instructions" in result.reason


def test_a_module_that_never_stops_is_interrupted_after_the_time_limit() -> None:
    wasm = module(
        '(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (loop (br 0)) (i32.const 1))'
    )
    limits = Limits(fuel=10**15, seconds=0.5)
    result = run_preflight(wasm, PreflightInput("", b""), limits)
    assert not result.passed
    assert "longer than the pre-flight's 0.5 seconds" in result.reason


def test_memory_beyond_the_limit_is_refused_to_the_module() -> None:
    grow = """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (i32.ne (memory.grow (i32.const 2000)) (i32.const -1)))
    """
    small = run_preflight(module(grow), PreflightInput("", b""), Limits(memory_bytes=64 << 20))
    large = run_preflight(module(grow), PreflightInput("", b""), Limits(memory_bytes=256 << 20))
    assert not small.passed
    assert small.stage == "proxy_on_vm_start"
    assert large.passed


def test_a_module_without_the_abi_export_is_not_a_proxy_wasm_module() -> None:
    wasm = wat('(module (memory (export "memory") 1))')
    result = run_preflight(wasm, PreflightInput("", b""))
    assert not result.passed
    assert "not a proxy-wasm module" in result.reason


def test_the_plugin_configuration_and_root_id_reach_the_module() -> None:
    # Logs the root id it is asked about and the configuration it receives.
    wasm = wat(
        """
        (module
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_buffer_bytes"
            (func $buffer (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_http_call"
            (func $http (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "plugin_root_id")
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32)
            (drop (call $prop (i32.const 0) (i32.const 14) (i32.const 100) (i32.const 104)))
            (drop (call $log (i32.const 2) (i32.load (i32.const 100)) (i32.load (i32.const 104)))))
          (func (export "proxy_on_configure") (param i32 i32) (result i32)
            (drop (call $buffer (i32.const 7) (i32.const 0) (local.get 1)
                                (i32.const 100) (i32.const 104)))
            (drop (call $log (i32.const 3) (i32.load (i32.const 100)) (i32.load (i32.const 104))))
            (i32.const 1)))
        """
    )
    result = run_preflight(wasm, PreflightInput("my_root", b"the config"))
    assert result.passed
    assert [str(line) for line in result.logs] == ["info: my_root", "warn: the config"]


def test_the_go_sdk_example_refuses_a_bad_configuration_in_its_own_words() -> None:
    go = sdk_module("go-header-append").read_bytes()
    good = run_preflight(go, PreflightInput("", b'{"name": "x-go", "value": "yes"}'))
    bad = run_preflight(go, PreflightInput("", b"not json"))
    assert good.passed, good.describe()
    assert not bad.passed
    assert "critical: invalid configuration format" in bad.describe()


def test_the_assemblyscript_sdk_example_needs_the_root_id_it_registered() -> None:
    wasm = sdk_module("as-header-append").read_bytes()
    right = run_preflight(wasm, PreflightInput(AS_ROOT_ID, b"yes"))
    wrong = run_preflight(wasm, PreflightInput("", b"yes"))
    assert right.passed, right.describe()
    assert not wrong.passed
    assert wrong.stage.startswith("proxy_on_context_create")
    assert "Missing root context factory for root id" in wrong.describe()


def test_a_combination_runs_once_and_is_then_answered_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "header-append.wasm"
    path.write_bytes(example("header-append"))
    runner = PreflightRunner()
    key = PreflightKey.of("sha", "", "hello")

    async def twice() -> None:
        first = await runner.run(key, path)
        second = await runner.run(key, path)
        assert first.passed
        assert second is first

    asyncio.run(twice())
    assert runner.runs == 1


def test_a_module_reading_its_configuration_while_configuring_is_recorded_so() -> None:
    result = run_preflight(example("header-append"), PreflightInput("", b"hello"))
    assert result.passed
    assert result.config_read
    assert result.unread_config_warning("hello", "") is None


def test_a_non_empty_configuration_never_read_warns_that_the_root_id_may_not_match() -> None:
    # The stand-in answers true to proxy_on_configure without reading anything, as the
    # C++ SDK's do-nothing root context does for a root id the module did not register.
    result = run_preflight(stand_in_module(), PreflightInput("my_root", b"a config"))
    assert result.passed
    assert not result.config_read
    warning = result.unread_config_warning("a config", "my_root") or ""
    assert "never read its configuration" in warning
    assert "'my_root'" in warning
    assert "meshext.io/root-id" in warning
    assert result.unread_config_warning("", "my_root") is None


def test_the_sdk_examples_read_their_configuration() -> None:
    go = sdk_module("go-header-append").read_bytes()
    assert run_preflight(go, PreflightInput("", b'{"name": "x-go", "value": "y"}')).config_read
    assembly = sdk_module("as-header-append").read_bytes()
    assert run_preflight(assembly, PreflightInput(AS_ROOT_ID, b"yes")).config_read
