"""The Kubernetes adapter's errors, one tree under :class:`meshext.errors.MeshextError`.

::

    KubeError                      anything the API server adapter raises
    ├── KubeUnavailable            no answer: connection refused/reset, timeout,
    │                              5xx, 429 (retryable)
    └── KubeApiError               the API server answered with a Status
        ├── NotFound          404
        ├── Conflict          409  (resourceVersion mismatch, already exists)
        ├── Gone              410  (watch/list resourceVersion too old: re-list)
        ├── Forbidden         403  (RBAC; permanent until someone changes roles)
        └── Invalid           422  (the object failed validation)

The aiohttp / kubernetes-asyncio error that was translated is chained as the cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshext.errors import MeshextError


class KubeError(MeshextError):
    """A request to the Kubernetes API server failed."""

    retryable: bool = False


class KubeUnavailable(KubeError):
    """The API server could not be reached or is overloaded; try again later."""

    retryable = True


class KubeApiError(KubeError):
    """The API server refused a request with a ``Status`` object."""

    def __init__(self, status: int, reason: str, message: str, *, request: str = "") -> None:
        where = f"{request}: " if request else ""
        super().__init__(f"{where}{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.request = request


class NotFound(KubeApiError):
    pass


class Conflict(KubeApiError):
    retryable = True


class Gone(KubeApiError):
    """The resourceVersion asked for is no longer in the API server's history."""


class Forbidden(KubeApiError):
    pass


class Invalid(KubeApiError):
    pass


_BY_STATUS: Mapping[int, type[KubeApiError]] = {
    404: NotFound,
    409: Conflict,
    410: Gone,
    403: Forbidden,
    422: Invalid,
}


def error_from_status(code: int, body: Mapping[str, Any] | None, *, request: str = "") -> KubeError:
    """The error for an HTTP answer ``code`` whose body decoded to ``body`` (a ``Status``)."""
    body = body or {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or "")
    if code == 429 or code >= 500:
        return KubeUnavailable(f"{request}: {code} {reason}: {message}".strip(": "))
    cls = _BY_STATUS.get(code, KubeApiError)
    return cls(code, reason or "Error", message or f"HTTP {code}", request=request)
