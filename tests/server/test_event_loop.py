"""`meshext serve` runs on uvloop, unless its environment asks for asyncio's loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from meshext.cli.serve import event_loop_factory


def test_serve_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHEXT_EVENT_LOOP", raising=False)
    factory = event_loop_factory()
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)


def test_meshext_event_loop_asyncio_selects_asyncios_own_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESHEXT_EVENT_LOOP", "asyncio")
    assert event_loop_factory() is None
