"""A small token server for the registry's ``auth: token`` mode.

It answers ``GET /token?service=...&scope=repository:<name>:<actions>`` the way
Docker's token protocol describes: clients authenticate with Basic credentials, and
get a JWT (RS256, the signing certificate in the ``x5c`` header) granting the
requested actions if the credentials are right and nothing if they came anonymously.
The registry verifies the JWT against the certificate it was given as
``rootcertbundle``. The server runs its own event loop in a thread so it outlives
each test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.images.registry import PASSWORD, USERNAME
from tests.network import free_port

SERVICE = "meshext-test-registry"
ISSUER = "meshext-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry tokens on 127.0.0.1; ``requests`` counts token requests."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshext token signer")])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = folder / "token-signer.crt"
        self.cert_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.requests: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _token(self, request: web.Request) -> web.Response:
        valid, user = self._authenticate(request.headers.get("Authorization", ""))
        self.requests.append(
            {"user": user or "", "scope": " ".join(request.query.getall("scope", []))}
        )
        if not valid:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        access: list[dict[str, Any]] = []
        for scope in request.query.getall("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and user:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        token = self._sign(
            {
                "iss": ISSUER,
                "sub": user or "",
                "aud": request.query.get("service", SERVICE),
                "exp": int(time.time()) + 300,
                "nbf": int(time.time()) - 10,
                "iat": int(time.time()),
                "jti": secrets.token_hex(8),
                "access": access,
            }
        )
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    def _authenticate(self, header: str) -> tuple[bool, str | None]:
        """Whether the request may have a token, and for which user (None: anonymous)."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        user, _, password = base64.b64decode(value).decode().partition(":")
        return (user, password) == (USERNAME, PASSWORD), user

    def _sign(self, claims: dict[str, Any]) -> str:
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)
