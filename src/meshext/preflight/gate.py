"""The pre-flight gate between image resolution and planning.

A proxy gets an extension only in a combination (module, root id, VM configuration,
plugin configuration) that passed its pre-flight. Before planning, the control loop
passes every extension and its image resolution through :meth:`PreflightGate.gate`:

- a combination that passed is planned as it is;
- one not started yet is started in the background (the gate calls ``on_result``
  when it finishes) and, meanwhile, the extension is planned with the last
  combination of it that passed, if any, or else left out like an extension whose
  image is not resolved yet;
- one that failed is never planned: the last combination that passed keeps running,
  if any (as when a proxy rejects a new version), and status says why in the
  module's own words.

Only the pre-flight's inputs are taken from the earlier combination; selector, phase
and priority are always the current ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from meshext.api.meta import ResourceKey
from meshext.mesh.extension import Extension
from meshext.mesh.resolution import Resolution, ResolutionState, ResolvedModule
from meshext.mesh.rootid import HOW_TO_SET, effective_root_id
from meshext.preflight.errors import PreflightError
from meshext.preflight.host import PreflightResult
from meshext.preflight.runner import PreflightKey, PreflightRunner

log = logging.getLogger(__name__)

PENDING_MESSAGE = "pre-flight: starting the module in the sandbox with this configuration"


@dataclass(frozen=True)
class Gated:
    """What to plan with, and what status reports."""

    extensions: tuple[Extension, ...]
    resolutions: dict[ResourceKey, Resolution]
    statuses: dict[ResourceKey, Resolution]


def preflight_key(ext: Extension, module: ResolvedModule) -> PreflightKey:
    root_id = effective_root_id(ext.root_id, module.manifest)
    return PreflightKey.of(module.sha256, root_id, ext.config, env=ext.env)


def failure_message(ext: Extension, key: PreflightKey, result: PreflightResult) -> str:
    """Why ``ext`` is not delivered, naming it, its root id and the module's words."""
    text = f"{ext.key.kind} {ext.key.namespace}/{ext.key.name} failed its pre-flight: "
    text += result.describe()
    if result.stage.startswith("proxy_on_context_create"):
        text += (
            f". The configured root id {key.root_id!r} may have no root context in this "
            f"module: {HOW_TO_SET}"
        )
    return text


def with_warnings(resolution: Resolution, key: PreflightKey, result: PreflightResult) -> Resolution:
    """``resolution``, its message extended with what the pre-flight of a combination
    that passed found suspicious (a configuration the module never read)."""
    warning = result.unread_config_warning(key.plugin_config, key.root_id)
    if warning is None:
        return resolution
    message = f"{resolution.message}; {warning}" if resolution.message else warning
    return dataclasses.replace(resolution, message=message)


class PreflightGate:
    def __init__(self, runner: PreflightRunner, on_result: Callable[[], None]) -> None:
        self._runner = runner
        self._on_result = on_result
        self._passed: dict[ResourceKey, tuple[Extension, Resolution]] = {}
        self._running: dict[PreflightKey, asyncio.Task[None]] = {}
        self._errors: dict[PreflightKey, str] = {}

    def gate(
        self, extensions: Iterable[Extension], resolutions: Mapping[ResourceKey, Resolution]
    ) -> Gated:
        planned: list[Extension] = []
        plan_resolutions: dict[ResourceKey, Resolution] = {}
        statuses: dict[ResourceKey, Resolution] = {}
        seen: set[ResourceKey] = set()
        for ext in extensions:
            seen.add(ext.key)
            resolution = resolutions.get(ext.key)
            if resolution is None or resolution.state is not ResolutionState.READY:
                planned.append(ext)
                if resolution is not None:
                    plan_resolutions[ext.key] = statuses[ext.key] = resolution
                continue
            assert resolution.module is not None
            key = preflight_key(ext, resolution.module)
            result = self._runner.cached(key)
            if result is not None and result.passed:
                self._passed[ext.key] = (ext, resolution)
                planned.append(ext)
                plan_resolutions[ext.key] = resolution
                statuses[ext.key] = with_warnings(resolution, key, result)
                continue
            if result is None and key in self._errors:
                status = Resolution.failed(self._errors[key], retryable=True)
            elif result is None:
                self._start(ext, key, resolution.module)
                status = Resolution.pending(PENDING_MESSAGE)
            else:
                status = Resolution.failed(failure_message(ext, key, result))
            statuses[ext.key] = status
            previous = self._passed.get(ext.key)
            if previous is None:
                planned.append(ext)
                plan_resolutions[ext.key] = status
            else:
                earlier, earlier_resolution = previous
                planned.append(
                    dataclasses.replace(
                        ext, config=earlier.config, root_id=earlier.root_id, env=earlier.env
                    )
                )
                plan_resolutions[ext.key] = earlier_resolution
        for gone in [k for k in self._passed if k not in seen]:
            del self._passed[gone]
        return Gated(tuple(planned), plan_resolutions, statuses)

    def _start(self, ext: Extension, key: PreflightKey, module: ResolvedModule) -> None:
        if key in self._running:
            return
        self._running[key] = asyncio.get_running_loop().create_task(
            self._run(ext, key, module), name=f"pre-flight {ext.key}"
        )

    async def _run(self, ext: Extension, key: PreflightKey, module: ResolvedModule) -> None:
        try:
            result = await self._runner.run(key, Path(module.path), plugin_name=ext.name)
        except PreflightError as exc:
            self._errors[key] = f"{ext.key}: the pre-flight could not run: {exc}"
            log.error("%s", self._errors[key])
        else:
            self._errors.pop(key, None)
            if not result.passed:
                log.warning("%s", failure_message(ext, key, result))
        finally:
            self._running.pop(key, None)
        self._on_result()

    def close(self) -> None:
        for task in self._running.values():
            task.cancel()


async def preflight_all(
    runner: PreflightRunner,
    extensions: Iterable[Extension],
    resolutions: Mapping[ResourceKey, Resolution],
) -> dict[ResourceKey, Resolution]:
    """``resolutions`` with every resolved extension whose combination fails its
    pre-flight turned into a failure that says why (for one-shot commands)."""
    checked = dict(resolutions)
    for ext in extensions:
        resolution = resolutions.get(ext.key)
        if resolution is None or resolution.module is None:
            continue
        key = preflight_key(ext, resolution.module)
        try:
            result = await runner.run(key, Path(resolution.module.path), plugin_name=ext.name)
        except PreflightError as exc:
            checked[ext.key] = Resolution.failed(f"the pre-flight could not run: {exc}")
            continue
        if not result.passed:
            checked[ext.key] = Resolution.failed(failure_message(ext, key, result))
        else:
            checked[ext.key] = with_warnings(resolution, key, result)
    return checked
