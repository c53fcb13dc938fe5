"""The folder source yields the whole state again whenever a manifest changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from meshext.api.decode import ResourceError
from meshext.sources import watch
from meshext.sources.folder import LoadResult, load_folder
from meshext.sources.watch import Fingerprint, FolderSource

SME = """apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata: {{name: {name}, namespace: bookinfo}}
spec: {{image: "quay.io/ext/a:1", phase: PreAuthN, priority: {priority}}}
"""


def names(result: LoadResult) -> list[str]:
    return sorted(r.key.name for r in result.resources)


async def test_edits_additions_and_removals_each_yield_the_complete_state(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SME.format(name="a", priority=1))
    updates = FolderSource(tmp_path, debounce=0.05).updates()
    first = await asyncio.wait_for(anext(updates), 30)
    assert names(first) == ["a"]

    (tmp_path / "b.yaml").write_text(SME.format(name="b", priority=2))
    assert names(await asyncio.wait_for(anext(updates), 30)) == ["a", "b"]

    (tmp_path / "a.yaml").unlink()
    assert names(await asyncio.wait_for(anext(updates), 30)) == ["b"]
    await updates.aclose()


async def test_a_broken_edit_is_reported_and_the_other_resources_stay(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SME.format(name="a", priority=1))
    (tmp_path / "b.yaml").write_text(SME.format(name="b", priority=1))
    updates = FolderSource(tmp_path, debounce=0.05).updates()
    await asyncio.wait_for(anext(updates), 30)

    (tmp_path / "b.yaml").write_text(SME.format(name="b", priority="high"))
    result = await asyncio.wait_for(anext(updates), 30)
    assert names(result) == ["a"]
    assert "spec.priority" in str(result.errors[0])
    await updates.aclose()


async def test_files_that_are_not_yaml_do_not_trigger_a_reload(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SME.format(name="a", priority=1))
    updates = FolderSource(tmp_path, debounce=0.05).updates()
    await asyncio.wait_for(anext(updates), 30)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "c.yaml").write_text(SME.format(name="c", priority=1))
    # The next update is the YAML one: the text file alone produced none.
    assert names(await asyncio.wait_for(anext(updates), 30)) == ["a", "c"]
    await updates.aclose()


async def test_an_edit_is_read_as_soon_as_it_is_reported_without_waiting_for_quiet(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(SME.format(name="a", priority=1))
    # A debounce longer than the wait below: a valid edit must not wait for it.
    updates = FolderSource(tmp_path, debounce=60.0, poll_interval=60.0).updates()
    await asyncio.wait_for(anext(updates), 30)
    (tmp_path / "b.yaml").write_text(SME.format(name="b", priority=2))
    assert names(await asyncio.wait_for(anext(updates), 20)) == ["a", "b"]
    await updates.aclose()


async def test_a_file_replaced_by_renaming_a_hidden_temporary_file_is_read_whole(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(SME.format(name="a", priority=1))
    updates = FolderSource(tmp_path, debounce=0.05).updates()
    await asyncio.wait_for(anext(updates), 30)
    temporary = tmp_path / ".a.yaml.tmp"
    temporary.write_text(
        SME.format(name="a", priority=1) + "---\n" + SME.format(name="b", priority=2)
    )
    os.replace(temporary, tmp_path / "a.yaml")
    result = await asyncio.wait_for(anext(updates), 30)
    assert names(result) == ["a", "b"]
    assert result.ok
    await updates.aclose()


async def test_a_file_completed_after_a_pause_in_its_writing_is_read_whole(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(SME.format(name="a", priority=1))
    updates = FolderSource(tmp_path, debounce=5.0, poll_interval=60.0).updates()
    seen: list[LoadResult] = []
    arrived = asyncio.Event()

    async def follow() -> None:  # as the control loop does: always waiting for the next
        async for result in updates:
            seen.append(result)
            arrived.set()

    follower = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(arrived.wait(), 30)
        arrived.clear()
        # Without polling, this update proves the watcher reports events from now on.
        (tmp_path / "c.yaml").write_text(SME.format(name="c", priority=3))
        await asyncio.wait_for(arrived.wait(), 30)
        arrived.clear()
        whole = SME.format(name="b", priority=2)
        (tmp_path / "b.yaml").write_text(whole[: whole.index("spec:")])  # no spec yet: broken
        await asyncio.sleep(0.5)
        (tmp_path / "b.yaml").write_text(whole)
        await asyncio.wait_for(arrived.wait(), 30)
        assert [names(result) for result in seen[2:]] == [["a", "b", "c"]]
        assert seen[-1].ok
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_a_folder_that_changes_while_it_is_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.yaml").write_text(SME.format(name="a", priority=1))
    whole = load_folder(tmp_path)
    reads: list[LoadResult] = [LoadResult(errors=[ResourceError("half a file")]), whole]
    fingerprints = [(("x", 1, 1),), (("x", 2, 2),), (("x", 2, 2),), (("x", 2, 2),)]

    def read(_root: Path, _decoded: object = None) -> tuple[Fingerprint, LoadResult, Fingerprint]:
        return fingerprints.pop(0), reads.pop(0), fingerprints.pop(0)

    monkeypatch.setattr(watch, "_read", read)
    updates = FolderSource(tmp_path, debounce=0.05).updates()
    first = await asyncio.wait_for(anext(updates), 30)
    assert first is not None
    assert names(first) == ["a"]
    assert first.ok
    assert reads == []
    await updates.aclose()
