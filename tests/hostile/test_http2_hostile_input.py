"""Hostile and malformed HTTP/2 input against the real gRPC server, on loopback.

Each test connects with a raw socket, sends what a broken or hostile client might
(hand-made frames, header blocks from ``hpack.Encoder``), and checks what the server
answers: GOAWAY with its error code and a closed connection, RST_STREAM, the
``grpc-status`` of the call's trailers, or an HTTP error status. Then a well-behaved
gRPC client (grpcio) on the same server must still be served.

These run against the ADS server with its production limits; the tests of limits
that need shortening (timeouts, budgets) are in ``test_http2_hostile_limits``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from hpack.hpack import encode_integer

from meshext.rpc import Status
from meshext.rpc.connection import Connection
from meshext.xds import types
from meshext.xds.cache import SnapshotCache
from tests.rpc import raw_client as h2
from tests.rpc.raw_client import RawClient, connected
from tests.rpc.served import pending_bytes
from tests.xds.builders import contents, snapshot, sotw_request
from tests.xds.recorder import Recorder
from tests.xds.served import Harness, read, serving

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = types.CLUSTER


@pytest.fixture
async def ads() -> AsyncIterator[Harness]:
    async with serving(Recorder(SnapshotCache())) as ready:
        yield ready


async def assert_ads_still_serves(harness: Harness, node: str = "bystander") -> None:
    """A grpcio ADS client on the same server gets its snapshot."""
    harness.recorder.snapshots[node] = snapshot({CDS: {"c": node}})
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(CDS, node=node))
    response = await read(call)
    assert contents(response) == {"c": node}
    call.cancel()


def ads_request(node: str = "hostile") -> bytes:
    return h2.grpc_message(sotw_request(CDS, node=node).SerializeToString())


# -- connection-level errors ---------------------------------------------------------


async def test_an_http1_request_gets_goaway_protocol_error_and_a_closed_connection(
    ads: Harness,
) -> None:
    http1 = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
    async with connected(ads.port, preface=http1) as client:
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.PROTOCOL_ERROR
    assert b"not an HTTP/2 client" in goaway.debug
    await assert_ads_still_serves(ads)


async def test_a_frame_over_16_kib_ends_the_connection_with_frame_size_error(
    ads: Harness,
) -> None:
    async with connected(ads.port) as client:
        client.send(h2.frame(h2.DATA, 0, 1, b"x" * 16_385))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.FRAME_SIZE_ERROR
    await assert_ads_still_serves(ads)


async def test_an_hpack_bomb_is_stopped_at_the_header_list_limit(ads: Harness) -> None:
    # One 4000-byte header enters the dynamic table; each 1-byte reference to it decodes
    # to 4 KiB again: a 6 KiB block that would decode to 8 MiB.
    async with connected(ads.port) as client:
        header = [("bomb", "b" * 4000)]
        first = client.header_block(header)
        again = client.header_block(header)
        assert again == b"\xbe"  # index 62: the newest dynamic table entry
        bomb = first + again * 2000
        client.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, bomb))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.COMPRESSION_ERROR
    await assert_ads_still_serves(ads)


async def test_a_header_block_growing_over_continuation_frames_is_cut_off(
    ads: Harness,
) -> None:
    async with connected(ads.port) as client:
        client.send(h2.frame(h2.HEADERS, 0, 1, client.header_block([(":method", "POST")])))
        client.send(*[h2.frame(h2.CONTINUATION, 0, 1, b"\x00" * 1000) for _ in range(64)])
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    await assert_ads_still_serves(ads)


async def test_endless_empty_continuation_frames_exhaust_the_control_frame_budget(
    ads: Harness,
) -> None:
    async with connected(ads.port) as client:
        client.send(h2.frame(h2.HEADERS, 0, 1, client.header_block([(":method", "POST")])))
        client.send(h2.frame(h2.CONTINUATION, 0, 1) * 5000)
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    await assert_ads_still_serves(ads)


@pytest.mark.parametrize(
    "block",
    [b"\x80", b"\xff\xff\xff\xff\xff\xff\x7f", b"\x00\x85garbage"],
    ids=["index-zero", "index-overflow", "truncated-literal"],
)
async def test_an_undecodable_header_block_ends_the_connection_with_compression_error(
    ads: Harness, block: bytes
) -> None:
    async with connected(ads.port) as client:
        client.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.COMPRESSION_ERROR
    await assert_ads_still_serves(ads)


def _table_size_update(size: int) -> bytes:
    encoded = bytearray(encode_integer(size, 5))
    encoded[0] |= 0x20
    return bytes(encoded)


def _headers_then(client: RawClient, *after: bytes) -> bytes:
    """An ADS call's HEADERS (without END_HEADERS), then ``after``."""
    block = client.header_block([(":method", "POST"), (":path", ADS)])
    return h2.frame(h2.HEADERS, 0, 1, block) + b"".join(after)


