"""Pre-flight results kept on disk, so a restarted ``meshext serve`` need not start
every module again (compiling a Go module alone takes seconds).

One file per result under ``<cache-dir>/preflight/``, named by the sha256 of the full
key: the module's sha256, root id, VM configuration, plugin configuration,
environment, and :data:`~meshext.preflight.host.HOST_VERSION` (a sandbox that could
answer differently never reads an older one's results). The file repeats the key, and
a result is used only when the key inside equals the key asked for, so a file renamed,
copied or written by something else is not trusted.

Files are written to a temporary file in the same folder and renamed into place, so a
reader sees a whole file or none. The folder is bounded: past ``max_entries`` files
the least recently written are removed.

Nothing found on disk is trusted blindly. A file that is not a regular file (a
symlink, a folder, a device), larger than ``max_file_bytes``, unreadable, not JSON,
of another format or host version, with a key that differs, or with values of the
wrong types is ignored with a warning naming the file and why, and the pre-flight
simply runs again (its result then replaces the file). Failures to write are
warnings too: the store is a cache, never a reason for a pre-flight to fail.

Results that depend on the machine's load (a module stopped by the wall-clock limit)
are not kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from meshext.preflight.host import HOST_VERSION, LogLine, PreflightResult

if TYPE_CHECKING:
    from meshext.preflight.runner import PreflightKey

log = logging.getLogger(__name__)

FORMAT: Final = 1
LOG_LINES_KEPT: Final = 20
LOG_LINE_CHARS: Final = 1000


class PreflightStore:
    """Results of pre-flights in files under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        max_entries: int = 4096,
        max_file_bytes: int = 256 * 1024,
        host_version: str = HOST_VERSION,
    ) -> None:
        self.directory = directory
        self.max_entries = max_entries
        self.max_file_bytes = max_file_bytes
        self.host_version = host_version
        self._written = 0

    def path_for(self, key: PreflightKey) -> Path:
        return self.directory / (_digest(self._key_document(key)) + ".json")

    def _key_document(self, key: PreflightKey) -> dict[str, Any]:
        return {
            "host": self.host_version,
            "sha256": key.sha256,
            "root_id": key.root_id,
            "vm_config": key.vm_config,
            "plugin_config": key.plugin_config,
            "env": [list(pair) for pair in key.env],
        }

    # --- reading -----------------------------------------------------------------------

    def get(self, key: PreflightKey) -> PreflightResult | None:
        """The kept result for ``key``, or ``None`` (nothing kept, or nothing usable)."""
        path = self.path_for(key)
        try:
            text = self._read(path)
        except FileNotFoundError:
            return None
        except (OSError, _Unusable) as exc:
            self._ignore(path, str(exc))
            return None
        try:
            return self._decode(text, key)
        except (_Unusable, ValueError, TypeError, KeyError) as exc:
            self._ignore(path, str(exc) or type(exc).__name__)
            return None

    def _read(self, path: Path) -> bytes:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno is not None and os.path.islink(path):
                raise _Unusable("it is a symbolic link") from exc
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _Unusable("it is not a regular file")
            if info.st_size > self.max_file_bytes:
                raise _Unusable(
                    f"it holds {info.st_size} bytes, more than the {self.max_file_bytes} "
                    "a result may take"
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(self.max_file_bytes + 1)
            if len(data) > self.max_file_bytes:
                raise _Unusable(f"it holds more than {self.max_file_bytes} bytes")
            return data
        finally:
            os.close(fd)

    def _decode(self, text: bytes, key: PreflightKey) -> PreflightResult:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise _Unusable("it is not a JSON object")
        if document.get("format") != FORMAT:
            raise _Unusable(f"format {document.get('format')!r}, not {FORMAT}")
        if document.get("key") != self._key_document(key):
            raise _Unusable("the key inside is not the key it is filed under")
        result = document["result"]
        if not isinstance(result, dict):
            raise _Unusable("result is not a JSON object")
        logs = result["logs"]
        if not isinstance(logs, list) or not all(
            isinstance(line, list) and len(line) == 2 and all(isinstance(p, str) for p in line)
            for line in logs
        ):
            raise _Unusable("logs is not a list of [level, text] pairs")
        return PreflightResult(
            passed=_typed(result, "passed", bool),
            stage=_typed(result, "stage", str),
            reason=_typed(result, "reason", str),
            logs=tuple(LogLine(level, line) for level, line in logs),
            config_read=_typed(result, "config_read", bool),
        )

    def _ignore(self, path: Path, why: str) -> None:
        log.warning("pre-flight store: ignoring %s (%s); the pre-flight runs again", path, why)

    # --- writing -----------------------------------------------------------------------

    def put(self, key: PreflightKey, result: PreflightResult) -> None:
        """Keep ``result`` for ``key`` (never raises: a failure to write is a warning)."""
        if not worth_keeping(result):
            return
        document = {
            "format": FORMAT,
            "key": self._key_document(key),
            "result": {
                "passed": result.passed,
                "stage": result.stage,
                "reason": result.reason,
                "config_read": result.config_read,
                "logs": [
                    [line.level, line.text[:LOG_LINE_CHARS]]
                    for line in result.logs[-LOG_LINES_KEPT:]
                ],
            },
        }
        data = json.dumps(document, sort_keys=True).encode()
        if len(data) > self.max_file_bytes:
            log.warning("pre-flight store: a result of %d bytes is not kept", len(data))
            return
        path = self.path_for(key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            log.warning("pre-flight store: cannot keep a result in %s: %s", path, exc)
            return
        self._written += 1
        if self._written % 64 == 1:
            self.prune()

    def prune(self) -> None:
        """Remove the least recently written results past ``max_entries``."""
        try:
            entries = []
            with os.scandir(self.directory) as scan:
                for entry in scan:
                    if entry.name.endswith(".json") and entry.is_file(follow_symlinks=False):
                        entries.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path))
        except OSError as exc:
            log.warning("pre-flight store: cannot list %s: %s", self.directory, exc)
            return
        entries.sort()
        for _, path in entries[: max(0, len(entries) - self.max_entries)]:
            with contextlib.suppress(OSError):
                os.unlink(path)


def worth_keeping(result: PreflightResult) -> bool:
    """Whether ``result`` depends only on the key (not on the machine's load)."""
    return result.passed or "ran longer than" not in result.reason


class _Unusable(Exception):
    """A kept file that must not be used; the message says why."""


def _typed(document: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = document[name]
    if not isinstance(value, kind):
        raise _Unusable(f"{name} is not a {kind.__name__}")
    return value


def _digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
