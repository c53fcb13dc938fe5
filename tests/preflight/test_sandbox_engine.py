"""A sandbox engine reused for many pre-flights: a module's output is kept bounded in
memory, one watchdog thread bounds every run's time and ends when the engine is idle,
and a module compiled once is not read from disk again."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import wasmtime

from meshext.preflight import host
from meshext.preflight.host import Limits, PreflightInput, SandboxEngine
from meshext.preflight.runner import PreflightKey, PreflightRunner
from tests.preflight.test_sandbox_host import example, module

LOOPING = module(
    '(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (loop (br 0)) (i32.const 1))'
)


def writing(chunks: int) -> bytes:
    """A module whose VM start writes ``chunks`` blocks of 4,096 bytes of lines to
    stdout, then the line ``the end``, and starts."""
    block = "spam spam spam\\n" * 256  # 3,840 bytes, then a line filling the block
    block += "x" * (4096 - 15 * 256 - 1) + "\\n"
    return bytes(
        wasmtime.wat2wasm(
            f"""
            (module
              (import "wasi_snapshot_preview1" "fd_write"
                (func $fd_write (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (data (i32.const 0) "\\10\\00\\00\\00\\00\\10\\00\\00")
              (data (i32.const 8) "\\10\\10\\00\\00\\08\\00\\00\\00")
              (data (i32.const 16) "{block}")
              (data (i32.const 4112) "the end\\n")
              (func (export "proxy_abi_version_0_2_1"))
              (func (export "proxy_on_memory_allocate") (param i32) (result i32)
                (i32.const 8192))
              (func (export "proxy_on_context_create") (param i32 i32))
              (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
                (local $left i32)
                (local.set $left (i32.const {chunks}))
                (block $done
                  (loop $again
                    (br_if $done (i32.eqz (local.get $left)))
                    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1)
                                          (i32.const 8000)))
                    (local.set $left (i32.sub (local.get $left) (i32.const 1)))
                    (br $again)))
                (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1)
                                      (i32.const 8000)))
                (i32.const 1)))
            """
        )
    )


def test_a_module_writing_megabytes_keeps_only_its_last_lines() -> None:
    engine, wasm = SandboxEngine(), writing(4096)  # 16 MiB of output
    tracemalloc.start()
    try:
        result = engine.run(wasm, PreflightInput("", b""), Limits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.passed, result.describe()
    assert peak < 2 << 20  # what the module wrote was never held all at once
    lines = [log.text for log in result.logs]
    assert lines[-1] == "the end"
    assert 1 < len(lines) <= 50
    assert sum(len(line) + 1 for line in lines) <= host.OUTPUT_KEPT


def test_a_run_after_one_that_ran_out_of_time_gets_its_whole_time() -> None:
    engine = SandboxEngine()
    timed_out = engine.run(LOOPING, PreflightInput("", b""), Limits(fuel=10**15, seconds=0.3))
    assert not timed_out.passed
    assert "longer than the pre-flight's 0.3 seconds" in timed_out.reason
    # The next runs on the same engine are neither cut short by the earlier deadline
    # nor left without one.
    assert engine.run(example("header-append"), PreflightInput("", b"hello"), Limits()).passed
    again = engine.run(LOOPING, PreflightInput("", b"x"), Limits(fuel=10**15, seconds=0.3))
    assert "longer than the pre-flight's 0.3 seconds" in again.reason


def test_the_watchdog_thread_ends_once_the_engine_is_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "WATCHDOG_IDLE", 0.2)
    engine = SandboxEngine()

    def watchdog_alive() -> bool:
        return any(t.name == engine.watchdog_thread for t in threading.enumerate())

    assert not watchdog_alive()
    assert engine.run(example("header-append"), PreflightInput("", b"hello"), Limits()).passed
    assert watchdog_alive()
    deadline = time.monotonic() + 5
    while watchdog_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not watchdog_alive()
    # and a later run starts it again, bounded as before
    late = engine.run(LOOPING, PreflightInput("", b""), Limits(fuel=10**15, seconds=0.3))
    assert "longer than the pre-flight's 0.3 seconds" in late.reason


def test_a_module_compiled_once_is_not_read_from_disk_again(tmp_path: Path) -> None:
    path = tmp_path / "header-append.wasm"
    path.write_bytes(example("header-append"))
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    runner = PreflightRunner()

    async def two_configurations() -> None:
        first = await runner.run(PreflightKey.of(sha256, "", "hello"), path)
        path.unlink()
        second = await runner.run(PreflightKey.of(sha256, "", "bonjour"), path)
        assert first.passed
        assert second.passed

    asyncio.run(two_configurations())
    assert runner.runs == 2


def test_bytes_that_do_not_hash_to_the_key_run_as_what_they_are(tmp_path: Path) -> None:
    path = tmp_path / "header-append.wasm"
    path.write_bytes(example("header-append"))
    runner = PreflightRunner()

    async def stale_key() -> None:
        result = await runner.run(PreflightKey.of("ab" * 32, "", "hello"), path)
        assert result.passed
        path.write_bytes(b"not a wasm module")
        broken = await runner.run(PreflightKey.of("ab" * 32, "", "bonjour"), path)
        assert not broken.passed
        assert broken.stage == "compilation"

    asyncio.run(stale_key())


def test_a_run_after_its_output_folder_was_cleaned_away_still_captures_output() -> None:
    engine = SandboxEngine()
    wasm = writing(1)
    assert engine.run(wasm, PreflightInput("", b""), Limits()).passed
    shutil.rmtree(engine.output_folder)
    result = engine.run(wasm, PreflightInput("", b"again"), Limits())
    assert result.passed, result.describe()
    assert result.logs[-1].text == "the end"
