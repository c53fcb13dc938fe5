"""The folder source yields the whole state again whenever a manifest changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshext.sources.folder import LoadResult
from meshext.sources.watch import FolderSource

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
