"""The module server: content-addressed module bytes over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from meshext.server.modules import (
    ModuleServerError,
    RunningServer,
    module_app,
    module_path,
    module_routes,
    module_url,
    start_module_server,
)

MODULE = b"\0asm\x01\0\0\0 a module's bytes"
SHA = hashlib.sha256(MODULE).hexdigest()


class DirectoryStore:
    """Modules stored as <sha256>.wasm in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path | None:
        path = self.root / f"{sha256}.wasm"
        return path if path.exists() else None


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    (tmp_path / f"{SHA}.wasm").write_bytes(MODULE)
    running = await start_module_server(module_app(DirectoryStore(tmp_path)))
    try:
        yield running
    finally:
        await running.stop()


async def test_a_known_module_is_served_with_its_sha256_as_etag_and_immutable_caching(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(module_url(server.base_url, SHA))
    assert response.status_code == 200
    assert response.content == MODULE
    assert response.headers["etag"] == f'"{SHA}"'
    assert response.headers["content-type"] == "application/wasm"
    assert "immutable" in response.headers["cache-control"]
    assert hashlib.sha256(response.content).hexdigest() == SHA


async def test_head_answers_the_headers_without_the_body(server: RunningServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.head(module_url(server.base_url, SHA))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(MODULE))
    assert response.headers["etag"] == f'"{SHA}"'


async def test_a_matching_if_none_match_gets_not_modified(server: RunningServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            module_url(server.base_url, SHA), headers={"If-None-Match": f'"{SHA}"'}
        )
    assert response.status_code == 304
    assert response.content == b""


@pytest.mark.parametrize(
    "tail",
    [
        hashlib.sha256(b"unknown").hexdigest(),
        SHA.upper(),
        SHA[:-1],
        "../../etc/passwd",
        f"{SHA}.wasm",
    ],
)
async def test_unknown_or_malformed_hashes_are_not_found(server: RunningServer, tail: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.base_url}/modules/sha256/{tail}")
    assert response.status_code == 404


def test_module_urls_are_content_addressed() -> None:
    assert module_path(SHA) == f"/modules/sha256/{SHA}"
    assert (
        module_url("http://127.0.0.1:8080/", SHA) == f"http://127.0.0.1:8080/modules/sha256/{SHA}"
    )
    with pytest.raises(ValueError, match="sha256"):
        module_path("latest")


async def test_the_routes_compose_with_other_routes_in_one_application(tmp_path: Path) -> None:
    (tmp_path / f"{SHA}.wasm").write_bytes(MODULE)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), *module_routes(DirectoryStore(tmp_path))])
    running = await start_module_server(app)
    try:
        async with httpx.AsyncClient() as client:
            health = await client.get(f"{running.base_url}/healthz")
            module = await client.get(module_url(running.base_url, SHA))
    finally:
        await running.stop()
    assert health.text == "ok\n"
    assert module.content == MODULE


async def test_a_port_in_use_is_an_error_naming_the_address(
    server: RunningServer, tmp_path: Path
) -> None:
    with pytest.raises(ModuleServerError, match=f"127.0.0.1:{server.port}"):
        await start_module_server(module_app(DirectoryStore(tmp_path)), port=server.port)


async def test_each_module_sent_whole_is_reported_and_headers_alone_are_not(
    tmp_path: Path,
) -> None:
    (tmp_path / f"{SHA}.wasm").write_bytes(MODULE)
    served: list[str] = []
    running = await start_module_server(module_app(DirectoryStore(tmp_path), served.append))
    try:
        url = module_url(running.base_url, SHA)
        async with httpx.AsyncClient() as client:
            got = await client.get(url + "?attempt=2")  # the query does not matter
            head = await client.head(url)
            cached = await client.get(url, headers={"If-None-Match": f'"{SHA}"'})
            missing = await client.get(module_url(running.base_url, "0" * 64))
    finally:
        await running.stop()
    assert got.status_code == 200
    assert got.content == MODULE
    assert (head.status_code, cached.status_code, missing.status_code) == (200, 304, 404)
    assert served == [SHA]


async def test_a_stopped_module_server_refuses_connections_until_it_listens_again(
    server: RunningServer,
) -> None:
    url = module_url(server.base_url, SHA)
    await server.stop_listening()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url)
        await server.listen_again()
        again = await client.get(url)
    assert again.content == MODULE
