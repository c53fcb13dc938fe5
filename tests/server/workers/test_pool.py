"""The worker pool's hold on the xDS port, without starting workers."""

from __future__ import annotations

import socket

import pytest

from meshext.envoy.node import HostPort
from meshext.server.workers.pool import ShippingSnapshotCache, WorkerPool, reserve_port
from meshext.xds.server import ServerError
from tests.xds.recorder import Recorder


def test_a_reserved_port_cannot_be_taken_by_a_server_without_reuse_port() -> None:
    held, port = reserve_port(HostPort("127.0.0.1", 0))
    try:
        other = socket.socket()
        with pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))
        other.close()
    finally:
        held.close()


async def test_workers_never_start_on_a_port_someone_else_listens_on() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cache = ShippingSnapshotCache()
    pool = WorkerPool(2, cache, Recorder(cache))
    try:
        with pytest.raises(ServerError, match="cannot listen on"):
            await pool.start(f"127.0.0.1:{taken.getsockname()[1]}")
        assert pool.worker_pids() == []
    finally:
        taken.close()
