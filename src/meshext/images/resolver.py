"""Resolving an extension's ``spec.image`` to a verified module in the cache.

:class:`ImageResolver` implements :class:`meshext.mesh.resolution.ModuleResolver`.
Per reference kind:

* ``file:PATH`` - the file is read, checked and cached under its hash each resolve;
* ``http(s)://`` (WasmPlugin) - downloaded by :mod:`meshext.images.http_module`; with a
  sha256 a cached module answers without a request, without one (when the operator
  allows it) the last download of the URL answers unless the policy is ``Always``;
* ``oci-layout:DIR[:tag|@digest]`` - ``index.json`` is read each resolve (it is local
  and cheap); an image digest already in the cache is not read again;
* a registry image - by pull policy:

  - pinned by digest: the cache answers; the registry is asked only to prove that the
    extension's credentials may read the image, once per credential set;
  - ``IfNotPresent``: a tag seen before answers from the cache without a request;
  - ``Always`` (or no policy and the tag ``latest``, as in Maistra): one HEAD request
    asks the registry what the tag points to now; the image is downloaded only when
    that digest is not cached.

Credentials come from the extension's ``imagePullSecrets`` (in its own namespace,
first Secret covering the registry wins), else from the fallback docker config of
:class:`RegistryConfig`. A module pulled with one set of credentials is handed to an
extension with other credentials (or none) only after the registry confirmed that
those may read it too, so the cache never lets one namespace use an image it could
not pull.

Transient failures (network errors, 5xx, 429) are retried with exponential backoff
inside :meth:`ImageResolver.resolve`; when the attempts run out, the resolution fails
as retryable. Permanent failures (401/403/404, a bad image or module) fail at once.

With a signature policy (:class:`SignatureVerifier`), a module is handed out only
after its image (or, for ``file:``, its detached signature) passed the policy; a
refusal keeps an extension's previous module running. Under ``enforce`` an image
manifest's signature is checked before anything else of the image is downloaded (an
index's signature may name the chosen entry, so an index is checked after the pull).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import httpx

from meshext.api.meta import ResourceKey
from meshext.images.auth import ANONYMOUS_FINGERPRINT, Credentials, CredentialsError, DockerConfig
from meshext.images.cache import CacheError, ImageRecord, ModuleCache, cache_write_error
from meshext.images.client import FetchedManifest, Progress, RegistryClient
from meshext.images.config import RegistryConfig, RetryPolicy
from meshext.images.deadline import within_deadline
from meshext.images.errors import (
    ImageError,
    InvalidImage,
    NotFound,
    TransientRegistryError,
    Unauthorized,
)
from meshext.images.local import ANYWHERE, LocalImages
from meshext.images.oci import ImageIndex, parse_document
from meshext.images.pull import Puller
from meshext.images.reference import (
    ImageReference,
    ImageReferenceError,
    ReferenceKind,
    parse_image_reference,
)
from meshext.images.signatures import Signer
from meshext.images.source import LayoutSource, RegistrySource
from meshext.images.trust import SignatureMode
from meshext.images.url_source import UrlModuleSource
from meshext.images.verification import SignatureRefused, SignatureVerifier
from meshext.mesh.extension import Extension
from meshext.mesh.resolution import PullSecretStore, Resolution, ResolvedModule

T = TypeVar("T")

ALWAYS = "Always"
IF_NOT_PRESENT = "IfNotPresent"
_LOCAL_IDENTITY = "local"
DEFAULT_REGISTRY_CONFIG = RegistryConfig()
DEFAULT_RETRIES = RetryPolicy()


class PullSecretError(ImageError):
    """An image pull Secret exists but cannot be read."""


@dataclass(frozen=True)
class PullRequest:
    """What to pull and with which permissions, independent of any resource kind."""

    image: str
    policy: str | None = None
    namespace: str = ""
    secrets: tuple[str, ...] = ()
    expected_sha256: str | None = None


@dataclass(frozen=True)
class _Access:
    credentials: Credentials | None
    namespace: str
    secrets: tuple[str, ...]
    missing: tuple[str, ...]
    source: str
    """Which secret (or the registry config) the credentials came from; '' if none."""
    reach: str = ""
    """How the registry is reached (:meth:`RegistryConfig.reach`): part of the identity."""

    @property
    def identity(self) -> str:
        who = self.credentials.fingerprint if self.credentials else ANONYMOUS_FINGERPRINT
        return f"{who} via {self.reach}"


class ImageResolver:
    """Resolves extension images to cached, verified modules (a ``ModuleResolver``).

    ``transport`` replaces the HTTP transport of every registry client (and with it
    the TLS policy of ``registry_config`` and the address guard); it exists to observe
    or shape traffic. ``local_images`` says where ``file:`` and ``oci-layout:`` images
    may be read from (anywhere by default, for the CLI; ``meshext serve`` narrows it).
    """

    def __init__(
        self,
        cache: ModuleCache,
        secrets: PullSecretStore,
        *,
        registry_config: RegistryConfig = DEFAULT_REGISTRY_CONFIG,
        retries: RetryPolicy = DEFAULT_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        signatures: SignatureVerifier | None = None,
        local_images: LocalImages = ANYWHERE,
    ) -> None:
        self.cache = cache
        self.signatures = signatures or SignatureVerifier()
        self._secrets = secrets
        self._config = registry_config
        self._retries = retries
        self._transport = transport
        self._local_images = local_images
        self._puller = Puller(cache, registry_config.limits)
        self._urls = UrlModuleSource(
            cache, self._puller, registry_config, retries, transport=transport
        )
        self._clients: dict[tuple[str, str], RegistryClient] = {}

    def __repr__(self) -> str:
        return f"ImageResolver({self.cache!r}, registries={len(self._clients)})"

    async def resolve(self, extension: Extension) -> Resolution:
        """Resolve ``extension.image``; never raises for image or registry problems."""
        request = PullRequest(
            image=extension.image,
            policy=extension.pull.policy,
            namespace=extension.namespace,
            secrets=extension.pull.secrets,
            expected_sha256=extension.expected_sha256,
        )
        user = _user(extension.key)
        try:
            module = await self.pull(request)
        except ImageReferenceError as exc:
            self.cache.use(user, None)
            return Resolution.failed(f"failed to parse spec.image: {exc}")
        except SignatureRefused as exc:
            return Resolution.failed(str(exc), keep_previous=True)
        except ImageError as exc:
            self.cache.use(user, None)
            return Resolution.failed(str(exc), retryable=exc.retryable)
        self.cache.use(user, module.sha256)
        return Resolution.ready(module)

    def forget(self, key: ResourceKey) -> None:
        """The extension is gone: its module no longer counts as in use."""
        self.cache.use(_user(key), None)

    async def pull(self, request: PullRequest, progress: Progress | None = None) -> ResolvedModule:
        """Resolve one image; raises :class:`ImageError` with a message a user can act on."""
        reference = parse_image_reference(request.image)
        try:
            record, signer = await self._record(request, reference, progress)
        except OSError as exc:  # what is left after the sources translated theirs
            raise cache_write_error(self.cache, exc) from exc
        _check_expected(request, reference, record)
        path = self.cache.path_for(record.module_sha256)
        if path is None:
            raise CacheError(
                f"the module of {reference} was evicted from the cache while resolving; retrying"
            )
        self.cache.touch(record.module_sha256)
        module = record.resolved(path)
        return replace(module, signer=str(signer)) if signer is not None else module

    async def _record(
        self, request: PullRequest, reference: ImageReference, progress: Progress | None
    ) -> tuple[ImageRecord, Signer | None]:
        if reference.is_local:
            path = self._local_images.check(Path(reference.path), str(reference))
            reference = replace(reference, path=str(path))
        signer: Signer | None = None
        if reference.kind is ReferenceKind.FILE:
            record = await self._puller.load_file(Path(reference.path))
            cached = self.cache.path_for(record.module_sha256)
            if cached is not None:
                signer = self.signatures.check_file(
                    Path(reference.path), cached, record.module_sha256, request.namespace
                )
        elif reference.kind is ReferenceKind.OCI_LAYOUT:
            record = await self._from_layout(reference, request.namespace, progress)
            signer = await self.signatures.check_image(
                LayoutSource(Path(reference.path), self._config.limits),
                _signed_digests(record),
                None,
                request.namespace,
            )
        elif reference.kind is ReferenceKind.HTTP:
            record = await self._urls.fetch(
                reference.path, request.expected_sha256, always=request.policy == ALWAYS
            )
            self.signatures.check_url(reference.path, record.module_sha256, request.namespace)
        else:
            access = await self._access(request, reference)
            always = request.policy == ALWAYS or (not request.policy and reference.is_latest)
            flight = f"resolve:{reference}:{always}:{access.identity}"
            if self.signatures.mode_for(request.namespace) is SignatureMode.ENFORCE:
                # The pull refuses by the policy of its namespace (namespaces may
                # trust keys of their own): never share that verdict with another.
                flight += f":{request.namespace}"
            record = await self._with_retries(
                reference,
                lambda: self.cache.single_flight(
                    flight,
                    lambda: within_deadline(
                        self._config.pull_deadline,
                        f"pulling {reference}",
                        self._from_registry(reference, access, always, progress),
                    ),
                    across_processes=False,
                ),
                access,
            )
            if self.signatures.mode_for(request.namespace) is not SignatureMode.OFF:
                digests = _signed_digests(record)
                signer = await self._with_retries(
                    reference, lambda: self._check_signatures(reference, access, digests), access
                )
        return record, signer

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # -- sources ------------------------------------------------------------------------

    async def _from_layout(
        self, reference: ImageReference, namespace: str, progress: Progress | None
    ) -> ImageRecord:
        source = LayoutSource(Path(reference.path), self._config.limits)
        top = await source.manifest(reference.digest or reference.tag or "")
        cached = self.cache.image(top.digest)
        if cached is not None:
            return cached
        enforced = self.signatures.mode_for(namespace) is SignatureMode.ENFORCE
        if enforced and not _is_index(top):
            await self.signatures.check_image(source, (top.digest,), None, namespace)
        return await self._puller.pull(source, top, _LOCAL_IDENTITY, progress)

    async def _from_registry(
        self,
        reference: ImageReference,
        access: _Access,
        always: bool,
        progress: Progress | None,
    ) -> ImageRecord:
        def registry() -> RegistrySource:
            client = self._client(reference.registry, access.credentials)
            return RegistrySource(client, reference.repository, str(reference))

        tag_name = f"{reference.name}:{reference.tag}" if reference.tag else ""
        if reference.digest:
            known: str | None = reference.digest
        elif always:
            known = await registry().manifest_digest(reference.version)
            record = self.cache.image(known)
            if record is not None:
                self.cache.store_tag(tag_name, known)
                self.cache.grant(known, access.identity)
                return record
        else:
            known = self.cache.tag(tag_name)
        record = self.cache.image(known) if known else None
        if record is not None:
            if not self.cache.is_granted(record, access.identity):
                await registry().manifest_digest(record.digest)
                self.cache.grant(record.digest, access.identity)
            return record
        source = registry()
        top = await source.manifest(known or reference.version)
        enforced = self.signatures.mode_for(access.namespace) is SignatureMode.ENFORCE
        if enforced and not _is_index(top):
            # refused before a byte of the image is downloaded, unpacked or compiled
            await self._check_signatures(reference, access, (top.digest,))
        record = await self._puller.pull(source, top, access.identity, progress)
        if tag_name:
            self.cache.store_tag(tag_name, top.digest)
        return record

    async def _check_signatures(
        self, reference: ImageReference, access: _Access, digests: tuple[str, ...]
    ) -> Signer | None:
        client = self._client(reference.registry, access.credentials)
        source = RegistrySource(client, reference.repository, str(reference))

        async def referrers(digest: str) -> bytes | None:
            return await client.referrers(reference.repository, digest)

        return await self.signatures.check_image(source, digests, referrers, access.namespace)

    def _client(self, registry: str, credentials: Credentials | None) -> RegistryClient:
        key = (registry, credentials.fingerprint if credentials else ANONYMOUS_FINGERPRINT)
        client = self._clients.get(key)
        if client is None:
            client = RegistryClient(registry, self._config, credentials, transport=self._transport)
            self._clients[key] = client
        return client

    async def _access(self, request: PullRequest, reference: ImageReference) -> _Access:
        missing: list[str] = []
        for name in request.secrets:
            data = await self._secrets.get(request.namespace, name)
            if data is None:
                missing.append(name)
                continue
            try:
                config = DockerConfig.parse(data, f"Secret {request.namespace}/{name}")
            except CredentialsError as exc:
                raise PullSecretError(
                    f"imagePullSecrets '{name}' in namespace '{request.namespace}' is not a "
                    f"valid .dockerconfigjson: {exc}"
                ) from exc
            credentials = config.credentials_for(reference.registry, reference.repository)
            if credentials is not None:
                return _Access(
                    credentials,
                    request.namespace,
                    request.secrets,
                    tuple(missing),
                    f"secret '{name}'",
                    self._config.reach(reference.registry),
                )
        fallback = self._config.credentials.credentials_for(
            reference.registry, reference.repository
        )
        return _Access(
            fallback,
            request.namespace,
            request.secrets,
            tuple(missing),
            "the registry config" if fallback else "",
            self._config.reach(reference.registry),
        )

    async def _with_retries(
        self,
        reference: ImageReference,
        operation: Callable[[], Awaitable[T]],
        access: _Access,
    ) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await operation()
            except Unauthorized as exc:
                raise Unauthorized(
                    _unauthorized_message(reference, access, exc),
                    status=exc.status,
                    credentials_used=exc.credentials_used,
                ) from exc
            except NotFound as exc:
                raise NotFound(f"{reference} not found: {exc}", status=exc.status) from exc
            except ImageError as exc:
                if not exc.retryable:
                    raise
                if attempt >= self._retries.attempts:
                    raise TransientRegistryError(
                        f"pulling {reference} failed after {attempt} attempts: {exc}"
                    ) from exc
                await asyncio.sleep(self._retries.delay(attempt))


def _user(key: ResourceKey) -> str:
    return str(key)


def _is_index(top: FetchedManifest) -> bool:
    try:
        return isinstance(parse_document(top.data, top.media_type, str(top.digest)), ImageIndex)
    except InvalidImage:
        return False  # the puller reports it


def _signed_digests(record: ImageRecord) -> tuple[str, ...]:
    """The digests a signature may name: the one the reference reached, then the image."""
    return (record.digest, record.image_digest or record.digest)


def _unauthorized_message(reference: ImageReference, access: _Access, exc: Unauthorized) -> str:
    head = f"unauthorized pulling {reference}"
    namespace = access.namespace
    if access.missing and access.credentials is None:
        names = ", ".join(f"'{n}'" for n in access.missing)
        return f"{head}: imagePullSecrets {names} not found in namespace '{namespace}'"
    if access.secrets and access.credentials is None:
        names = ", ".join(f"'{n}'" for n in access.secrets)
        return (
            f"{head}: imagePullSecrets {names} in namespace '{namespace}' hold no credentials "
            f"for {reference.registry}"
        )
    if access.source.startswith("secret"):
        return (
            f"{head}: check imagePullSecrets {access.source.removeprefix('secret ')} in "
            f"namespace '{namespace}' ({exc})"
        )
    if access.credentials is not None:
        return f"{head}: the credentials from {access.source} were refused ({exc})"
    return (
        f"{head}: the registry requires credentials; add imagePullSecrets with a "
        f".dockerconfigjson for {reference.registry} ({exc})"
    )


def _check_expected(request: PullRequest, reference: ImageReference, record: ImageRecord) -> None:
    if not request.expected_sha256:
        return
    expected = request.expected_sha256.lower().removeprefix("sha256:")
    accepted = {record.module_sha256, record.digest.removeprefix("sha256:")}
    if record.image_digest:
        accepted.add(record.image_digest.removeprefix("sha256:"))
    if expected not in accepted:
        image = f" nor the image manifest ({record.image_digest})" if record.image_digest else ""
        raise InvalidImage(
            f"{reference}: sha256 {expected} matches neither the module "
            f"(sha256 {record.module_sha256}){image}"
        )
