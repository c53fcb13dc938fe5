"""A small, typed client for the Kubernetes API, over kubernetes-asyncio's transport.

kubernetes-asyncio loads kubeconfig files and in-cluster service-account credentials
(token refresh included) and owns the aiohttp session; this module only issues the
handful of REST calls meshext needs, on raw JSON objects, and translates every
failure into :mod:`meshext.kube.errors`. Generated model classes are not used:
meshext's own pydantic models are the typed view of its resources.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from meshext.kube.connectivity import Connectivity
from meshext.kube.errors import Gone, KubeError, KubeUnavailable, error_from_status
from meshext.kube.resources import KubeObject, ResourceType

FIELD_MANAGER = "meshext"
"""Field manager named on every write, so ``managedFields`` shows what meshext owns."""

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]

_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
"""What a request can fail with when the API server cannot be reached or stops answering."""


@dataclass(frozen=True)
class ObjectList:
    """A list answer: the objects and the resourceVersion to watch from."""

    items: list[KubeObject]
    resource_version: str


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    object: KubeObject


class KubeClient:
    """Issues REST calls to one API server with the credentials of one configuration."""

    def __init__(self, api: ApiClient, *, request_timeout: float = 30.0) -> None:
        self._api = api
        self._request_timeout = request_timeout
        self.connectivity = Connectivity()

    @classmethod
    async def connect(
        cls,
        kubeconfig: str | os.PathLike[str] | None = None,
        *,
        context: str | None = None,
        request_timeout: float = 30.0,
    ) -> KubeClient:
        """A client from ``kubeconfig``; without one, in-cluster credentials when running
        in a pod, else ``$KUBECONFIG`` / ``~/.kube/config``."""
        configuration = Configuration()
        try:
            if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
                kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            else:
                path = str(kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0])
                await kube_config.load_kube_config(
                    config_file=path or None,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except (ConfigException, OSError) as exc:
            raise KubeError(f"cannot load Kubernetes credentials: {exc}") from exc
        return cls(ApiClient(configuration=configuration), request_timeout=request_timeout)

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: object = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        request = f"{method} {path}"
        try:
            response: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout or aiohttp.ClientTimeout(total=self._request_timeout),
            )
        except _TRANSPORT_ERRORS as exc:
            problem = f"{request}: {type(exc).__name__}: {exc}"
            self.connectivity.failed(problem)
            raise KubeUnavailable(problem) from exc
        except ApiException as exc:
            raise KubeError(f"{request}: {exc}") from exc
        if response.status >= 400:
            raw = await _read(response, request)
            error = error_from_status(response.status, _json_mapping(raw), request=request)
            if isinstance(error, KubeUnavailable):
                self.connectivity.failed(str(error))
            else:
                self.connectivity.succeeded()
            raise error
        self.connectivity.succeeded()
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: object = None,
        content_type: str = "application/json",
    ) -> KubeObject:
        """One call whose answer is a JSON object."""
        response = await self._send(method, path, query=query, body=body, content_type=content_type)
        decoded = _json_mapping(await _read(response, f"{method} {path}"))
        if decoded is None:
            raise KubeError(f"{method} {path}: the answer is not a JSON object")
        return decoded

    # ------------------------------------------------------------------ verbs

    async def list(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> ObjectList:
        """Every object (all namespaces unless ``namespace``), in pages of 500."""
        items: list[KubeObject] = []
        query: list[tuple[str, str]] = [("limit", "500")]
        if label_selector:
            query.append(("labelSelector", label_selector))
        continue_token = ""
        while True:
            page_query = [*query, ("continue", continue_token)] if continue_token else query
            answer = await self.request("GET", rtype.path(namespace), query=page_query)
            for item in answer.get("items") or []:
                # List items carry no apiVersion/kind; give them back for decoding.
                items.append({"apiVersion": rtype.api_version, "kind": rtype.kind, **item})
            meta = answer.get("metadata") or {}
            continue_token = str(meta.get("continue") or "")
            if not continue_token:
                return ObjectList(items, str(meta.get("resourceVersion") or ""))

    async def watch(
        self,
        rtype: ResourceType,
        resource_version: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
        opened: Callable[[], None] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Changes after ``resource_version`` until the server ends the watch
        (after about ``timeout_seconds``). Raises :class:`Gone` when that version is
        too old: the caller must list again. ``opened`` is called once the API server
        accepted the watch."""
        query: list[tuple[str, str]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._request_timeout, sock_read=timeout_seconds + 30
        )
        path = rtype.path(namespace)
        response = await self._send("GET", path, query=query, timeout=timeout)
        if opened is not None:
            opened()
        try:
            while True:
                try:
                    line = await response.content.readline()
                except _TRANSPORT_ERRORS as exc:
                    problem = f"watch {path}: {type(exc).__name__}: {exc}"
                    self.connectivity.failed(problem)
                    raise KubeUnavailable(problem) from exc
                if not line:
                    return
                if not line.strip():
                    continue
                event = _json_mapping(line)
                if event is None or not isinstance(event.get("object"), dict):
                    raise KubeError(f"watch {path}: malformed event {line[:200]!r}")
                kind = str(event.get("type"))
                obj: KubeObject = event["object"]
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise error_from_status(code, obj, request=f"watch {path}")
                if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    raise KubeError(f"watch {path}: unknown event type {kind!r}")
                if kind != "BOOKMARK":
                    obj = {"apiVersion": rtype.api_version, "kind": rtype.kind, **obj}
                yield WatchEvent(kind, obj)  # type: ignore[arg-type]
        finally:
            response.release()
            response.close()

    async def version(self) -> KubeObject:
        """The API server's ``/version`` (cheap; used to notice it answers again)."""
        return await self.request("GET", "/version")

    async def get(self, rtype: ResourceType, namespace: str, name: str) -> KubeObject:
        return await self.request("GET", rtype.path(namespace, name))

    async def create(self, rtype: ResourceType, obj: Mapping[str, Any]) -> KubeObject:
        namespace = str((obj.get("metadata") or {}).get("namespace") or "")
        return await self.request(
            "POST", rtype.path(namespace), query=[("fieldManager", FIELD_MANAGER)], body=dict(obj)
        )

    async def replace(
        self, rtype: ResourceType, obj: Mapping[str, Any], *, subresource: str | None = None
    ) -> KubeObject:
        """PUT: fails with :class:`Conflict` when ``metadata.resourceVersion`` is stale."""
        meta = obj.get("metadata") or {}
        path = rtype.path(str(meta.get("namespace") or ""), str(meta["name"]), subresource)
        return await self.request(
            "PUT", path, query=[("fieldManager", FIELD_MANAGER)], body=dict(obj)
        )

    async def apply(
        self,
        rtype: ResourceType,
        obj: Mapping[str, Any],
        *,
        field_manager: str = FIELD_MANAGER,
        force: bool = True,
        dry_run: bool = False,
    ) -> KubeObject:
        """Server-side apply: the server creates or updates the object and validates it."""
        meta = obj.get("metadata") or {}
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        return await self.request(
            "PATCH",
            rtype.path(str(meta.get("namespace") or ""), str(meta["name"])),
            query=query,
            body=dict(obj),
            content_type="application/apply-patch+yaml",
        )

    async def merge_patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> KubeObject:
        """JSON merge patch (RFC 7386): ``null`` removes a field."""
        return await self.request(
            "PATCH",
            rtype.path(namespace, name, subresource),
            query=[("fieldManager", FIELD_MANAGER)],
            body=dict(patch),
            content_type="application/merge-patch+json",
        )

    async def delete(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
    ) -> None:
        """Delete; with ``uid`` only that incarnation of the object (else :class:`Conflict`)."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}
        await self.request("DELETE", rtype.path(namespace, name), body=body)


async def _read(response: aiohttp.ClientResponse, request: str) -> bytes:
    """The whole body of ``response``, which is released (back to the pool) either way."""
    try:
        return await response.read()
    except _TRANSPORT_ERRORS as exc:
        raise KubeUnavailable(f"{request}: {exc}") from exc
    finally:
        response.release()


def _json_mapping(raw: bytes) -> dict[str, Any] | None:
    try:
        decoded = json.loads(raw)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


__all__ = [
    "FIELD_MANAGER",
    "Gone",
    "KubeClient",
    "ObjectList",
    "WatchEvent",
]
