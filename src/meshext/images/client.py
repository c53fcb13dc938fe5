"""An asyncio client for the OCI distribution API: pull and push.

It is written on httpx rather than on a packaged registry client (oras-py, the
maintained Python one, is synchronous, built on requests, and writes blobs to their
destination before checking them) because meshext needs four things at once:

* asyncio, so many extensions resolve concurrently inside the control loop;
* verification while streaming: a blob is hashed as it arrives, written only to a
  file the caller keeps private, and declared good only once the byte count and the
  digest both matched; a body longer than its descriptor stops at once;
* challenge-driven auth: every request first goes out anonymously (or with what
  the registry accepted before); a 401 names the scheme, and the client answers with
  Basic credentials or fetches a Bearer token from the realm for exactly the scope
  it needs (``repository:<name>:pull`` or ``pull,push``), then retries once;
* an explicit transport policy: a custom CA, plain HTTP only for registries and
  token realms listed as insecure, no redirect from HTTPS down to HTTP, and no
  connection to an internal address the operator did not allow (the address guard
  of :mod:`meshext.net.guard` checks every connection, redirects included);
* bounds: sizes while reading, error bodies read only as far as a message goes, and
  (in the resolver) a deadline for a whole pull.

Errors are translated at this boundary into :mod:`meshext.images.errors`.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

import httpx

from meshext.images.auth import Challenge, Credentials, parse_challenge
from meshext.images.config import MiB, RegistryConfig
from meshext.images.errors import (
    AddressNotAllowed,
    DigestMismatch,
    InsecureRegistryError,
    NotFound,
    RegistryError,
    RegistryProtocolError,
    SizeLimitExceeded,
    TLSError,
    TransientRegistryError,
    Unauthorized,
)
from meshext.images.oci import ACCEPT, OCI_INDEX, Descriptor, digest_hex, sha256_digest
from meshext.net.guard import AddressRefused, guarded_transport

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just transferred."""


