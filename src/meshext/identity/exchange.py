"""Certificates for proxies that prove who they are with a token (Kubernetes mode).

A proxy in a cluster cannot read the CA key. It generates its own key, sends a
certificate signing request with its projected service-account token, and gets back a
certificate for the identity the token proves, as Istio's CA does:

``POST /v1/certificates`` with ``Authorization: Bearer <token>`` and the JSON body
``{"csr": "<PEM>"}`` answers ``{"certificate": "<PEM>", "bundle": "<PEM>"}``.

The :class:`TokenAuthenticator` (a TokenReview against the API server, with the
audience set, in :mod:`meshext.kube.token_review`) says which namespace and service
account the token belongs to. The identity comes from the token only: the names and
extensions in the request are ignored, the key is all that is taken from it. A
missing or refused token is 401, a malformed request 400. The endpoint is served over
TLS with the control plane's certificate, so the client checks it against the trust
bundle it was given before sending its token.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshext.errors import MeshextError
from meshext.identity.ca import WORKLOAD_LIFETIME, CertificateAuthority, IssuedCertificate
from meshext.identity.credentials import WrittenCredentials, write_credentials
from meshext.identity.errors import IdentityError
from meshext.identity.peer import spiffe_id_of
from meshext.identity.spiffe import SpiffeId

CERTIFICATES_PATH: Final = "/v1/certificates"
DEFAULT_AUDIENCE: Final = "meshext"
MAX_BODY: Final = 64 * 1024

_log = logging.getLogger(__name__)


class TokenRejected(MeshextError):
    """A token does not prove a service account (invalid, expired, wrong audience)."""

    retryable = False


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str


class TokenAuthenticator(Protocol):
    async def authenticate(self, token: str) -> ServiceAccount:
        """The service account ``token`` proves; :class:`TokenRejected` if none."""
        ...


def sign_request(
    ca: CertificateAuthority,
    csr_pem: bytes,
    identity: SpiffeId,
    *,
    lifetime: timedelta = WORKLOAD_LIFETIME,
) -> x509.Certificate:
    """A certificate for ``identity`` over the key of a signing request whose
    signature proves possession of that key."""
    try:
        request = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise IdentityError(f"csr: not a PEM certificate signing request: {exc}") from exc
    if not request.is_signature_valid:
        raise IdentityError("csr: the signature does not match the key")
    key = request.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise IdentityError("csr: the key must be ECDSA P-256")
    return ca.sign(key, identity, lifetime=lifetime)


def exchange_routes(
    ca: CertificateAuthority,
    authenticator: TokenAuthenticator,
    *,
    lifetime: timedelta = WORKLOAD_LIFETIME,
) -> list[web.RouteDef]:
    async def certificates(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise web.HTTPUnauthorized(text="a bearer token is required\n")
        try:
            account = await authenticator.authenticate(token.strip())
        except TokenRejected as exc:
            _log.warning("certificate request from %s refused: %s", request.remote, exc)
            raise web.HTTPUnauthorized(text=f"{exc}\n") from None
        try:
            body = await request.json()
            csr = body["csr"].encode() if isinstance(body, dict) else b""
            identity = SpiffeId(ca.trust_domain, account.namespace, account.name)
            cert = sign_request(ca, csr, identity, lifetime=lifetime)
        except (ValueError, KeyError, AttributeError, IdentityError) as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        _log.info("issued a certificate for %s to %s", identity, request.remote)
        return web.json_response(
            {
                "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "bundle": ca.bundle_pem.decode(),
            }
        )

    return [web.post(CERTIFICATES_PATH, certificates)]


def exchange_app(ca: CertificateAuthority, authenticator: TokenAuthenticator) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.add_routes(exchange_routes(ca, authenticator))
    return app


async def request_certificate(
    url: str, token: str, bundle_pem: bytes, directory: Path
) -> WrittenCredentials:
    """Generate a key, exchange ``token`` for a certificate at ``url`` (the exchange's
    base URL, verified against ``bundle_pem``), and write the credentials folder."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    context = ssl.create_default_context(cadata=bundle_pem.decode())
    try:
        async with httpx.AsyncClient(verify=context, timeout=30) as client:
            response = await client.post(
                url.rstrip("/") + CERTIFICATES_PATH,
                headers={"Authorization": f"Bearer {token}"},
                json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
            )
    except httpx.HTTPError as exc:
        raise IdentityError(f"cannot reach the certificate exchange at {url}: {exc}") from exc
    if response.status_code != 200:
        raise IdentityError(
            f"{url}: certificate request refused: {response.status_code} {response.text.strip()}"
        )
    answer: dict[str, Any] = response.json()
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    identity = spiffe_id_of(cert)
    if identity is None or cert.public_key() != key.public_key():
        raise IdentityError(f"{url}: the certificate returned is not for this key and a SPIFFE id")
    issued = IssuedCertificate(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=answer["certificate"].encode(),
        bundle_pem=answer["bundle"].encode(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )
    return write_credentials(directory, identity, issued)
