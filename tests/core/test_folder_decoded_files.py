"""Reloading a folder decodes only the files whose bytes changed, and loads exactly
what a load from scratch would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from meshext.api import safe_yaml
from meshext.api.extension import ServiceMeshExtension
from meshext.sources.folder import DecodedFiles, LoadedResource, LoadResult, load_folder

DATA = Path(__file__).parent / "data"


def sme(name: str, value: str, *, image: str = "file:modules/tag.wasm") -> str:
    return (
        "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
        f"metadata:\n  name: {name}\n  namespace: bookinfo\n"
        f"spec:\n  image: {image}\n  phase: PostAuthZ\n  priority: 10\n"
        f"  config:\n    value: {value}\n"
    )


@pytest.fixture
def parsed_files(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many YAML streams were parsed (one per file decoded)."""
    calls: list[int] = []
    real = safe_yaml.load_all

    def counting(text: str, limits: safe_yaml.YamlLimits = safe_yaml.DEFAULT_LIMITS) -> Any:
        calls.append(len(text))
        return real(text, limits)

    monkeypatch.setattr(safe_yaml, "load_all", counting)
    return calls


def extension(loaded: LoadedResource) -> ServiceMeshExtension:
    assert isinstance(loaded.resource, ServiceMeshExtension)
    return loaded.resource


def same(a: LoadResult, b: LoadResult) -> bool:
    return a.resources == b.resources and a.errors == b.errors


def test_a_reload_of_an_unchanged_folder_parses_nothing_and_loads_the_same(
    tmp_path: Path, parsed_files: list[int]
) -> None:
    for i in range(5):
        (tmp_path / f"ext-{i}.yaml").write_text(sme(f"ext-{i}", str(i)))
    decoded = DecodedFiles()
    first = load_folder(tmp_path, decoded=decoded)
    assert len(parsed_files) == 5
    again = load_folder(tmp_path, decoded=decoded)
    assert len(parsed_files) == 5
    assert same(again, first)
    assert len(first.resources) == 5


def test_an_edit_of_one_file_parses_that_file_only_and_is_seen(
    tmp_path: Path, parsed_files: list[int]
) -> None:
    for i in range(5):
        (tmp_path / f"ext-{i}.yaml").write_text(sme(f"ext-{i}", str(i)))
    decoded = DecodedFiles()
    load_folder(tmp_path, decoded=decoded)
    (tmp_path / "ext-3.yaml").write_text(sme("ext-3", "edited"))
    reloaded = load_folder(tmp_path, decoded=decoded)
    assert len(parsed_files) == 6
    assert same(reloaded, load_folder(tmp_path))
    edited = next(extension(r) for r in reloaded.resources if r.key.name == "ext-3")
    assert edited.spec.config == {"value": "edited"}


def test_an_edit_that_keeps_the_size_and_the_time_is_still_seen(
    tmp_path: Path, parsed_files: list[int]
) -> None:
    path = tmp_path / "ext.yaml"
    path.write_text(sme("ext", "aaaa"))
    decoded = DecodedFiles()
    load_folder(tmp_path, decoded=decoded)
    stat = path.stat()
    path.write_text(sme("ext", "bbbb"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reloaded = load_folder(tmp_path, decoded=decoded)
    assert extension(reloaded.resources[0]).spec.config == {"value": "bbbb"}


def test_a_removed_file_is_forgotten_and_its_resources_are_gone(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(sme("a", "1"))
    (tmp_path / "b.yaml").write_text(sme("b", "2"))
    decoded = DecodedFiles()
    load_folder(tmp_path, decoded=decoded)
    assert len(decoded) == 2
    (tmp_path / "b.yaml").unlink()
    reloaded = load_folder(tmp_path, decoded=decoded)
    assert [r.key.name for r in reloaded.resources] == ["a"]
    assert len(decoded) == 1


def test_broken_files_report_the_same_errors_on_every_load_in_the_same_order(
    tmp_path: Path, parsed_files: list[int]
) -> None:
    shutil.copytree(DATA / "broken", tmp_path / "broken")
    (tmp_path / "broken" / "dup-a.yaml").write_text(sme("twice", "1") + "---\n" + sme("x", "2"))
    (tmp_path / "broken" / "dup-b.yaml").write_text(sme("twice", "3"))
    decoded = DecodedFiles()
    first = load_folder(tmp_path, decoded=decoded)
    parsed = len(parsed_files)
    again = load_folder(tmp_path, decoded=decoded)
    assert len(parsed_files) == parsed
    scratch = load_folder(tmp_path)
    assert any("duplicate" in str(e) for e in first.errors)
    assert [str(e) for e in again.errors] == [str(e) for e in scratch.errors]
    assert same(again, scratch)


def test_a_relative_image_is_resolved_against_the_files_folder_on_every_load(
    tmp_path: Path,
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    text = sme("ext", "v", image="file:tag.wasm")
    (one / "ext.yaml").write_text(text)
    (two / "other.yaml").write_text(text.replace("name: ext", "name: other"))
    loaded = load_folder(tmp_path, decoded=DecodedFiles())
    images = {r.key.name: extension(r).spec.image for r in loaded.resources}
    assert images == {"ext": f"file:{one / 'tag.wasm'}", "other": f"file:{two / 'tag.wasm'}"}


def test_a_file_that_became_unreadable_is_reported_and_not_taken_from_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ext.yaml"
    path.write_text(sme("ext", "1"))
    decoded = DecodedFiles()
    load_folder(tmp_path, decoded=decoded)
    limits = safe_yaml.YamlLimits(max_bytes=16)
    reloaded = load_folder(tmp_path, limits, decoded=decoded)
    assert not reloaded.resources
    assert "more than the limit of 16 bytes" in str(reloaded.errors[0])
