"""WasmPlugin http(s) module URLs: downloaded by meshext, bounded, pinned by sha256, cached."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from meshext.images.cache import ModuleCache
from meshext.images.config import Limits, RegistryConfig
from meshext.images.http_module import HttpModulePolicy
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import MappingPullSecretStore
from meshext.mesh.resolution import ImageFormat, Resolution
from tests.images.conftest import FAST_RETRIES, extension
from tests.images.registry import make_ca
from tests.images.wasm import proxy_wasm_module

MODULE = proxy_wasm_module("served over http")
MODULE_SHA = hashlib.sha256(MODULE).hexdigest()
LOOPBACK_OK = HttpModulePolicy(allow_loopback=True)


@dataclass
class ModuleServer:
    """An HTTP(S) server on 127.0.0.1 serving the module, redirects and a huge body."""

    base: str = ""
    hits: dict[str, int] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if request.path == "/module.wasm":
            return web.Response(body=MODULE)
        if request.path.startswith("/hop/"):
            left = int(request.path.removeprefix("/hop/"))
            target = "/module.wasm" if left == 0 else f"/hop/{left - 1}"
            raise web.HTTPFound(target)
        if request.path == "/to-plain-http":
            raise web.HTTPFound(str(request.query["target"]))
        if request.path == "/endless":
            response = web.StreamResponse()
            await response.prepare(request)
            chunk = b"\0" * 65536
            for _ in range(64):
                await response.write(chunk)
            return response
        raise web.HTTPNotFound()


async def start(server: ModuleServer, context: ssl.SSLContext | None = None) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = int(runner.addresses[0][1])
    server.base = f"{'https' if context else 'http'}://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def served() -> AsyncIterator[ModuleServer]:
    server = ModuleServer()
    runner = await start(server)
    yield server
    await runner.cleanup()


def resolver(
    cache: ModuleCache,
    policy: HttpModulePolicy = LOOPBACK_OK,
    *,
    limits: Limits | None = None,
    ca_file: Path | None = None,
) -> ImageResolver:
    return ImageResolver(
        cache,
        MappingPullSecretStore(),
        registry_config=RegistryConfig(
            http_modules=policy, limits=limits or Limits(), ca_file=ca_file
        ),
        retries=FAST_RETRIES,
    )


async def resolve(resolver: ImageResolver, url: str, sha256: str | None) -> Resolution:
    return await resolver.resolve(extension(url, expected_sha256=sha256))


async def test_a_module_url_with_the_right_sha256_is_downloaded_verified_and_cached(
    served: ModuleServer, cache: ModuleCache
) -> None:
    url = f"{served.base}/module.wasm"
    first = await resolve(resolver(cache), url, MODULE_SHA)
    assert first.module is not None, first.message
    assert first.module.sha256 == MODULE_SHA
    assert first.module.image_format is ImageFormat.HTTP_MODULE
    assert Path(first.module.path).read_bytes() == MODULE
    again = await resolve(resolver(cache), url, MODULE_SHA)
    assert again.module is not None
    assert served.hits["/module.wasm"] == 1, "a pinned module in the cache needs no request"


async def test_a_module_url_with_a_wrong_sha256_is_refused_clearly_and_nothing_is_cached(
    served: ModuleServer, cache: ModuleCache
) -> None:
    wrong = "0" * 64
    resolution = await resolve(resolver(cache), f"{served.base}/module.wasm?token=secret", wrong)
    assert resolution.module is None
    assert not resolution.retryable
    assert f"the module's sha256 is {MODULE_SHA}, spec.sha256 says {wrong}" in resolution.message
    assert f"{served.base}/module.wasm" in resolution.message
    assert "secret" not in resolution.message
    assert cache.modules() == {}
    assert not any((cache.root / "tmp").iterdir())


async def test_a_module_url_without_sha256_is_refused_unless_the_operator_allows_it(
    served: ModuleServer, cache: ModuleCache
) -> None:
    url = f"{served.base}/module.wasm"
    refused = await resolve(resolver(cache), url, None)
    assert refused.module is None
    assert "needs spec.sha256" in refused.message
    assert served.hits == {}
    unpinned = HttpModulePolicy(allow_loopback=True, require_sha256=False)
    allowed = await resolve(resolver(cache, unpinned), url, None)
    assert allowed.module is not None, allowed.message
    assert allowed.module.sha256 == MODULE_SHA


async def test_a_loopback_module_url_is_refused_unless_allowed(
    served: ModuleServer, cache: ModuleCache
) -> None:
    resolution = await resolve(
        resolver(cache, HttpModulePolicy()), f"{served.base}/module.wasm", MODULE_SHA
    )
    assert resolution.module is None
    assert "loopback" in resolution.message
    assert served.hits == {}


@pytest.mark.parametrize(
    ("host", "kind"),
    [("169.254.169.254", "link-local"), ("10.1.2.3", "private"), ("[::1]", "loopback")],
)
async def test_a_module_url_at_an_internal_address_is_refused_before_any_connection(
    cache: ModuleCache, host: str, kind: str
) -> None:
    resolution = await resolve(
        resolver(cache, HttpModulePolicy()), f"http://{host}/module.wasm", MODULE_SHA
    )
    assert resolution.module is None
    assert kind in resolution.message
    assert "--allow-private-registry" in resolution.message


async def test_a_redirect_from_an_allowed_host_to_an_internal_address_is_refused(
    served: ModuleServer, cache: ModuleCache
) -> None:
    config = RegistryConfig(
        http_modules=HttpModulePolicy(),
        allowed_private_registries=frozenset({"127.0.0.1"}),
        limits=Limits(),
    )
    found = ImageResolver(
        cache, MappingPullSecretStore(), registry_config=config, retries=FAST_RETRIES
    )
    target = "http://169.254.169.254/latest/meta-data/"
    resolution = await resolve(found, f"{served.base}/to-plain-http?target={target}", MODULE_SHA)
    assert resolution.module is None
    assert "link-local" in resolution.message
    assert served.hits == {"/to-plain-http": 1}


async def test_redirects_are_followed_up_to_the_bound(
    served: ModuleServer, cache: ModuleCache
) -> None:
    ok = await resolve(resolver(cache), f"{served.base}/hop/2", MODULE_SHA)
    assert ok.module is not None, ok.message
    bounded = HttpModulePolicy(allow_loopback=True, max_redirects=2)
    too_many = await resolve(
        resolver(ModuleCache(cache.root / "other"), bounded), f"{served.base}/hop/5", MODULE_SHA
    )
    assert too_many.module is None
    assert "more than 2 redirects" in too_many.message


async def test_a_body_over_the_module_limit_is_cut_off_while_streaming(
    served: ModuleServer, cache: ModuleCache
) -> None:
    small = resolver(cache, limits=Limits(module=1024 * 1024))
    resolution = await resolve(small, f"{served.base}/endless", MODULE_SHA)
    assert resolution.module is None
    assert "more than the module limit of 1048576 bytes" in resolution.message
    assert cache.modules() == {}


async def test_a_missing_module_is_reported_as_not_found(
    served: ModuleServer, cache: ModuleCache
) -> None:
    resolution = await resolve(resolver(cache), f"{served.base}/nothing.wasm", MODULE_SHA)
    assert resolution.module is None
    assert "HTTP 404" in resolution.message


async def test_an_https_module_url_is_verified_and_may_not_redirect_to_plain_http(
    served: ModuleServer, cache: ModuleCache, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca.cert_file, ca.key_file)
    tls = ModuleServer()
    runner = await start(tls, context)
    try:
        trusting = resolver(cache, ca_file=ca.ca_file)
        ok = await resolve(trusting, f"{tls.base}/module.wasm", MODULE_SHA)
        assert ok.module is not None, ok.message
        downgrade = f"{tls.base}/to-plain-http?target={served.base}/module.wasm"
        refused = await resolve(
            resolver(ModuleCache(tmp_path / "c2"), ca_file=ca.ca_file), downgrade, MODULE_SHA
        )
        assert refused.module is None
        assert "from https to plain http" in refused.message
        assert served.hits == {}
        untrusted = await resolve(
            resolver(ModuleCache(tmp_path / "c3")), f"{tls.base}/module.wasm", MODULE_SHA
        )
        assert untrusted.module is None
    finally:
        await runner.cleanup()


async def test_an_unpinned_module_url_is_fetched_again_only_under_always(
    served: ModuleServer, cache: ModuleCache
) -> None:
    url = f"{served.base}/module.wasm"
    unpinned = resolver(cache, HttpModulePolicy(allow_loopback=True, require_sha256=False))
    for _ in range(2):
        resolution = await unpinned.resolve(extension(url))
        assert resolution.module is not None, resolution.message
    assert served.hits["/module.wasm"] == 1
    for _ in range(2):
        resolution = await unpinned.resolve(extension(url, policy="Always"))
        assert resolution.module is not None, resolution.message
    assert served.hits["/module.wasm"] == 3
