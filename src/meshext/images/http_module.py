"""Downloading a ``.wasm`` module from an ``http(s)://`` URL (WasmPlugin ``url``).

meshext, not the proxy, fetches the module, so every proxy gets it from meshext's
verified cache like any other module. The download is bounded every way a hostile
or broken server could stretch it:

- one **deadline** for the whole fetch (connects, redirects, every byte);
- a **size** bound enforced while streaming: a body longer than the module limit is
  cut off, whatever ``Content-Length`` claimed;
- at most :attr:`HttpModulePolicy.max_redirects` **redirects**, each hop checked like
  the first, and never from ``https`` down to ``http``;
- the **sha256** is verified before anything reaches the cache; without a sha256 the
  fetch is refused unless the operator allowed unpinned modules.

The client given to :func:`fetch_module` connects through meshext's address guard
(:func:`meshext.net.guard.guarded_transport`): every hop, redirects included, is refused
when its host resolves only to loopback, link-local (cloud metadata), private or other
internal addresses, unless the operator allowed that host (``--allow-private-registry``)
or :attr:`HttpModulePolicy.allow_loopback` is set. The guard checks the address the
connection is made to, so DNS cannot swap it after the check.

Hand-written rather than a library call because httpx's own redirect following cannot
check each hop's destination, bound the hops' total time, and refuse downgrades together.
"""

from __future__ import annotations

import asyncio
import hashlib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx

from meshext.images.errors import (
    DigestMismatch,
    ImageError,
    InsecureRegistryError,
    NotFound,
    SizeLimitExceeded,
    TransientRegistryError,
)
from meshext.net.guard import AddressRefused

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class ModuleUrlRefused(ImageError):
    """The URL may not be fetched under the operator's policy (a permanent error)."""


@dataclass(frozen=True)
class HttpModulePolicy:
    """What the operator allows for ``http(s)://`` module URLs."""

    require_sha256: bool = True
    """Refuse a URL whose resource gives no sha256 (``serve --allow-unpinned-http-modules``)."""
    allow_loopback: bool = False
    """Allow URLs whose host is, or resolves to, a loopback address."""
    deadline_seconds: float = 120.0
    """The whole fetch, redirects included."""
    max_redirects: int = 5


async def fetch_module(
    url: str,
    destination: Path,
    *,
    expected_sha256: str | None,
    max_bytes: int,
    policy: HttpModulePolicy,
    client: httpx.AsyncClient,
) -> str:
    """Download ``url`` into ``destination`` and return its sha256 (hex).

    ``expected_sha256`` is checked before returning; on any failure ``destination`` is
    removed. ``client`` must not follow redirects itself. Raises :class:`ImageError`
    subclasses whose messages name the URL.
    """
    if expected_sha256 is None and policy.require_sha256:
        raise ModuleUrlRefused(
            f"{_show(url)}: an http(s) module needs spec.sha256 (the operator requires "
            "modules fetched by URL to be pinned)"
        )
    try:
        async with asyncio.timeout(policy.deadline_seconds):
            digest = await _follow(url, destination, max_bytes, policy, client)
    except TimeoutError as exc:
        destination.unlink(missing_ok=True)
        raise TransientRegistryError(
            f"{_show(url)}: not downloaded within {policy.deadline_seconds:g} s"
        ) from exc
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    if expected_sha256 is not None and digest != expected_sha256:
        destination.unlink(missing_ok=True)
        raise DigestMismatch(
            f"{_show(url)}: the module's sha256 is {digest}, spec.sha256 says {expected_sha256}; "
            "refused"
        )
    return digest


async def _follow(
    url: str,
    destination: Path,
    max_bytes: int,
    policy: HttpModulePolicy,
    client: httpx.AsyncClient,
) -> str:
    current = url
    for _ in range(policy.max_redirects + 1):
        try:
            async with client.stream("GET", current, follow_redirects=False) as response:
                if response.status_code in _REDIRECTS:
                    current = _next_hop(url, current, response)
                    continue
                _check_status(url, response)
                return await _save(url, response, destination, max_bytes)
        except AddressRefused as exc:
            raise ModuleUrlRefused(f"{_show(url)}: {exc}") from exc
        except httpx.TransportError as exc:
            raise TransientRegistryError(f"{_show(url)}: {type(exc).__name__}: {exc}") from exc
    raise ModuleUrlRefused(f"{_show(url)}: more than {policy.max_redirects} redirects")


def _next_hop(url: str, current: str, response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        raise ModuleUrlRefused(f"{_show(url)}: a redirect without a Location")
    target = urllib.parse.urljoin(current, str(location))
    scheme = urllib.parse.urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise ModuleUrlRefused(f"{_show(url)}: redirected to a {scheme!r} URL")
    if urllib.parse.urlsplit(current).scheme == "https" and scheme == "http":
        raise InsecureRegistryError(f"{_show(url)}: redirected from https to plain http; refused")
    return target


def _check_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in {404, 410}:
        raise NotFound(f"{_show(url)}: no module there (HTTP {status})", status=status)
    if status >= 500 or status == 429:
        raise TransientRegistryError(f"{_show(url)}: HTTP {status}", status=status)
    raise ModuleUrlRefused(f"{_show(url)}: HTTP {status}")


async def _save(url: str, response: httpx.Response, destination: Path, max_bytes: int) -> str:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise SizeLimitExceeded(
            f"{_show(url)}: {declared} bytes, over the module limit of {max_bytes} bytes"
        )
    digest = hashlib.sha256()
    size = 0
    with destination.open("wb") as out:
        async for chunk in response.aiter_bytes(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise SizeLimitExceeded(
                    f"{_show(url)}: more than the module limit of {max_bytes} bytes"
                )
            digest.update(chunk)
            out.write(chunk)
    return str(digest.hexdigest())


def _show(url: str) -> str:
    """The URL without its query string, which may carry tokens."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
