"""How meshext reaches registries and how much it accepts from them.

:class:`RegistryConfig` holds the transport policy (which registries may be spoken to
over plain HTTP, which CA signs the others, fallback credentials), :class:`Limits` the
size ceilings applied while downloading and unpacking, and :class:`RetryPolicy` the
bounded exponential backoff for transient failures.

Plain HTTP is never chosen by itself: a registry is reached over HTTPS unless its
host (``host`` for any port, or ``host:port``) is listed in ``insecure_registries``,
and an HTTPS registry that fails is never retried over HTTP.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from meshext.images.auth import DockerConfig
from meshext.images.http_module import HttpModulePolicy
from meshext.images.reference import registry_api_host
from meshext.net.guard import AddressPolicy

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Size ceilings; anything larger is refused before it is fully read."""

    manifest: int = 4 * MiB
    """An image manifest, index or config blob."""
    layer: int = 256 * MiB
    """One layer blob as stored in the registry (compressed)."""
    decompressed: int = 512 * MiB
    """The bytes one layer decompresses to (a gzip bomb stops here)."""
    module: int = 64 * MiB
    """The module itself, and any single file read out of a layer."""
    manifest_yaml: int = 1 * MiB
    """``manifest.yaml`` inside a Maistra image."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for transient registry failures."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))


NO_RETRIES = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class RegistryConfig:
    """Transport policy for every registry meshext talks to."""

    insecure_registries: frozenset[str] = frozenset()
    """Hosts (``host`` or ``host:port``) that may be reached over plain HTTP; they may
    also resolve to internal addresses (a plain-HTTP registry is local by nature)."""
    allowed_private_registries: frozenset[str] = frozenset()
    """Hosts (``host`` or ``host:port``) that may resolve to loopback, link-local or
    private addresses (see :mod:`meshext.net.guard`); others may not."""
    ca_file: Path | None = None
    """PEM bundle of extra CAs trusted for HTTPS registries (and token servers)."""
    credentials: DockerConfig = field(default_factory=DockerConfig)
    """Fallback credentials (a docker ``config.json``) for images no pull secret covers."""
    limits: Limits = Limits()
    timeout: float = 30.0
    """Seconds for connecting and between received bytes."""
    pull_deadline: float = 600.0
    """Seconds one pull of one image may take in all (each retry starts anew)."""
    chunk_size: int = 8 * MiB
    """Blobs larger than this are pushed in chunks of this size."""
    user_agent: str = "meshext"
    http_modules: HttpModulePolicy = field(default_factory=HttpModulePolicy)
    """What ``http(s)://`` module URLs (WasmPlugin) may do."""

    def allows_plain_http(self, netloc: str) -> bool:
        """True if ``netloc`` (``host[:port]``) was listed as an insecure registry."""
        host = _host_of(netloc)
        return netloc in self.insecure_registries or host in self.insecure_registries

    def address_policy(self) -> AddressPolicy:
        return AddressPolicy(self.insecure_registries | self.allowed_private_registries)

    def base_url(self, registry: str) -> str:
        """``scheme://host`` of the distribution API for ``registry``."""
        host = registry_api_host(registry)
        scheme = "http" if self.allows_plain_http(host) else "https"
        return f"{scheme}://{host}"

    def reach(self, registry: str) -> str:
        """How ``registry`` is reached under this policy: scheme, whether it may be an
        internal address, and the extra CAs. Access proven one way does not vouch for
        another, so a cached image never hides a flag the registry needs."""
        host = registry_api_host(registry)
        bare = _host_of(host)
        scheme = "http" if self.allows_plain_http(host) else "https"
        port_text = host[len(bare) + 1 :]
        port = int(port_text) if port_text.isdigit() else 80 if scheme == "http" else 443
        internal = self.address_policy().allows_internal(bare, port)
        ca = "" if scheme == "http" or self.ca_file is None else str(self.ca_file.resolve())
        return f"{scheme} internal={internal} ca={ca}"

    def ssl_context(self) -> ssl.SSLContext:
        """System CAs plus ``ca_file``; built once per CA file (loading CAs is slow)."""
        return _ssl_context(str(self.ca_file) if self.ca_file is not None else None)


@functools.lru_cache(maxsize=16)
def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def _host_of(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[: netloc.index("]") + 1]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
