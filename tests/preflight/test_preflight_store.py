"""Pre-flight results kept on disk survive a restart, and nothing found on disk is
trusted blindly: every kind of damaged or hostile file is ignored with a warning and
the pre-flight simply runs again."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from meshext.preflight.host import LogLine, PreflightResult
from meshext.preflight.runner import PreflightKey, PreflightRunner
from meshext.preflight.store import PreflightStore
from tests.envoy.support import BUILD, build_examples

KEY = PreflightKey.of("ab" * 32, "my_root", '{"value": "x"}', env={"A": "1"})
PASSED = PreflightResult(True, logs=(LogLine("info", "started"),), config_read=True)
FAILED = PreflightResult(
    False, "proxy_on_configure", "it returned false", (LogLine("error", "no"),)
)


def store(tmp_path: Path, **kwargs: int) -> PreflightStore:
    return PreflightStore(tmp_path / "preflight", **kwargs)  # type: ignore[arg-type]


def test_a_kept_result_is_read_back_exactly(tmp_path: Path) -> None:
    kept = store(tmp_path)
    kept.put(KEY, PASSED)
    other = PreflightKey.of("ab" * 32, "my_root", '{"value": "x"}', env={"A": "2"})
    kept.put(other, FAILED)
    assert store(tmp_path).get(KEY) == PASSED
    assert store(tmp_path).get(other) == FAILED


def test_every_part_of_the_key_and_the_host_version_select_the_result(tmp_path: Path) -> None:
    kept = store(tmp_path)
    kept.put(KEY, PASSED)
    for different in (
        PreflightKey.of("cd" * 32, "my_root", '{"value": "x"}', env={"A": "1"}),
        PreflightKey.of("ab" * 32, "", '{"value": "x"}', env={"A": "1"}),
        PreflightKey.of("ab" * 32, "my_root", '{"value": "y"}', env={"A": "1"}),
        PreflightKey.of("ab" * 32, "my_root", '{"value": "x"}', vm_config="v", env={"A": "1"}),
        PreflightKey.of("ab" * 32, "my_root", '{"value": "x"}'),
    ):
        assert kept.get(different) is None
    newer_host = PreflightStore(kept.directory, host_version="a newer sandbox")
    assert newer_host.get(KEY) is None


def test_a_result_cut_short_by_the_clock_is_not_kept(tmp_path: Path) -> None:
    kept = store(tmp_path)
    kept.put(KEY, PreflightResult(False, "proxy_on_vm_start", "it ran longer than the 10 s"))
    assert kept.get(KEY) is None
    assert not kept.path_for(KEY).exists()


def test_writes_leave_no_temporary_files_behind(tmp_path: Path) -> None:
    kept = store(tmp_path)
    for value in range(5):
        kept.put(PreflightKey.of("ab" * 32, "", str(value)), PASSED)
    assert sorted(p.suffix for p in kept.directory.iterdir()) == [".json"] * 5


def test_the_store_is_bounded(tmp_path: Path) -> None:
    kept = store(tmp_path, max_entries=3)
    keys = [PreflightKey.of("ab" * 32, "", str(value)) for value in range(6)]
    for index, key in enumerate(keys):
        kept.put(key, PASSED)
        path = kept.path_for(key)
        os.utime(path, ns=(index * 10**9, index * 10**9))
    kept.prune()
    assert [kept.get(key) is not None for key in keys] == [False] * 3 + [True] * 3


def _damage(kept: PreflightStore, how: str) -> None:
    path = kept.path_for(KEY)
    text = path.read_text()
    document = json.loads(text)
    if how == "corrupt":
        path.write_bytes(b"\x00\xff not json at all")
    elif how == "truncated":
        path.write_text(text[: len(text) // 2])
    elif how == "empty":
        path.write_text("")
    elif how == "not an object":
        path.write_text("[1, 2, 3]")
    elif how == "wrong key inside":
        document["key"]["plugin_config"] = "something else"
        path.write_text(json.dumps(document))
    elif how == "another format":
        document["format"] = 99
        path.write_text(json.dumps(document))
    elif how == "wrong types":
        document["result"]["passed"] = "yes"
        path.write_text(json.dumps(document))
    elif how == "bad logs":
        document["result"]["logs"] = [["info"]]
        path.write_text(json.dumps(document))
    elif how == "missing field":
        del document["result"]["config_read"]
        path.write_text(json.dumps(document))
    elif how == "huge":
        path.write_text(text + " " * (kept.max_file_bytes + 1))
    elif how == "symlink":
        target = path.with_name("elsewhere")
        target.write_text(text)
        path.unlink()
        path.symlink_to(target)
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        raise AssertionError(how)


DAMAGES = [
    "corrupt",
    "truncated",
    "empty",
    "not an object",
    "wrong key inside",
    "another format",
    "wrong types",
    "bad logs",
    "missing field",
    "huge",
    "symlink",
    "directory",
    "fifo",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_or_hostile_file_is_ignored_with_a_warning(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    kept = store(tmp_path)
    kept.put(KEY, PASSED)
    _damage(kept, how)
    with caplog.at_level(logging.WARNING, logger="meshext.preflight.store"):
        assert kept.get(KEY) is None
    assert any(
        str(kept.path_for(KEY)) in r.getMessage() and "runs again" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_an_unreadable_file_is_ignored_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Permissions do not stop root, so the refusal the kernel would give is simulated.
    kept = store(tmp_path)
    kept.put(KEY, PASSED)
    real_open = os.open
    target = str(kept.path_for(KEY))

    def refusing_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if str(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    with caplog.at_level(logging.WARNING, logger="meshext.preflight.store"):
        assert kept.get(KEY) is None
    assert "Permission denied" in caplog.text


def test_a_folder_that_cannot_be_written_costs_a_warning_not_the_result(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "preflight").write_text("a file where the folder should be")
    kept = store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="meshext.preflight.store"):
        kept.put(KEY, PASSED)
    assert "cannot keep a result" in caplog.text
    assert kept.get(KEY) is None


def test_a_restarted_runner_answers_from_the_store_without_starting_the_module(
    tmp_path: Path,
) -> None:
    build_examples()
    module = tmp_path / "header-append.wasm"
    module.write_bytes((BUILD / "header-append.wasm").read_bytes())
    key = PreflightKey.of("ef" * 32, "", "hello")

    async def run(runner: PreflightRunner) -> PreflightResult:
        return await runner.run(key, module)

    first = PreflightRunner(store=store(tmp_path))
    result = asyncio.run(run(first))
    assert result.passed
    assert first.runs == 1

    restarted = PreflightRunner(store=store(tmp_path))
    assert asyncio.run(run(restarted)) == result
    assert (restarted.runs, restarted.restored) == (0, 1)


def test_a_damaged_result_is_replaced_by_running_the_pre_flight_again(tmp_path: Path) -> None:
    build_examples()
    module = tmp_path / "header-append.wasm"
    module.write_bytes((BUILD / "header-append.wasm").read_bytes())
    key = PreflightKey.of("ef" * 32, "", "hello")
    kept = store(tmp_path)
    # A forged result filed under the right name, claiming something else passed.
    forged = PreflightKey.of("ef" * 32, "", "other")
    kept.put(forged, FAILED)
    kept.path_for(forged).rename(kept.path_for(key))

    runner = PreflightRunner(store=kept)
    result = asyncio.run(runner.run(key, module))
    assert result.passed
    assert runner.runs == 1
    assert kept.get(key) == result
