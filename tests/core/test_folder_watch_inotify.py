"""On Linux the folder source sees changes through inotify, wherever in the tree they
happen, and falls back to watchfiles when inotify cannot be used.

Polling is set to once a minute, so an update seen within the waits below came from
an event; watchfiles is made unusable unless a test is about the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import watchfiles

from meshext.sources.folder import LoadResult
from meshext.sources.inotify_watch import WatchedTree
from meshext.sources.watch import FolderSource

SME = """apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata: {{name: {name}, namespace: bookinfo}}
spec: {{image: "quay.io/ext/a:1", phase: PreAuthN, priority: 1}}
"""
WAIT = 30.0


def manifest(*names: str) -> str:
    return "---\n".join(SME.format(name=name) for name in names)


def names(result: LoadResult) -> list[str]:
    return sorted(r.key.name for r in result.resources)


class Follower:
    """Takes every update as it comes, as the control loop does, and keeps the last."""

    def __init__(self, root: Path) -> None:
        self.latest: LoadResult | None = None
        self._arrived = asyncio.Event()
        self._updates = FolderSource(root, debounce=0.05, poll_interval=60.0).updates()
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for result in self._updates:
            self.latest = result
            self._arrived.set()

    async def state_becomes(self, expected: list[str], *, errors_allowed: bool = False) -> None:
        """Wait until the last update holds exactly the ``expected`` resources."""

        async def arrival() -> None:
            while not self._holds(expected, errors_allowed):
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(arrival(), WAIT)

    def _holds(self, expected: list[str], errors_allowed: bool) -> bool:
        if self.latest is None or names(self.latest) != expected:
            return False
        return errors_allowed or self.latest.ok

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._updates.aclose()


@contextlib.asynccontextmanager
async def following(root: Path) -> AsyncIterator[Follower]:
    follower = Follower(root)
    try:
        yield follower
    finally:
        await follower.stop()


@pytest.fixture
def only_inotify(monkeypatch: pytest.MonkeyPatch) -> None:
    """watchfiles breaks if used: an update can only come from inotify."""

    def unusable(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("watchfiles was used instead of inotify")

    monkeypatch.setattr(watchfiles, "awatch", unusable)


@pytest.mark.usefixtures("only_inotify")
async def test_an_edit_and_a_new_file_are_seen_from_inotify_events(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(manifest("a"))
    async with following(tmp_path) as source:
        await source.state_becomes(["a"])
        (tmp_path / "a.yaml").write_text(manifest("a", "b"))
        await source.state_becomes(["a", "b"])
        (tmp_path / "c.yml").write_text(manifest("c"))
        await source.state_becomes(["a", "b", "c"])


@pytest.mark.usefixtures("only_inotify")
async def test_a_manifest_replaced_by_renaming_another_file_over_it_is_seen(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(manifest("a"))
    async with following(tmp_path) as source:
        await source.state_becomes(["a"])
        temporary = tmp_path / ".a.yaml.swp"
        temporary.write_text(manifest("a", "b"))
        os.rename(temporary, tmp_path / "a.yaml")
        await source.state_becomes(["a", "b"])


@pytest.mark.usefixtures("only_inotify")
async def test_a_new_subfolder_and_then_a_file_in_it_are_seen(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(manifest("a"))
    async with following(tmp_path) as source:
        await source.state_becomes(["a"])
        (tmp_path / "team").mkdir()
        await asyncio.sleep(0.5)  # the folder's own event is handled before the file exists
        (tmp_path / "team" / "b.yaml").write_text(manifest("b"))
        await source.state_becomes(["a", "b"])
        # Folders created together with their file, then edited: all below are watched.
        deep = tmp_path / "x" / "y" / "z"
        deep.mkdir(parents=True)
        (deep / "c.yaml").write_text(manifest("c"))
        await source.state_becomes(["a", "b", "c"])
        await asyncio.sleep(0.5)
        (deep / "c.yaml").write_text(manifest("c", "d"))
        await source.state_becomes(["a", "b", "c", "d"])


@pytest.mark.usefixtures("only_inotify")
async def test_a_removed_or_moved_away_subfolder_does_not_break_the_watch(tmp_path: Path) -> None:
    root = tmp_path / "config"
    (root / "team").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "a.yaml").write_text(manifest("a"))
    (root / "team" / "b.yaml").write_text(manifest("b"))
    (root / "other" / "c.yaml").write_text(manifest("c"))
    async with following(root) as source:
        await source.state_becomes(["a", "b", "c"])

        shutil.rmtree(root / "team")
        await source.state_becomes(["a", "c"])
        os.rename(root / "other", tmp_path / "elsewhere")
        await source.state_becomes(["a"])

        (root / "d.yaml").write_text(manifest("d"))
        await source.state_becomes(["a", "d"])
        (root / "team").mkdir()
        await asyncio.sleep(0.5)
        (root / "team" / "b.yaml").write_text(manifest("b"))
        await source.state_becomes(["a", "b", "d"])
        # A folder moved in brings its manifests with it, without any file event.
        os.rename(tmp_path / "elsewhere", root / "back")
        await source.state_becomes(["a", "b", "c", "d"])
        await asyncio.sleep(0.5)
        (root / "back" / "c.yaml").write_text(manifest("c", "e"))
        await source.state_becomes(["a", "b", "c", "d", "e"])


@pytest.mark.usefixtures("only_inotify")
async def test_a_root_created_after_the_start_is_watched(tmp_path: Path) -> None:
    root = tmp_path / "config"
    async with following(root) as source:
        await source.state_becomes([], errors_allowed=True)
        root.mkdir()
        (root / "a.yaml").write_text(manifest("a"))
        await source.state_becomes(["a"])
        await asyncio.sleep(0.5)
        (root / "b.yaml").write_text(manifest("b"))
        await source.state_becomes(["a", "b"])


@pytest.mark.usefixtures("only_inotify")
async def test_a_root_removed_and_created_again_is_watched_again(tmp_path: Path) -> None:
    root = tmp_path / "config"
    root.mkdir()
    (root / "a.yaml").write_text(manifest("a"))
    async with following(root) as source:
        await source.state_becomes(["a"])
        shutil.rmtree(root)
        await source.state_becomes([], errors_allowed=True)
        root.mkdir()
        (root / "b.yaml").write_text(manifest("b"))
        await source.state_becomes(["b"])
        await asyncio.sleep(0.5)
        (root / "c.yaml").write_text(manifest("c"))
        await source.state_becomes(["b", "c"])


@pytest.mark.usefixtures("only_inotify")
async def test_a_root_that_is_a_single_file_is_followed_through_edits_and_renames(
    tmp_path: Path,
) -> None:
    root = tmp_path / "mesh.yaml"
    root.write_text(manifest("a"))
    async with following(root) as source:
        await source.state_becomes(["a"])
        root.write_text(manifest("a", "b"))
        await source.state_becomes(["a", "b"])
        (tmp_path / ".mesh.yaml.new").write_text(manifest("c"))
        os.rename(tmp_path / ".mesh.yaml.new", root)
        await source.state_becomes(["c"])


def configmap_version(root: Path, version: str, files: dict[str, str]) -> Path:
    """A folder of one ConfigMap version, laid out as the kubelet writes it."""
    folder = root / f"..2026_12_05_{version}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.usefixtures("only_inotify")
async def test_a_configmap_update_swapping_its_data_link_is_seen(tmp_path: Path) -> None:
    first = configmap_version(tmp_path, "v1", {"a.yaml": manifest("a")})
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")
    async with following(tmp_path) as source:
        await source.state_becomes(["a"])

        second = configmap_version(tmp_path, "v2", {"a.yaml": manifest("a", "b")})
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        shutil.rmtree(first)
        await source.state_becomes(["a", "b"])


@pytest.mark.usefixtures("only_inotify")
async def test_a_root_that_is_a_link_renamed_over_by_another_is_followed(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "a.yaml").write_text(manifest("a"))
    root = tmp_path / "current"
    root.symlink_to("v1")
    async with following(root) as source:
        await source.state_becomes(["a"])

        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "a.yaml").write_text(manifest("a", "b"))
        (tmp_path / "next").symlink_to("v2")
        os.rename(tmp_path / "next", root)
        await source.state_becomes(["a", "b"])
        await asyncio.sleep(0.5)
        (tmp_path / "v2" / "c.yaml").write_text(manifest("c"))  # the new target is watched
        await source.state_becomes(["a", "b", "c"])


@pytest.mark.usefixtures("only_inotify")
async def test_no_edit_of_a_burst_of_a_hundred_is_lost(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(manifest("a0"))
    async with following(tmp_path) as source:
        await source.state_becomes(["a0"])
        for edit in range(1, 101):
            (tmp_path / "a.yaml").write_text(manifest(f"a{edit}"))
        await source.state_becomes(["a100"])


async def test_when_inotify_cannot_be_set_up_watchfiles_takes_over_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import inotify_simple  # noqa: PLC0415 (Linux only)

    def out_of_watches(*_args: object, **_kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inotify_simple, "INotify", out_of_watches)
    (tmp_path / "a.yaml").write_text(manifest("a"))
    with caplog.at_level(logging.WARNING, logger="meshext.sources.watch"):
        async with following(tmp_path) as source:
            await source.state_becomes(["a"])
            await asyncio.sleep(0.5)  # watchfiles registers its watches
            (tmp_path / "b.yaml").write_text(manifest("b"))
            await source.state_becomes(["a", "b"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "inotify" in warnings[0].getMessage()
    assert "No space left on device" in warnings[0].getMessage()


async def test_when_the_system_runs_out_of_watches_later_watchfiles_takes_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import inotify_simple  # noqa: PLC0415 (Linux only)

    class RunsOutOnBigFolders(inotify_simple.INotify):  # type: ignore[misc]
        def add_watch(self, path: object, mask: int) -> int:
            if Path(str(path)).name == "big":
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(super().add_watch(path, mask))

    monkeypatch.setattr(inotify_simple, "INotify", RunsOutOnBigFolders)
    (tmp_path / "a.yaml").write_text(manifest("a"))
    with caplog.at_level(logging.WARNING, logger="meshext.sources.watch"):
        async with following(tmp_path) as source:
            await source.state_becomes(["a"])
            (tmp_path / "big").mkdir()
            await asyncio.sleep(1.0)  # inotify fails on the new folder; watchfiles starts
            (tmp_path / "big" / "b.yaml").write_text(manifest("b"))
            await source.state_becomes(["a", "b"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "No space left on device" in warnings[0]


def test_the_watches_follow_folders_created_moved_and_removed(tmp_path: Path) -> None:
    root = tmp_path / "config"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    (root / ".git").mkdir()
    notified: list[str] = []
    failures: list[OSError] = []
    tree = WatchedTree(root, lambda: notified.append("change"), failures.append)
    tree.start()
    try:
        assert tree.watched_folders() == [root, root / "a", root / "a" / "deep", root / "b"]
        os.rename(root / "a", tmp_path / "away")
        shutil.rmtree(root / "b")
        (root / "c" / "d").mkdir(parents=True)
        (root / ".cache").mkdir()
        tree.read_events()  # the kernel queued the events as the calls above returned
        assert tree.watched_folders() == [root, root / "c", root / "c" / "d"]
        assert notified == ["change"]  # once for the whole read

        os.rename(tmp_path / "away", root / "back")
        (tmp_path / "away-again").mkdir()
        tree.read_events()
        assert tree.watched_folders() == [
            root,
            root / "back",
            root / "back" / "deep",
            root / "c",
            root / "c" / "d",
        ]
        assert failures == []
    finally:
        tree.close()
