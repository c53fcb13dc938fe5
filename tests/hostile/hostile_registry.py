"""A registry that misbehaves on purpose, on loopback, one repository per misbehaviour.

- ``bigerror``: every manifest request answers 500 with an endless body;
- ``trickle``: the manifest arrives one byte per second;
- ``hugemanifest``: a manifest of 16 MiB, without a declared length;
- ``garbage``: a manifest that is not JSON;
- ``redirect``: a valid wasm-artifact manifest whose blobs redirect to a cloud
  metadata address (HTTPS, so only the address guard stands in the way).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

from aiohttp import web

from meshext.server.modules import RunningServer, start_module_server

WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _redirect_manifest() -> bytes:
    config, layer = b"{}", b"\0asm\1\0\0\0"
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": WASM_CONFIG,
            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": WASM_LAYER,
                "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                "size": len(layer),
            }
        ],
    }
    return json.dumps(document).encode()


async def _root(_request: web.Request) -> web.Response:
    return web.Response(text="{}")


async def _manifest(request: web.Request) -> web.StreamResponse:
    repository = request.match_info["repository"]
    if repository == "bigerror":
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(64 * 1024):  # up to 1 GiB, as long as the client keeps reading
                await response.write(b'{"errors":"' + b"x" * 16 * 1024)
        return response
    if repository == "trickle":
        response = web.StreamResponse(status=200, headers={"Content-Length": "600"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(600):
                await response.write(b" ")
                await asyncio.sleep(1.0)
        return response
    if repository == "hugemanifest":
        response = web.StreamResponse(status=200, headers={"Content-Type": OCI_MANIFEST})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):
                await response.write(b" " * 16 * 1024)
        return response
    if repository == "garbage":
        return web.Response(body=b"\x89PNG not json", content_type=OCI_MANIFEST)
    if repository == "redirect":
        return web.Response(body=_redirect_manifest(), content_type=OCI_MANIFEST)
    raise web.HTTPNotFound()


async def _blob(request: web.Request) -> web.Response:
    raise web.HTTPTemporaryRedirect("https://169.254.169.254/latest/meta-data/iam")


@contextlib.asynccontextmanager
async def hostile_registry() -> AsyncIterator[RunningServer]:
    app = web.Application()
    app.add_routes(
        [
            web.get("/v2/", _root),
            web.route("*", "/v2/{repository}/manifests/{reference}", _manifest),
            web.get("/v2/{repository}/blobs/{digest}", _blob),
        ]
    )
    server = await start_module_server(app, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()
