"""Runs pre-flights off the event loop and remembers their results by content.

A result depends only on the module's bytes and what the proxy hands it before the
first request, so :class:`PreflightKey` (module sha256, root id, VM configuration,
plugin configuration, environment) identifies it: a combination is started once,
and an unchanged configuration costs a dictionary lookup on every recomputation
after that. Runs are CPU-bound (wasmtime compiles the module), so they happen in
worker threads, a bounded number at a time, each on an engine of its own that keeps
recently compiled modules.

With a :class:`~meshext.preflight.store.PreflightStore`, results are also kept on
disk: a result not in memory is looked up there (off the event loop) before the
module is started, and every new result is written there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshext.preflight.errors import PreflightError
from meshext.preflight.host import Limits, PreflightInput, PreflightResult, SandboxEngine
from meshext.preflight.store import PreflightStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreflightKey:
    sha256: str
    root_id: str
    vm_config: str
    plugin_config: str
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        sha256: str,
        root_id: str,
        plugin_config: str,
        *,
        vm_config: str = "",
        env: Mapping[str, str] | None = None,
    ) -> PreflightKey:
        return cls(sha256, root_id, vm_config, plugin_config, tuple(sorted((env or {}).items())))


class PreflightRunner:
    """Pre-flights with a bounded, content-keyed memory of results."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        concurrency: int = 1,
        remembered: int = 4096,
        store: PreflightStore | None = None,
    ) -> None:
        self._limits = limits or Limits()
        self._engines = [SandboxEngine() for _ in range(concurrency)]
        self._slots = asyncio.Semaphore(concurrency)
        self._results: OrderedDict[PreflightKey, PreflightResult] = OrderedDict()
        self._remembered = remembered
        self._store = store
        self.runs = 0
        """How many pre-flights actually ran (the rest were answered from memory or disk)."""
        self.restored = 0
        """How many results were read back from the store."""

    def cached(self, key: PreflightKey) -> PreflightResult | None:
        result = self._results.get(key)
        if result is not None:
            self._results.move_to_end(key)
        return result

    async def run(
        self, key: PreflightKey, module: Path, *, plugin_name: str = ""
    ) -> PreflightResult:
        """The result for ``key``, running the module at ``module`` unless remembered."""
        known = self.cached(key)
        if known is not None:
            return known
        async with self._slots:
            known = self.cached(key)
            if known is not None:
                return known
            given = PreflightInput(
                root_id=key.root_id,
                plugin_config=key.plugin_config.encode(),
                vm_config=key.vm_config.encode(),
                plugin_name=plugin_name,
                env=dict(key.env),
            )
            engine = self._engines.pop()
            try:
                # One trip to a worker thread: a change waits for its pre-flight.
                result, restored = await asyncio.to_thread(self._check, key, module, given, engine)
            finally:
                self._engines.append(engine)
            if restored:
                self.restored += 1
            else:
                self.runs += 1
        self._remember(key, result)
        return result

    def _check(
        self, key: PreflightKey, module: Path, given: PreflightInput, engine: SandboxEngine
    ) -> tuple[PreflightResult, bool]:
        """In a worker thread: the kept result (and ``True``), or the module run and its
        result kept (and ``False``)."""
        if self._store is not None:
            kept = self._store.get(key)
            if kept is not None:
                return kept, True

        def read() -> bytes:
            try:
                return module.read_bytes()
            except OSError as exc:
                raise PreflightError(f"cannot read module {module}: {exc}") from exc

        result = engine.run_known(key.sha256, read, given, self._limits)
        if self._store is not None:
            self._store.put(key, result)
        return result, False

    def _remember(self, key: PreflightKey, result: PreflightResult) -> None:
        self._results[key] = result
        while len(self._results) > self._remembered:
            self._results.popitem(last=False)
