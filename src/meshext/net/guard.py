"""The address guard: outgoing connections never reach internal addresses by accident.

An image reference, a token realm or a redirect is text an untrusted user (or
registry) chooses. Without a guard, ``spec.image: 169.254.169.254/x:1`` or a redirect
to ``http://127.0.0.1:15014/`` makes the control plane send requests, with its
credentials and from its network position, to cloud metadata services, its own
admin API or anything else on the host's private networks.

The rule: a connection may go to a public (globally routable) address; an address
that is loopback, link-local (where cloud metadata services live), private,
shared (CGNAT), unspecified, multicast or reserved is refused unless the operator
allowed the host it was reached by (``host`` for every port, or ``host:port``).

The check is made on the addresses the name resolves to, and the connection is then
opened to exactly the address that was checked (never by name again), so a DNS
answer that changes between check and connect (DNS rebinding) cannot get around it.

Use it through :func:`checked_addresses` (resolve and check, for any client) or
:func:`guarded_transport` (an httpx transport whose every connection, redirects and
token servers included, is checked).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx

from meshext.errors import MeshextError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(MeshextError):
    """A host resolved only to addresses the policy does not allow."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which hosts may resolve to internal addresses (everything may reach public ones)."""

    allowed_hosts: frozenset[str] = frozenset()
    """``host`` (any port) or ``host:port``, as written in image references."""

    def allows_internal(self, host: str, port: int) -> bool:
        bare = host.strip("[]")
        names = {host, bare, f"[{bare}]"}
        return any(n in self.allowed_hosts or f"{n}:{port}" in self.allowed_hosts for n in names)


def internal_kind(address: IPAddress) -> str | None:
    """What kind of internal address ``address`` is, or ``None`` for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return internal_kind(address.ipv4_mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local, where cloud metadata services live"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not publicly routable"
    return None


def check_addresses(
    host: str, port: int, addresses: Iterable[str], policy: AddressPolicy
) -> list[str]:
    """The addresses of ``addresses`` a connection to ``host:port`` may use, in order.

    Raises :class:`AddressRefused` if none is allowed. Pure: no resolution here.
    """
    if policy.allows_internal(host, port):
        return list(addresses)
    allowed: list[str] = []
    refused: list[str] = []
    for text in addresses:
        kind = internal_kind(ipaddress.ip_address(text.split("%", 1)[0]))
        if kind is None:
            allowed.append(text)
        else:
            refused.append(f"{text} ({kind})")
    if allowed:
        return allowed
    bare = host.strip("[]")
    shown = f"[{bare}]" if ":" in bare else bare
    netloc = f"{shown}:{port}"
    raise AddressRefused(
        f"{netloc} resolves to {', '.join(refused) or 'no address'}; meshext does not "
        f"connect to internal addresses unless told to: allow it with "
        f"--allow-private-registry {shown} (or {netloc})"
    )


async def checked_addresses(host: str, port: int, policy: AddressPolicy) -> list[str]:
    """Resolve ``host`` and return the addresses a connection may use (see the module)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return check_addresses(host, port, addresses, policy)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for address in await checked_addresses(host, port, self._policy):
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used by meshext's guarded clients")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(policy: AddressPolicy, verify: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """An httpx transport (HTTP/1.1, no proxies) that checks every connection it opens.

    httpx does not take a network backend as an argument, so the transport's
    connection pool is replaced by one built with the guarded backend; the TLS server
    name still comes from the URL, so certificates are checked against the host name.
    """
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=verify,
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=_GuardedBackend(policy),
    )
    return transport