MISPLACED: dict[str, tuple[int, Callable[[RawClient], bytes]]] = {
    "headers-on-even-stream": (h2.PROTOCOL_ERROR, lambda c: c.request(2, ADS)),
    "continuation-without-headers": (
        h2.PROTOCOL_ERROR,
        lambda c: h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, b"\x82"),
    ),
    "continuation-on-another-stream": (
        h2.PROTOCOL_ERROR,
        lambda c: _headers_then(c, h2.frame(h2.CONTINUATION, h2.END_HEADERS, 3, b"\x82")),
    ),
    "header-block-interrupted": (h2.PROTOCOL_ERROR, lambda c: _headers_then(c, h2.ping())),
    "table-size-over-the-limit": (
        h2.COMPRESSION_ERROR,
        lambda c: h2.frame(h2.HEADERS, h2.END_HEADERS, 1, _table_size_update(1 << 20)),
    ),
    "rst-stream-on-stream-0": (h2.PROTOCOL_ERROR, lambda c: h2.rst_stream(0)),
    "rst-stream-on-an-idle-stream": (h2.PROTOCOL_ERROR, lambda c: h2.rst_stream(9)),
    "window-update-on-an-idle-stream": (h2.PROTOCOL_ERROR, lambda c: h2.window_update(9, 1)),
    "ping-on-a-stream": (h2.PROTOCOL_ERROR, lambda c: h2.frame(h2.PING, 0, 1, b"12345678")),
    "ping-of-7-bytes": (h2.FRAME_SIZE_ERROR, lambda c: h2.frame(h2.PING, 0, 0, b"1234567")),
    "settings-on-a-stream": (h2.PROTOCOL_ERROR, lambda c: h2.frame(h2.SETTINGS, 0, 1)),
    "settings-of-5-bytes": (h2.FRAME_SIZE_ERROR, lambda c: h2.frame(h2.SETTINGS, 0, 0, b"12345")),
    "settings-ack-with-payload": (
        h2.FRAME_SIZE_ERROR,
        lambda c: h2.frame(h2.SETTINGS, h2.ACK, 0, b"\x00\x01\x00\x00\x00\x00"),
    ),
    "enable-push-2": (h2.PROTOCOL_ERROR, lambda c: h2.settings((0x2, 2))),
    "max-frame-size-too-small": (h2.PROTOCOL_ERROR, lambda c: h2.settings((0x5, 16_383))),
    "initial-window-over-2-31": (
        h2.FLOW_CONTROL_ERROR,
        lambda c: h2.settings((h2.INITIAL_WINDOW_SIZE, 2**31)),
    ),
    "initial-window-raising-a-stream-window-past-2-31": (
        h2.FLOW_CONTROL_ERROR,
        lambda c: (
            c.request(1, ADS)
            + h2.window_update(1, 2**31 - 1 - 65_535)
            + h2.settings((h2.INITIAL_WINDOW_SIZE, 65_536))
        ),
    ),
    "window-update-of-3-bytes": (
        h2.FRAME_SIZE_ERROR,
        lambda c: h2.frame(h2.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
    ),
    "priority-of-4-bytes": (
        h2.FRAME_SIZE_ERROR,
        lambda c: h2.frame(h2.PRIORITY, 0, 1, b"\x00\x00\x00\x00"),
    ),
    "padding-longer-than-the-frame": (
        h2.PROTOCOL_ERROR,
        lambda c: c.request(1, ADS) + h2.frame(h2.DATA, 0x8, 1, b"\x09abc"),
    ),
    "trailers-without-end-stream": (
        h2.PROTOCOL_ERROR,
        lambda c: c.request(1, ADS) + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\x40\x01a\x01b"),
    ),
    "a-lower-stream-id-after-a-higher-one": (
        h2.STREAM_CLOSED,
        lambda c: c.request(5, ADS) + c.request(3, ADS),
    ),
}


