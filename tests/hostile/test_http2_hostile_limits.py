"""Hostile HTTP/2 clients against the gRPC server's resource limits, on loopback.

The server here is an :class:`~meshext.rpc.RpcServer` serving small test methods
(``tests.rpc.served``) with limits shortened so that each test takes well under a
second: the preface timeout, the unread-requests budget, keepalive and the
housekeeping period. Each test checks what the server answers a raw client, and
that a grpcio client on the same server is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from meshext.rpc import Limits, Status
from tests.rpc import raw_client as h2
from tests.rpc.raw_client import RawClient, connected
from tests.rpc.served import Served, assert_unread_counted, pending_bytes, serving

LIMITS = Limits(
    preface_timeout=0.3,
    inbox_bytes=256 * 1024,
    # Windows under the inbox budget: a client keeping to them never exceeds it, however
    # much one socket read brings in (uvloop reads up to 256 KiB at a time).
    stream_window=64 * 1024,
    connection_window=128 * 1024,
)


@pytest.fixture
async def rpc() -> AsyncIterator[Served]:
    async with serving(LIMITS) as served:
        yield served


async def test_a_truncated_preface_then_silence_is_closed_after_the_preface_timeout(
    rpc: Served,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with connected(rpc.port, preface=h2.PREFACE[:10]) as client:
        await client.until_closed(timeout=5)
    waited = loop.time() - started
    assert LIMITS.preface_timeout <= waited + 0.05 < 3
    assert rpc.server.connections == set()
    await rpc.assert_still_serves()


async def test_requests_the_handler_does_not_read_are_bounded_by_the_inbox_limit(
    rpc: Served,
) -> None:
    async with connected(rpc.port) as client:
        client.send(client.request(1, "/test.Hold/Hold"))
        client.send(*[h2.data(1, h2.grpc_message(b"r" * 10_000)) for _ in range(40)])
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    assert b"not read yet" in goaway.debug
    await rpc.assert_still_serves()


async def test_a_client_sending_within_its_windows_is_granted_more_as_it_goes(
    rpc: Served,
) -> None:
    # 4 MiB on one call: 32 times the connection window, 64 times the stream window the
    # server first grants, so the client must wait for its WINDOW_UPDATEs.
    message = h2.grpc_message(b"s" * 100_000)
    async with connected(rpc.port) as client:
        client.send(client.request(1, "/test.Sink/Sink"))
        waits = await client.send_within_windows(1, message * 42)
        client.send(h2.data(1, b"", end_stream=True))
        outcome = await client.stream_outcome(1)
    assert waits > 0
    assert outcome.grpc_status == Status.OK
    assert outcome.data[5:] == str(100_000 * 42).encode()
    await rpc.assert_still_serves()


async def test_a_client_that_keeps_its_socket_open_after_goaway_is_disconnected(
    rpc: Served,
) -> None:
    async with connected(rpc.port) as client:
        client.send(h2.ping() * 5000)
        goaway = await client.goaway_and_close()
        assert goaway.code == h2.ENHANCE_YOUR_CALM
        # The client neither closes nor stops sending: the server lets go of it anyway.
        client.send(h2.ping() * 100)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while rpc.server.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert rpc.server.connections == set()
    await rpc.assert_still_serves()


async def test_requests_left_unread_by_calls_that_ended_are_not_held_against_the_connection(
    rpc: Served,
) -> None:
    # Each call ends with 100 KiB unread; only one is open at a time, so the connection
    # never has more than 100 KiB of unread requests, well under the 256 KiB limit.
    async with connected(rpc.port) as client:
        for stream_id in range(1, 12, 2):
            client.send(
                client.request(stream_id, "/test.Hold/Hold"),
                h2.data(stream_id, h2.grpc_message(b"r" * 100_000), end_stream=True),
            )
            outcome = await client.stream_outcome(stream_id)
            assert outcome.grpc_status == Status.OK
        assert client.goaway is None
        [conn] = rpc.server.connections
        assert conn.inbox_bytes == 0
    await rpc.assert_still_serves()


async def test_requests_sent_in_part_on_many_streams_count_against_the_inbox_limit(
    rpc: Served,
) -> None:
    # Ten calls, each with 60 KiB of a 100 KiB request that never completes: 600 KiB
    # the server would hold, more than the 256 KiB it allows a connection.
    async with connected(rpc.port) as client:
        for stream_id in range(1, 21, 2):
            head = h2.grpc_message(b"p" * 60_000, length=100_000)
            client.send(client.request(stream_id, "/test.Hold/Hold"), h2.data(stream_id, head))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    await rpc.assert_still_serves()


async def test_a_handler_writing_to_a_client_that_never_reads_waits_for_its_window(
    rpc: Served,
) -> None:
    async with connected(rpc.port) as client:
        client.send(client.request(1, "/test.Echo/Echo"))
        client.send(*[h2.data(1, h2.grpc_message(b"e" * 16_000)) for _ in range(10)])
        await client.read_until(lambda: client.data_received >= 65_535)
        await client.read_quiet(0.1)
        assert client.data_received == 65_535  # the default windows, never updated
        [conn] = rpc.server.connections
        # The echo handler waits for window with one response: the other requests stay
        # unread (and count against the inbox limit), not queued as responses.
        assert pending_bytes(conn) <= 16_005
        assert conn.inbox_bytes > 0
        assert_unread_counted(conn)
        client.send(*[h2.data(1, h2.grpc_message(b"e" * 16_000)) for _ in range(30)])
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    await rpc.assert_still_serves()


async def answers_after(client: RawClient) -> list[h2.Frame]:
    """Every frame the server sends until it acknowledges a PING sent now."""
    client.send(h2.ping(b"lastping"))
    await client.flush()
    frames: list[h2.Frame] = []
    while True:
        received = await client.read_frame()
        assert received is not None, "the server closed the connection"
        if received.type == h2.PING and received.payload == b"lastping":
            return frames
        frames.append(received)


async def test_data_flooding_a_closed_stream_gets_no_answer_per_frame(rpc: Served) -> None:
    async with connected(rpc.port) as client:
        client.send(client.request(1, "/no.Such/Method", end_stream=True))
        assert (await client.stream_outcome(1)).grpc_status == Status.UNIMPLEMENTED
        client.send(h2.frame(h2.DATA, h2.END_STREAM, 1) * 50_000)
        client.send(h2.frame(h2.DATA, 0, 1, b"x") * 50_000)
        answers = await answers_after(client)
    resets = [a for a in answers if a.type == h2.RST_STREAM]
    assert len(resets) <= 1
    await rpc.assert_still_serves()


async def test_data_after_the_clients_end_of_stream_resets_the_call_once(rpc: Served) -> None:
    async with connected(rpc.port) as client:
        client.send(
            client.request(1, "/test.Wait/Wait"),
            h2.data(1, h2.grpc_message(b"last"), end_stream=True),
            h2.frame(h2.DATA, 0, 1, b"x") * 10_000,
        )
        answers = await answers_after(client)
        resets = [a for a in answers if a.type == h2.RST_STREAM]
        assert [client.outcomes[1].reset_code] == [h2.STREAM_CLOSED]
        assert len(resets) == 1
        [conn] = rpc.server.connections
        assert conn.calls == {}
    await rpc.assert_still_serves()


# -- housekeeping shortened: keepalive and the control-frame budget --------------------

FAST_LIMITS = Limits(keepalive_time=0.2, keepalive_timeout=0.5)


@pytest.fixture
async def fast(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    """The test server with housekeeping every 0.1 s (not every 10 s)."""
    monkeypatch.setattr("meshext.rpc.server.HOUSEKEEPING_PERIOD", 0.1)
    async with serving(FAST_LIMITS) as served:
        yield served


async def test_a_client_that_does_not_answer_keepalive_pings_is_disconnected(
    fast: Served,
) -> None:
    async with connected(fast.port) as client:
        await client.until_closed(timeout=5)
        pings = [f for f in client.frames if f.type == h2.PING and not f.flags & h2.ACK]
    assert len(pings) == 1
    await fast.assert_still_serves()


async def test_a_client_that_answers_keepalive_pings_stays_connected(fast: Served) -> None:
    # A new keepalive PING comes only once the last one was answered in time: three
    # of them, each answered, mean the connection outlived several ping timeouts.
    async with connected(fast.port) as client:
        answered = 0
        async with asyncio.timeout(10):
            while answered < 3:
                received = await client.read_frame()
                assert received is not None, "the server closed a connection that answers pings"
                if received.type == h2.PING and not received.flags & h2.ACK:
                    client.send(h2.frame(h2.PING, h2.ACK, 0, received.payload))
                    answered += 1
        [conn] = fast.server.connections
        assert not conn.closed


async def test_the_control_frame_budget_is_renewed_every_housekeeping_period(
    fast: Served,
) -> None:
    async with connected(fast.port) as client:
        client.answer_pings = True  # the server's keepalive PINGs, not the flood's
        for _ in range(3):
            client.send(h2.ping() * 1500)  # 4500 in all, 1500 a period
            await client.flush()
            await client.read_quiet(0.25)
        client.send(h2.ping(b"lastping"))
        async with asyncio.timeout(10):
            while (received := await client.read_frame()) is not None:
                if received.payload == b"lastping":
                    break
        assert received is not None
        assert client.goaway is None


async def test_a_client_that_asks_for_answers_and_reads_none_is_dropped() -> None:
    # A budget of control frames so large that only the frames written to a client
    # that reads nothing stop it: 100,000 PINGs would queue 1.7 MB of PING ACKs (with
    # the default budget, 34 KB more every 10 s, for as long as the client stays).
    limits = Limits(control_frames=1_000_000, frames_while_full=1000)
    async with serving(limits) as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(h2.PREFACE + h2.settings())
            await writer.drain()
            # Small socket buffers on both sides, so that the kernel does not absorb
            # megabytes before the server's own buffer fills.
            while not served.server.connections:
                await asyncio.sleep(0.005)
            [conn] = served.server.connections
            assert conn.transport is not None
            conn.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            most_queued = 0
            for _ in range(10):
                if writer.is_closing():
                    break  # the server has dropped the connection
                writer.write(h2.ping() * 10_000)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                await asyncio.sleep(0.01)
                for conn in served.server.connections:
                    if conn.transport is not None:
                        most_queued = max(most_queued, conn.transport.get_write_buffer_size())
            assert served.server.connections == set()
            assert most_queued < 200_000
        finally:
            writer.close()
        await served.assert_still_serves()
