"""The ``harness`` fixture: an ADS server on loopback with a recorder and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meshext.xds.cache import SnapshotCache
from tests.xds.recorder import Recorder
from tests.xds.served import Harness, serving


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with serving(Recorder(SnapshotCache())) as ready:
        yield ready