@pytest.mark.parametrize("case", MISPLACED)
async def test_a_frame_out_of_place_ends_the_connection_with_its_error_code(
    ads: Harness, case: str
) -> None:
    code, frames = MISPLACED[case]
    async with connected(ads.port) as client:
        client.send(frames(client))
        goaway = await client.goaway_and_close()
    assert goaway.code == code
    await assert_ads_still_serves(ads)


async def test_push_promise_from_a_client_is_a_protocol_error(ads: Harness) -> None:
    async with connected(ads.port) as client:
        promise = struct.pack(">I", 2) + client.header_block([(":method", "GET")])
        client.send(h2.frame(h2.PUSH_PROMISE, h2.END_HEADERS, 1, promise))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.PROTOCOL_ERROR
    await assert_ads_still_serves(ads)


@pytest.mark.parametrize("stream_id", [0, 7], ids=["stream-0", "idle-stream"])
async def test_data_outside_any_open_stream_is_a_protocol_error(
    ads: Harness, stream_id: int
) -> None:
    async with connected(ads.port) as client:
        client.send(h2.frame(h2.DATA, 0, stream_id, b"hello"))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.PROTOCOL_ERROR
    await assert_ads_still_serves(ads)


async def test_a_connection_window_update_past_2_31_is_a_flow_control_error(
    ads: Harness,
) -> None:
    async with connected(ads.port) as client:
        client.send(h2.window_update(0, 2**31 - 1))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.FLOW_CONTROL_ERROR
    await assert_ads_still_serves(ads)


async def test_a_connection_window_update_of_zero_is_a_protocol_error(ads: Harness) -> None:
    async with connected(ads.port) as client:
        client.send(h2.window_update(0, 0))
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.PROTOCOL_ERROR
    await assert_ads_still_serves(ads)


@pytest.mark.parametrize("increment", [0, 2**31 - 1], ids=["zero", "overflow"])
async def test_a_bad_stream_window_update_ends_only_that_call(ads: Harness, increment: int) -> None:
    async with connected(ads.port) as client:
        client.send(client.request(1, ADS), h2.window_update(1, increment))
        outcome = await client.stream_outcome(1)
        assert outcome.grpc_status == Status.INTERNAL
        assert outcome.reset_code in (None, h2.NO_ERROR)
        # The connection itself is still good: another call on it is answered.
        client.send(client.request(3, "/no.Such/Method", end_stream=True))
        assert (await client.stream_outcome(3)).grpc_status == Status.UNIMPLEMENTED
        assert client.goaway is None
    await assert_ads_still_serves(ads)


# -- floods --------------------------------------------------------------------------


async def test_rapid_reset_gets_enhance_your_calm(ads: Harness) -> None:
    async with connected(ads.port) as client:
        for stream_id in range(1, 2 * 3000, 2):
            client.send(client.request(stream_id, ADS), h2.rst_stream(stream_id))
        await client.flush()
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    assert goaway.last_stream_id < 2 * 3000
    rpc_server = ads.server._server
    assert rpc_server is not None
    await ads.until(lambda: not rpc_server.connections, "the connection to be closed")
    await assert_ads_still_serves(ads)