class Progress(Protocol):
    """Where long transfers report: the expected total, then bytes as they move."""

    def expect(self, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...


_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index whose bytes hash to ``digest``."""

    digest: str
    media_type: str
    data: bytes


class RegistryClient:
    """One registry, one set of credentials; tokens are cached per scope."""

    def __init__(
        self,
        registry: str,
        config: RegistryConfig,
        credentials: Credentials | None = None,
        *,
        push: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.registry = registry
        self._config = config
        self._credentials = credentials
        self._actions = "pull,push" if push else "pull"
        self._base = config.base_url(registry)
        self._http = httpx.AsyncClient(
            transport=transport or guarded_transport(config.address_policy(), config.ssl_context()),
            timeout=httpx.Timeout(config.timeout),
            headers={"User-Agent": config.user_agent},
            follow_redirects=False,
        )
        self._tokens: dict[str, tuple[str, float]] = {}
        self._basic = False

    def __repr__(self) -> str:
        who = self._credentials.username if self._credentials else "anonymous"
        return f"<RegistryClient {self._base} as {who} for {self._actions}>"

    @property
    def base_url(self) -> str:
        return self._base

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- pull ---------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """The manifest or index named by a tag or digest, its digest verified."""
        what = f"manifest {self._name(repository, reference)}"
        response = await self._call(
            "GET", self._url(repository, "manifests", reference), repository, {"Accept": ACCEPT}
        )
        try:
            await self._raise_for_status(response, what)
            data = await _read_limited(response, self._config.limits.manifest, what)
        finally:
            await response.aclose()
        digest = sha256_digest(data)
        claimed = response.headers.get("docker-content-digest", "")
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"{what}: the registry sent content with digest {digest}")
        if claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatch(
                f"{what}: the registry says digest {claimed} but the content hashes to {digest}"
            )
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return FetchedManifest(digest, media_type, data)

    async def manifest_digest(self, repository: str, reference: str) -> str:
        """The digest a tag points to now, asked with HEAD (GET if the header is missing)."""
        what = f"manifest {self._name(repository, reference)}"
        response = await self._call(
            "HEAD", self._url(repository, "manifests", reference), repository, {"Accept": ACCEPT}
        )
        try:
            await self._raise_for_status(response, what)
        finally:
            await response.aclose()
        claimed = str(response.headers.get("docker-content-digest", ""))
        if claimed.startswith("sha256:") and len(claimed) == 71:
            return claimed
        return (await self.get_manifest(repository, reference)).digest

    async def referrers(self, repository: str, digest: str) -> bytes | None:
        """The OCI 1.1 referrers index of ``digest``; ``None`` if the registry lacks the API."""
        what = f"referrers of {self._name(repository, digest)}"
        digest_hex(digest)
        response = await self._call(
            "GET", self._url(repository, "referrers", digest), repository, {"Accept": OCI_INDEX}
        )
        try:
            if response.status_code == 404:
                return None
            await self._raise_for_status(response, what)
            return await _read_limited(response, self._config.limits.manifest, what)
        finally:
            await response.aclose()

    async def fetch_blob(
        self,
        repository: str,
        descriptor: Descriptor,
        sink: BinaryIO,
        *,
        limit: int,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Stream a blob into ``sink``; raises unless its size and digest match exactly."""
        what = f"blob {descriptor.digest} of {self._name(repository)}"
        digest_hex(descriptor.digest)
        if descriptor.size > limit:
            raise SizeLimitExceeded(
                f"{what} is {descriptor.size} bytes, over the limit of {limit} bytes"
            )
        scope = self._scope(repository)
        response = await self._call(
            "GET", self._url(repository, "blobs", descriptor.digest), repository
        )
        try:
            for _ in range(_MAX_REDIRECTS):
                if response.status_code not in _REDIRECTS:
                    break
                target = self._redirect_target(response)
                await response.aclose()
                same_origin = _origin(target) == _origin(httpx.URL(self._base))
                headers = self._auth_headers(scope) if same_origin else {}
                response = await self._send(
                    self._http.build_request("GET", target, headers=headers)
                )
            await self._raise_for_status(response, what)
            await _stream_verified(response, descriptor, sink, what, progress)
        finally:
            await response.aclose()

    # -- push ---------------------------------------------------------------------------

    async def blob_exists(self, repository: str, digest: str) -> bool:
        response = await self._call("HEAD", self._url(repository, "blobs", digest), repository)
        try:
            if response.status_code == 404:
                return False
            await self._raise_for_status(response, f"blob {digest} of {self._name(repository)}")
            return True
        finally:
            await response.aclose()

    async def push_blob(
        self,
        repository: str,
        descriptor: Descriptor,
        source: Path,
        *,
        progress: ProgressCallback | None = None,
    ) -> bool:
        """Upload ``source`` unless the registry has it; True if bytes were sent.

        Blobs up to ``chunk_size`` go in one PUT; larger ones in PATCH chunks.
        """
        if await self.blob_exists(repository, descriptor.digest):
            if progress:
                progress(descriptor.size)
            return False
        what = f"uploading blob {descriptor.digest} to {self._name(repository)}"
        start = await self._call("POST", f"{self._base}/v2/{repository}/blobs/uploads/", repository)
        location = await self._upload_location(start, what)
        chunk_size = self._config.chunk_size
        if descriptor.size <= chunk_size:
            response = await self._call(
                "PUT",
                _with_digest(location, descriptor.digest),
                repository,
                {"Content-Type": "application/octet-stream"},
                source.read_bytes(),
            )
            await self._expect_created(response, what)
            if progress:
                progress(descriptor.size)
            return True
        offset = 0
        with source.open("rb") as stream:
            while chunk := stream.read(chunk_size):
                response = await self._call(
                    "PATCH",
                    location,
                    repository,
                    {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                    chunk,
                )
                location = await self._upload_location(response, what)
                offset += len(chunk)
                if progress:
                    progress(len(chunk))
        response = await self._call("PUT", _with_digest(location, descriptor.digest), repository)
        await self._expect_created(response, what)
        return True

    async def push_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str
    ) -> str:
        """Store a manifest under a tag or its digest; returns its digest."""
        what = f"pushing manifest {self._name(repository, reference)}"
        response = await self._call(
            "PUT",
            self._url(repository, "manifests", reference),
            repository,
            {"Content-Type": media_type},
            data,
        )
        await self._expect_created(response, what)
        digest = sha256_digest(data)
        claimed = response.headers.get("docker-content-digest", "")
        if claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatch(f"{what}: the registry stored digest {claimed}, expected {digest}")
        return digest

    # -- plumbing -----------------------------------------------------------------------

    def _url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self._base}/v2/{repository}/{kind}/{reference}"

    def _name(self, repository: str, reference: str = "") -> str:
        name = f"{self.registry}/{repository}"
        if not reference:
            return name
        return f"{name}@{reference}" if reference.startswith("sha256:") else f"{name}:{reference}"

    def _scope(self, repository: str) -> str:
        return f"repository:{repository}:{self._actions}"

    def _auth_headers(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._basic and self._credentials is not None:
            return {"Authorization": self._credentials.basic_header()}
        return {}

    async def _call(
        self,
        method: str,
        url: str | httpx.URL,
        repository: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send with whatever auth the registry accepted; answer one 401 challenge.

        The response is streamed: the caller reads and closes it.
        """
        scope = self._scope(repository)
        for attempt in (1, 2):
            request = self._http.build_request(
                method,
                url,
                headers={**(headers or {}), **self._auth_headers(scope)},
                content=content,
            )
            response = await self._send(request)
            if response.status_code != 401 or attempt == 2:
                return response
            challenge = parse_challenge(response.headers.get("www-authenticate", ""))
            await response.aclose()
            if challenge is None or not await self._authenticate(challenge, scope):
                raise Unauthorized(
                    f"{self.registry} asked for credentials ({method} {request.url.path})",
                    status=401,
                    credentials_used=self._credentials is not None,
                )
        raise AssertionError("unreachable")

    async def _authenticate(self, challenge: Challenge, scope: str) -> bool:
        if challenge.scheme == "basic":
            if self._credentials is None or self._basic:
                return False
            self._basic = True
            return True
        if challenge.scheme != "bearer":
            return False
        realm = challenge.params.get("realm", "")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL as exc:
            raise RegistryProtocolError(f"{self.registry}: invalid token realm {realm!r}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise RegistryProtocolError(f"{self.registry}: invalid token realm {realm!r}")
        if url.scheme == "http" and not self._config.allows_plain_http(url.netloc.decode()):
            raise InsecureRegistryError(
                f"{self.registry}: the token realm {realm} is plain HTTP; credentials would "
                f"travel unencrypted. Allow it with --insecure-registry {url.host}"
            )
        params = {"scope": scope}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        headers = {"Authorization": self._credentials.basic_header()} if self._credentials else {}
        what = f"token for {scope} from {realm}"
        response = await self._send(
            self._http.build_request("GET", url, params=params, headers=headers)
        )
        try:
            if response.status_code in (401, 403):
                raise Unauthorized(
                    f"{what}: the token server refused the credentials",
                    status=response.status_code,
                    credentials_used=self._credentials is not None,
                )
            await self._raise_for_status(response, what)
            body = await _read_limited(response, MiB, what)
        finally:
            await response.aclose()
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            expires_in = int(document.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryProtocolError(f"{what}: not a token response") from exc
        if not isinstance(token, str) or not token:
            raise RegistryProtocolError(f"{what}: the response holds no token")
        self._tokens[scope] = (token, time.monotonic() + max(expires_in - 5, 1))
        return True

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http.send(request, stream=True)
        except AddressRefused as exc:
            raise AddressNotAllowed(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise _translate(exc, request.url) from exc

    async def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if response.is_success:
            return
        detail = await _error_detail(response)
        text = f"{what}: HTTP {status}" + (f" ({detail})" if detail else "")
        if status in (401, 403):
            raise Unauthorized(text, status=status, credentials_used=self._credentials is not None)
        if status == 404:
            raise NotFound(text, status=status)
        if status in (408, 425, 429) or status >= 500:
            raise TransientRegistryError(text, status=status)
        raise RegistryProtocolError(text, status=status)

    def _redirect_target(self, response: httpx.Response) -> httpx.URL:
        location = response.headers.get("location")
        if not location:
            raise RegistryProtocolError(f"{response.url}: redirect without a Location")
        target = response.url.join(location)
        if target.scheme == "http" and (
            response.url.scheme == "https"
            or not self._config.allows_plain_http(target.netloc.decode())
        ):
            raise InsecureRegistryError(
                f"{response.url} redirected to plain HTTP ({target.host}); refusing the downgrade"
            )
        return target

    async def _upload_location(self, response: httpx.Response, what: str) -> httpx.URL:
        try:
            await self._raise_for_status(response, what)
            if response.status_code != 202:
                raise RegistryProtocolError(f"{what}: expected 202, got {response.status_code}")
            return self._redirect_target(response)
        finally:
            await response.aclose()

    async def _expect_created(self, response: httpx.Response, what: str) -> None:
        try:
            await self._raise_for_status(response, what)
            if response.status_code != 201:
                raise RegistryProtocolError(f"{what}: expected 201, got {response.status_code}")
        finally:
            await response.aclose()


async def _read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise SizeLimitExceeded(f"{what} is {declared} bytes, over the limit of {limit} bytes")
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in response.aiter_bytes(_READ_CHUNK):
            received += len(chunk)
            if received > limit:
                raise SizeLimitExceeded(f"{what} is over the limit of {limit} bytes")
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise TransientRegistryError(f"{what}: reading the response failed: {exc}") from exc
    return b"".join(chunks)


async def _stream_verified(
    response: httpx.Response,
    descriptor: Descriptor,
    sink: BinaryIO,
    what: str,
    progress: ProgressCallback | None,
) -> None:
    hasher = hashlib.sha256()
    received = 0
    try:
        async for chunk in response.aiter_bytes(_READ_CHUNK):
            received += len(chunk)
            if received > descriptor.size:
                raise DigestMismatch(
                    f"{what}: the registry sent more than the {descriptor.size} bytes "
                    "the manifest declares"
                )
            hasher.update(chunk)
            sink.write(chunk)
            if progress:
                progress(len(chunk))
    except httpx.HTTPError as exc:
        raise TransientRegistryError(f"{what}: download interrupted: {exc}") from exc
    if received != descriptor.size:
        raise DigestMismatch(
            f"{what}: received {received} bytes, the manifest declares {descriptor.size}"
        )
    actual = "sha256:" + hasher.hexdigest()
    if actual != descriptor.digest:
        raise DigestMismatch(f"{what}: the content hashes to {actual}")


_ERROR_BODY_LIMIT = 16 * 1024
"""Bytes of an error response read for its message; the rest is never read."""


async def _error_detail(response: httpx.Response) -> str:
    body = b""
    try:
        async for chunk in response.aiter_raw(4096):
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                return ""  # longer than any registry's error document: not worth reading
    except httpx.HTTPError:
        return ""
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError, TypeError):
        return ""


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _with_digest(location: httpx.URL, digest: str) -> httpx.URL:
    return location.copy_merge_params({"digest": digest})


def _translate(exc: httpx.HTTPError, url: httpx.URL) -> RegistryError:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            hint = (
                "pass --ca-file with the CA that signed its certificate"
                if isinstance(cause, ssl.SSLCertVerificationError)
                else f"if {url.netloc.decode()} serves plain HTTP, allow it with "
                f"--insecure-registry {url.host}"
            )
            return TLSError(f"TLS with {url.netloc.decode()} failed ({cause}); {hint}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return RegistryProtocolError(f"{url}: {exc}")
    reason = str(exc) or type(exc).__name__
    return TransientRegistryError(f"{url.scheme}://{url.netloc.decode()}: {reason}")
