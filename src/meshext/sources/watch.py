"""A config source over a folder that reloads it whenever a file below it changes.

Changes are debounced (editors write a file in several steps, and a ``git checkout``
touches many files at once): the folder is read again once it has been quiet for
``debounce`` seconds, or at the latest ``max_delay`` after the first change. Every
reload yields the complete state, so a consumer never needs the history.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import watchfiles

from meshext.sources.folder import YAML_SUFFIXES, LoadResult, load_folder


class FolderSource:
    """:class:`meshext.sources.base.ConfigSource` over a folder of YAML manifests."""

    def __init__(self, root: Path, *, debounce: float = 0.1, max_delay: float = 2.0) -> None:
        self.root = root
        self.debounce = debounce
        self.max_delay = max_delay

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r})"

    async def updates(self) -> AsyncIterator[LoadResult]:
        yield await asyncio.to_thread(load_folder, self.root)
        watch_root = self.root if self.root.is_dir() else self.root.parent
        async for changes in watchfiles.awatch(
            watch_root,
            watch_filter=_yaml_changes,
            # watchfiles: ``step`` is the quiet period, ``debounce`` the longest wait.
            step=max(int(self.debounce * 1000), 10),
            debounce=int(self.max_delay * 1000),
        ):
            if changes:
                yield await asyncio.to_thread(load_folder, self.root)


def _yaml_changes(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(YAML_SUFFIXES) and "/." not in path