@pytest.mark.parametrize(
    "flood",
    [h2.ping(), h2.settings(), h2.frame(h2.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10")],
    ids=["ping", "settings", "priority"],
)
async def test_a_control_frame_flood_gets_enhance_your_calm(ads: Harness, flood: bytes) -> None:
    async with connected(ads.port) as client:
        client.send(flood * 5000)
        await client.flush()
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    await assert_ads_still_serves(ads)


async def test_a_stream_beyond_the_concurrency_limit_is_refused(ads: Harness) -> None:
    async with connected(ads.port) as client:
        client.send(*[client.request(2 * n + 1, ADS) for n in range(101)])
        refused = await client.stream_outcome(201)
        assert refused.reset_code == h2.REFUSED_STREAM
        # The first hundred are open calls: one of them is served.
        ads.recorder.snapshots["hostile"] = snapshot({CDS: {"c": "open"}})
        client.send(h2.data(199, ads_request()))
        await ads.until(lambda: len(ads.server.connections()) == 1, "the call on stream 199")
        assert client.goaway is None
    await assert_ads_still_serves(ads)


# -- calls ---------------------------------------------------------------------------


async def call_outcome(harness: Harness, *frames_after_headers: bytes) -> h2.StreamOutcome:
    async with connected(harness.port) as client:
        client.send(client.request(1, ADS), *frames_after_headers)
        outcome = await client.stream_outcome(1)
        assert client.goaway is None
    return outcome


async def test_a_5_mib_request_gets_resource_exhausted(ads: Harness) -> None:
    message = h2.grpc_message(b"\x0a" * (5 * 1024 * 1024))
    outcome = await call_outcome(ads, h2.data(1, message, end_stream=True))
    assert outcome.grpc_status == Status.RESOURCE_EXHAUSTED
    assert "larger than the limit" in outcome.fields["grpc-message"]
    await assert_ads_still_serves(ads)


async def test_a_grpcio_client_sending_5_mib_gets_resource_exhausted(ads: Harness) -> None:
    call = ads.stub.StreamAggregatedResources()
    await call.write(sotw_request(CDS, node="n" * (5 * 1024 * 1024)))
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than the limit of 4194304" in await call.details()
    await assert_ads_still_serves(ads)


async def test_a_compressed_request_gets_unimplemented(ads: Harness) -> None:
    message = h2.grpc_message(b"\x1f\x8b", compressed=True)
    outcome = await call_outcome(ads, h2.data(1, message, end_stream=True))
    assert outcome.grpc_status == Status.UNIMPLEMENTED
    await assert_ads_still_serves(ads)


async def test_a_request_that_is_not_protobuf_gets_invalid_argument(ads: Harness) -> None:
    message = h2.grpc_message(b"\xff\xff\xff\xff")
    outcome = await call_outcome(ads, h2.data(1, message, end_stream=True))
    assert outcome.grpc_status == Status.INVALID_ARGUMENT
    await assert_ads_still_serves(ads)


async def test_an_unknown_method_gets_unimplemented(ads: Harness) -> None:
    async with connected(ads.port) as client:
        client.send(client.request(1, "/envoy.Nope/Nothing", end_stream=True))
        outcome = await client.stream_outcome(1)
    assert outcome.fields[":status"] == "200"
    assert outcome.grpc_status == Status.UNIMPLEMENTED
    assert "/envoy.Nope/Nothing" in outcome.fields["grpc-message"]
    await assert_ads_still_serves(ads)


@pytest.mark.parametrize(
    ("method", "content_type", "http_status"),
    [("GET", "application/grpc", "405"), ("POST", "text/plain", "415")],
    ids=["get", "text-plain"],
)
async def test_a_request_that_is_not_grpc_gets_an_http_error_status(
    ads: Harness, method: str, content_type: str, http_status: str
) -> None:
    async with connected(ads.port) as client:
        client.send(client.request(1, ADS, method=method, content_type=content_type))
        outcome = await client.stream_outcome(1)
        await client.read_quiet(0.05)
    assert outcome.fields[":status"] == http_status
    assert "grpc-status" not in outcome.fields
    assert outcome.reset_code == h2.NO_ERROR
    await assert_ads_still_serves(ads)


async def test_a_client_that_never_reads_is_sent_no_more_than_its_window(ads: Harness) -> None:
    big = {f"c{n}": "x" * 40_000 for n in range(5)}  # about 200 KiB of clusters
    ads.recorder.snapshots["sleeper"] = snapshot({CDS: big})
    async with connected(ads.port) as client:
        client.send(client.request(1, ADS), h2.data(1, ads_request("sleeper")))
        await client.read_until(lambda: client.data_received >= 65_535)
        await client.read_quiet(0.1)
        assert client.data_received == 65_535  # the default windows, never updated
        conn = ads_connection(ads)
        waiting = pending_bytes(conn)
        assert 130_000 < waiting < 150_000
        # New versions of the configuration do not pile up behind the window.
        for version in range(20):
            ads.cache.set_snapshot("sleeper", snapshot({CDS: {**big, "c0": f"v{version}"}}))
            await asyncio.sleep(0)
        await client.read_quiet(0.1)
        assert client.data_received == 65_535
        assert pending_bytes(conn) == waiting
        await assert_ads_still_serves(ads)
        # Once the client opens its window, the rest of the response arrives.
        client.send(h2.window_update(0, 1 << 20), h2.window_update(1, 1 << 20))
        await client.read_until(lambda: client.data_received >= 65_535 + waiting)
        await client.read_quiet(0.05)
        assert client.data_received == 65_535 + waiting


def ads_connection(harness: Harness) -> Connection:
    """The server's side of the one connection that has calls open."""
    rpc_server = harness.server._server
    assert rpc_server is not None
    [conn] = [c for c in rpc_server.connections if c.calls]
    return conn


async def test_an_unknown_method_with_a_long_non_ascii_name_still_gets_unimplemented(
    ads: Harness,
) -> None:
    # The method's name comes back in grpc-message, percent-encoded: 12 bytes for each
    # of these characters, which must not make the trailers too big for the client.
    path = "/" + "\U0001f600" * 3900
    call = ads.channel.stream_stream(path)()
    assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (await call.details()).startswith("unknown method /\U0001f600")
    await assert_ads_still_serves(ads)


async def test_a_client_with_a_zero_window_gets_headers_but_no_data_until_it_opens_it(
    ads: Harness,
) -> None:
    ads.recorder.snapshots["closed-window"] = snapshot({CDS: {"c": "1"}})
    async with connected(ads.port) as client:
        client.send(h2.settings((h2.INITIAL_WINDOW_SIZE, 0)))
        client.send(client.request(1, ADS), h2.data(1, ads_request("closed-window")))
        await client.read_until(lambda: 1 in client.outcomes)
        await client.read_quiet(0.1)
        assert client.outcomes[1].fields[":status"] == "200"
        assert client.data_received == 0
        client.send(h2.window_update(1, 1 << 20))
        await client.read_until(lambda: client.data_received > 0)
        assert client.goaway is None
    await assert_ads_still_serves(ads)


async def test_after_a_clients_goaway_new_streams_are_refused_and_open_ones_go_on(
    ads: Harness,
) -> None:
    ads.recorder.snapshots["leaving"] = snapshot({CDS: {"c": "1"}})
    async with connected(ads.port) as client:
        client.send(client.request(1, ADS))
        client.send(h2.frame(h2.GOAWAY, 0, 0, b"\x00\x00\x00\x00\x00\x00\x00\x00"))
        client.send(client.request(3, ADS), h2.data(1, ads_request("leaving")))
        refused = await client.stream_outcome(3)
        assert refused.reset_code == h2.REFUSED_STREAM
        # The response to the open call arrives.
        await client.read_until(lambda: len(client.outcomes.get(1, h2.StreamOutcome()).data) > 5)
    await assert_ads_still_serves(ads)
