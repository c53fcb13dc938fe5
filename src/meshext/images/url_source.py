"""Modules named by an ``http(s)://`` URL, through meshext's verified cache.

Pinned by sha256, a module already cached under that hash answers without a request.
Unpinned (only when the operator allows it), the last download of the URL answers
unless the pull policy is ``Always``. A download goes through
:func:`meshext.images.http_module.fetch_module` (bounded, sha256 checked) and then the
same module checks and commit as every other module. Transient failures are retried
with the resolver's backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from meshext.images.cache import ImageRecord, ModuleCache
from meshext.images.config import RegistryConfig, RetryPolicy
from meshext.images.errors import ImageError
from meshext.images.http_module import fetch_module
from meshext.images.pull import Puller
from meshext.net.guard import guarded_transport


class UrlModuleSource:
    def __init__(
        self,
        cache: ModuleCache,
        puller: Puller,
        config: RegistryConfig,
        retries: RetryPolicy,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._cache = cache
        self._puller = puller
        self._config = config
        self._retries = retries
        self._transport = transport

    async def fetch(self, url: str, expected_sha256: str | None, *, always: bool) -> ImageRecord:
        """The cached module of ``url``; raises :class:`ImageError` naming the URL."""
        if expected_sha256:
            cached = self._cache.image(f"sha256:{expected_sha256}")
            if cached is not None:
                return cached
        elif not always:
            digest = self._cache.tag(_tag(url))
            cached = self._cache.image(digest) if digest else None
            if cached is not None:
                return cached
        return await self._with_retries(lambda: self._download(url, expected_sha256))

    async def _download(self, url: str, expected_sha256: str | None) -> ImageRecord:
        with self._cache.work_folder() as work:
            path = work / "download.wasm"
            async with httpx.AsyncClient(
                transport=self._transport or self._guarded_transport(),
                timeout=self._config.timeout,
                headers={"User-Agent": self._config.user_agent},
                follow_redirects=False,
            ) as client:
                sha256 = await fetch_module(
                    url,
                    path,
                    expected_sha256=expected_sha256,
                    max_bytes=self._config.limits.module,
                    policy=self._config.http_modules,
                    client=client,
                )
            record = await self._puller.commit_download(path, sha256, url)
        self._cache.store_tag(_tag(url), record.digest)
        return record

    def _guarded_transport(self) -> httpx.AsyncBaseTransport:
        """No proxy from the environment, and a connection only to an address the guard
        checked, so DNS cannot swap the destination after the check."""
        if self._config.http_modules.allow_loopback:
            return httpx.AsyncHTTPTransport(verify=self._config.ssl_context(), trust_env=False)
        return guarded_transport(self._config.address_policy(), self._config.ssl_context())

    async def _with_retries(self, operation: Callable[[], Awaitable[ImageRecord]]) -> ImageRecord:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await operation()
            except ImageError as exc:
                if not exc.retryable or attempt >= self._retries.attempts:
                    raise
                await asyncio.sleep(self._retries.delay(attempt))


def _tag(url: str) -> str:
    return f"url:{url}"
