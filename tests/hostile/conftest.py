"""The HTTP/2 hostile-input tests run on both event loops the server may run on:
asyncio's own and uvloop's (what ``meshext serve`` uses when uvloop is installed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    if not item.nodeid.startswith("tests/hostile/test_http2_hostile_"):
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
