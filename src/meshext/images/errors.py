"""Errors of the image adapter: registry access, image content and module checks.

::

    MeshextError
     └── ImageError                      (.retryable says whether trying again may help)
          ├── RegistryError              talking to a registry went wrong
          │    ├── Unauthorized          401/403, or credentials the registry refused
          │    ├── NotFound              404: no such repository, tag, manifest or blob
          │    ├── TransientRegistryError  connection refused/reset, timeouts, 5xx, 429
          │    ├── InsecureRegistryError plain HTTP or an HTTPS downgrade nobody allowed
          │    ├── TLSError              the registry's certificate could not be verified
          │    └── RegistryProtocolError an answer that breaks the distribution protocol
          ├── DigestMismatch             content did not hash to the digest that named it
          ├── InvalidImage               the image holds no module meshext can find
          ├── UnsafeArchive              a layer tries to escape, link, or explode
          ├── SizeLimitExceeded          a manifest, layer or module is larger than allowed
          └── InvalidModule              the module is not a usable proxy-wasm module

Every error raised while translating a library error (httpx, tarfile, zlib, wasmtime)
is raised ``from`` it, so the cause stays visible.
"""

from __future__ import annotations

from meshext.errors import MeshextError


class ImageError(MeshextError):
    """Pulling, reading or checking an extension image failed."""

    retryable: bool = False


class RegistryError(ImageError):
    """A registry request failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unauthorized(RegistryError):
    """The registry refused the credentials, or asked for credentials meshext lacks.

    ``credentials_used`` tells the two apart: False means the request went out
    anonymously because no credentials were known for the registry.
    """

    def __init__(
        self, message: str, *, status: int | None = None, credentials_used: bool = False
    ) -> None:
        super().__init__(message, status=status)
        self.credentials_used = credentials_used


class NotFound(RegistryError):
    """The registry has no such repository, tag, manifest or blob."""


class TransientRegistryError(RegistryError):
    """A failure that may go away by itself: network errors, 5xx, 429."""

    retryable = True


class InsecureRegistryError(RegistryError):
    """A plain-HTTP registry or redirect that was not explicitly allowed."""


class AddressNotAllowed(InsecureRegistryError):
    """A registry, token server or redirect resolving to an internal address that the
    operator did not allow (see :mod:`meshext.net.guard`)."""


class TLSError(RegistryError):
    """The TLS handshake failed: unknown CA, wrong host name, or not TLS at all."""


class RegistryProtocolError(RegistryError):
    """The registry answered something the distribution protocol does not allow."""


class DigestMismatch(ImageError):
    """Downloaded or stored content does not hash to the digest that names it."""


class InvalidImage(ImageError):
    """The image is readable but holds no module meshext can use."""


class UnsafeArchive(InvalidImage):
    """A layer holds an entry meshext refuses: escaping paths, links, devices, bombs."""


class SizeLimitExceeded(InvalidImage):
    """Something in the image is larger than the configured limit."""


class InvalidModule(InvalidImage):
    """The module is not WebAssembly, does not compile, or is not a proxy-wasm module."""
