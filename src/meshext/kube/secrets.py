"""Image pull secrets read from the API server, by name, in one namespace at a time.

meshext never lists or watches Secrets: it reads the Secrets an extension names in
``spec.imagePullSecrets``, in the extension's own namespace, when it pulls. RBAC
therefore needs only ``get`` on Secrets (see ``deploy/``).

The tenant boundary is enforced here too, not only by the resolver asking for the
right namespace: while the controller resolves an extension's image it wraps the
call in :func:`only_namespace`, and a Secret of any other namespace is refused
before the API server is asked.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from meshext.kube.client import KubeClient
from meshext.kube.errors import KubeError, NotFound
from meshext.kube.resources import SECRET

DOCKER_CONFIG_JSON = ".dockerconfigjson"
DOCKER_CFG = ".dockercfg"


class PullSecretError(KubeError):
    """A pull secret exists but cannot be used, or cannot be read."""


_ALLOWED_NAMESPACE: ContextVar[str | None] = ContextVar("pull_secret_namespace", default=None)


@contextmanager
def only_namespace(namespace: str) -> Iterator[None]:
    """Within this block (and the tasks it starts), only Secrets of ``namespace`` are read."""
    token = _ALLOWED_NAMESPACE.set(namespace)
    try:
        yield
    finally:
        _ALLOWED_NAMESPACE.reset(token)


class KubePullSecretStore:
    """:class:`~meshext.mesh.resolution.PullSecretStore` over the Kubernetes API."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get(self, namespace: str, name: str) -> bytes | None:
        """``.dockerconfigjson`` of Secret ``namespace/name`` (a legacy ``.dockercfg``
        is converted); ``None`` when the Secret does not exist."""
        allowed = _ALLOWED_NAMESPACE.get()
        if allowed is not None and namespace != allowed:
            raise PullSecretError(
                f"refusing to read Secret {namespace}/{name} for an extension in namespace "
                f"{allowed!r}: pull secrets are read only in the extension's own namespace"
            )
        try:
            secret = await self.client.get(SECRET, namespace, name)
        except NotFound:
            return None
        except KubeError as exc:
            error = PullSecretError(f"cannot read Secret {namespace}/{name}: {exc}")
            error.retryable = exc.retryable
            raise error from exc
        data = secret.get("data") or {}
        try:
            if DOCKER_CONFIG_JSON in data:
                return base64.b64decode(data[DOCKER_CONFIG_JSON], validate=True)
            if DOCKER_CFG in data:
                legacy = json.loads(base64.b64decode(data[DOCKER_CFG], validate=True))
                return json.dumps({"auths": legacy}, sort_keys=True).encode()
        except (binascii.Error, ValueError) as exc:
            raise PullSecretError(f"Secret {namespace}/{name} holds invalid data: {exc}") from exc
        raise PullSecretError(
            f"Secret {namespace}/{name} has neither {DOCKER_CONFIG_JSON} nor {DOCKER_CFG}; "
            "create it with kubectl create secret docker-registry"
        )
