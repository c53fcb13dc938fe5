"""Resources read from a folder get a generation that advances when their spec changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshext.sources.folder import LoadResult, load_folder
from meshext.sources.generations import GenerationTracker
from meshext.sources.watch import FolderSource

SME = """apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata: {{name: {name}, namespace: bookinfo{extra}}}
spec: {{image: "quay.io/ext/a:1", phase: PreAuthN, priority: {priority}}}
"""


def write(folder: Path, name: str, priority: int, extra: str = "") -> None:
    (folder / f"{name}.yaml").write_text(SME.format(name=name, priority=priority, extra=extra))


def generations(result: LoadResult) -> dict[str, int]:
    return {r.key.name: r.resource.metadata.generation for r in result.resources}


def test_a_spec_edit_advances_the_generation_and_a_reload_without_one_keeps_it(
    tmp_path: Path,
) -> None:
    tracker = GenerationTracker()
    write(tmp_path, "a", 1)
    write(tmp_path, "b", 1)
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 1, "b": 1}

    write(tmp_path, "a", 2)
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 2, "b": 1}
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 2, "b": 1}

    write(tmp_path, "a", 3)
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 3, "b": 1}


def test_a_metadata_only_edit_keeps_the_generation(tmp_path: Path) -> None:
    tracker = GenerationTracker()
    write(tmp_path, "a", 1)
    tracker.stamp(load_folder(tmp_path))
    write(tmp_path, "a", 1, extra=", labels: {team: edge}")
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 1}


def test_a_generation_written_in_the_file_is_the_start_and_an_edited_one_a_floor(
    tmp_path: Path,
) -> None:
    tracker = GenerationTracker()
    write(tmp_path, "a", 1, extra=", generation: 7")
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 7}
    write(tmp_path, "a", 2, extra=", generation: 7")
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 8}
    write(tmp_path, "a", 2, extra=", generation: 20")
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 20}


def test_a_removed_and_recreated_resource_starts_again(tmp_path: Path) -> None:
    tracker = GenerationTracker()
    write(tmp_path, "a", 1)
    tracker.stamp(load_folder(tmp_path))
    write(tmp_path, "a", 2)
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 2}
    (tmp_path / "a.yaml").unlink()
    assert generations(tracker.stamp(load_folder(tmp_path))) == {}
    write(tmp_path, "a", 3)
    assert generations(tracker.stamp(load_folder(tmp_path))) == {"a": 1}


async def test_the_folder_source_advances_the_generation_on_each_spec_edit(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a", 1)
    updates = FolderSource(tmp_path, debounce=0.05).updates()
    assert generations(await asyncio.wait_for(anext(updates), 30)) == {"a": 1}
    write(tmp_path, "a", 2)
    assert generations(await asyncio.wait_for(anext(updates), 30)) == {"a": 2}
    write(tmp_path, "a", 5)
    assert generations(await asyncio.wait_for(anext(updates), 30)) == {"a": 3}
    await updates.aclose()
