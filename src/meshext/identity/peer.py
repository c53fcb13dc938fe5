"""Who is on the other end of an xDS stream, and whether it may speak for its node.

The TLS handshake has already verified the peer's chain against the trust bundle (and
its validity dates) when a stream starts; :class:`MeshStreamSecurity` reads the verified leaf
certificate from the stream's auth context, takes its SPIFFE id, and accepts the node
only if the node's ``NAMESPACE`` metadata is that id's namespace. The namespace is
what decides which extensions a proxy receives, so it is the claim that must be proven.

It also serves the control plane's own certificate, renewed at half its lifetime: the
server calls :meth:`MeshStreamSecurity.renew` periodically, which loads a reissued
certificate into the TLS context for the handshakes that follow.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache

from cryptography import x509

from meshext.envoy.node import NAMESPACE
from meshext.identity.ca import CertificateAuthority, IssuedCertificate
from meshext.identity.errors import IdentityError
from meshext.identity.spiffe import SpiffeId, control_plane_id, parse_spiffe_id
from meshext.rpc.tls import add_trust, load_certificate, server_context
from meshext.xds.server import StreamDenied
from meshext.xds.types import Node

PEM_CERT_PROPERTY = "x509_pem_cert"


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId | None:
    """The one SPIFFE id in ``cert``'s URI subject alternative names, else ``None``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = list(san.get_values_for_type(x509.UniformResourceIdentifier))
    spiffe = [uri for uri in uris if uri.startswith("spiffe://")]
    if len(spiffe) != 1:
        return None
    try:
        return parse_spiffe_id(spiffe[0])
    except IdentityError:
        return None


def peer_spiffe_id(auth_context: Mapping[str, Sequence[bytes]]) -> SpiffeId | None:
    """The SPIFFE id of the verified client certificate of a gRPC call."""
    pem = auth_context.get(PEM_CERT_PROPERTY)
    if not pem:
        return None
    return _spiffe_id_of_pem(bytes(pem[0]))


@lru_cache(maxsize=16384)
def _spiffe_id_of_pem(pem: bytes) -> SpiffeId | None:
    # Parsing a certificate costs more than the rest of a stream's start; a proxy
    # reconnecting, or replicas sharing a certificate, present the same PEM again.
    # gRPC has verified the chain and dates of each handshake before this is asked.
    try:
        return spiffe_id_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


class ServerCertificate:
    """The control plane's serving certificate, reissued once half its lifetime is over."""

    def __init__(self, ca: CertificateAuthority, hosts: Sequence[str]) -> None:
        self.ca = ca
        self.identity = control_plane_id(ca.trust_domain)
        self.hosts = tuple(dict.fromkeys(("localhost", "127.0.0.1", "::1", *hosts)))
        self._lock = threading.Lock()
        self._issued = ca.issue_server(self.identity, self.hosts)

    def current(self, now: datetime | None = None) -> IssuedCertificate:
        with self._lock:
            if (now or datetime.now(UTC)) >= self._issued.renew_after():
                self._issued = self.ca.issue_server(self.identity, self.hosts)
            return self._issued


class MeshStreamSecurity:
    """:class:`meshext.xds.server.StreamSecurity` for meshext's CA and SPIFFE ids."""

    def __init__(self, server: ServerCertificate) -> None:
        self.server = server
        self.trust_domain = server.ca.trust_domain
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._served: IssuedCertificate | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The server's TLS context: the current serving certificate, client
        certificates required and verified against the mesh's trust bundle."""
        with self._lock:
            if self._context is None:
                issued = self.server.current()
                self._context = server_context(issued.cert_pem, issued.key_pem, issued.bundle_pem)
                self._served = issued
            return self._context

    def renew(self) -> None:
        """Present the serving certificate reissued at half its lifetime, from the next
        handshake on (the server calls this periodically)."""
        with self._lock:
            context = self._context
            if context is None:
                return
            issued = self.server.current()
            if issued is self._served:
                return
            load_certificate(context, issued.cert_pem, issued.key_pem)
            if self._served is None or issued.bundle_pem != self._served.bundle_pem:
                add_trust(context, issued.bundle_pem)
            self._served = issued

    def authorize(self, auth_context: Mapping[str, Sequence[bytes]], node: Node) -> str:
        peer = peer_spiffe_id(auth_context)
        if peer is None:
            raise StreamDenied(
                f"node {node.id!r}: the client certificate carries no SPIFFE id", "no identity"
            )
        if peer.trust_domain != self.trust_domain:
            raise StreamDenied(
                f"node {node.id!r}: {peer} is not in trust domain {self.trust_domain!r}",
                "foreign trust domain",
            )
        claimed = node.metadata.get(NAMESPACE)
        if claimed != peer.namespace:
            raise StreamDenied(
                f"node {node.id!r} claims namespace {claimed!r} but its certificate is {peer} "
                f"(namespace {peer.namespace!r})",
                "namespace mismatch",
            )
        return peer.uri
