"""Hostile HTTP/2 clients against the gRPC server over mutual TLS, on loopback.

The server presents a certificate from a test CA and requires client certificates
from it, with ALPN ``h2``, as ``meshext serve`` does; a grpcio client with its own
certificate must still be served after each hostile one.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from meshext.identity import ca as mesh_ca
from meshext.identity.ca import IssuedCertificate
from meshext.identity.spiffe import SpiffeId
from meshext.rpc import Limits
from meshext.rpc.tls import load_certificate, server_context
from tests.rpc import raw_client as h2
from tests.rpc.raw_client import connected
from tests.rpc.served import Served, serving


@dataclass(frozen=True)
class Credentials:
    server: IssuedCertificate
    client: IssuedCertificate


@pytest.fixture(scope="module")
def credentials() -> Credentials:
    authority = mesh_ca.create("cluster.local")
    return Credentials(
        server=authority.issue_server(
            SpiffeId("cluster.local", "meshext", "meshext"), ["127.0.0.1"]
        ),
        client=authority.issue_workload(SpiffeId("cluster.local", "bookinfo", "default")),
    )


@pytest.fixture
async def tls(credentials: Credentials) -> AsyncIterator[Served]:
    issued = credentials.server
    client = credentials.client
    context = server_context(issued.cert_pem, issued.key_pem, issued.bundle_pem)
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=client.bundle_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )
    async with serving(Limits(), ssl_context=context, credentials=channel_credentials) as served:
        yield served


def client_context(
    credentials: Credentials, *, alpn: list[str], certificate: bool = True
) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=credentials.client.bundle_pem.decode())
    if certificate:
        load_certificate(context, credentials.client.cert_pem, credentials.client.key_pem)
    context.set_alpn_protocols(alpn)
    return context


async def test_a_grpcio_client_with_its_certificate_is_served(tls: Served) -> None:
    await tls.assert_still_serves()


async def test_a_plaintext_http2_client_on_the_tls_port_is_disconnected(tls: Served) -> None:
    async with connected(tls.port) as client:
        await client.until_closed()
        assert client.frames == []
    await tls.assert_still_serves()


async def test_a_client_without_a_certificate_is_refused(
    tls: Served, credentials: Credentials
) -> None:
    context = client_context(credentials, alpn=["h2"], certificate=False)
    frames: list[h2.Frame] = []
    try:
        async with connected(tls.port, tls=context) as client:
            await client.until_closed()
            frames = client.frames
    except (ssl.SSLError, ConnectionError):
        pass  # refused in the handshake (TLS 1.2) or at the first read (TLS 1.3)
    assert frames == []
    await tls.assert_still_serves()


async def test_a_tls_client_that_does_not_offer_h2_gets_no_protocol_and_no_http1(
    tls: Served, credentials: Credentials
) -> None:
    context = client_context(credentials, alpn=["http/1.1"])
    http1 = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with connected(tls.port, tls=context, preface=http1) as client:
        assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.PROTOCOL_ERROR
    await tls.assert_still_serves()


async def test_http1_over_tls_gets_goaway_protocol_error(
    tls: Served, credentials: Credentials
) -> None:
    context = client_context(credentials, alpn=["h2"])
    http1 = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with connected(tls.port, tls=context, preface=http1) as client:
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.PROTOCOL_ERROR
    await tls.assert_still_serves()


async def test_a_ping_flood_over_tls_gets_enhance_your_calm(
    tls: Served, credentials: Credentials
) -> None:
    context = client_context(credentials, alpn=["h2"])
    async with connected(tls.port, tls=context) as client:
        client.send(h2.ping() * 5000)
        await client.flush()
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    await tls.assert_still_serves()


async def test_a_rapid_reset_over_tls_gets_enhance_your_calm(
    tls: Served, credentials: Credentials
) -> None:
    context = client_context(credentials, alpn=["h2"])
    async with connected(tls.port, tls=context) as client:
        for stream_id in range(1, 2 * 3000, 2):
            client.send(client.request(stream_id, "/test.Echo/Echo"), h2.rst_stream(stream_id))
        await client.flush()
        goaway = await client.goaway_and_close()
    assert goaway.code == h2.ENHANCE_YOUR_CALM
    await tls.assert_still_serves()
