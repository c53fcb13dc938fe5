"""The ServiceMeshExtension conversion webhook (maistra.io/v1alpha1 ⇄ maistra.io/v1).

The API server stores v1 and converts through this webhook whenever a client reads or
writes the other version. :func:`review_conversion` is the whole protocol as a pure
function (``ConversionReview`` in, ``ConversionReview`` out, apiextensions.k8s.io/v1);
:func:`webhook_routes` puts it on an aiohttp application served over HTTPS, and
:class:`ReloadingCertificate` picks up a rotated serving certificate without a restart.

A failed conversion is answered with ``result.status: Failure`` and a message naming
the object, which the API server passes on to the client; a request that is not a
ConversionReview at all is answered with HTTP 400.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from meshext.api import extension
from meshext.api.extension import convert_document
from meshext.errors import MeshextError

log = logging.getLogger(__name__)

REVIEW_API_VERSION = "apiextensions.k8s.io/v1"
REVIEW_KIND = "ConversionReview"
CONVERT_PATH = "/convert"
_VERSIONS = (extension.V1, extension.V1ALPHA1)


class WebhookServerError(MeshextError):
    """The webhook cannot listen, or its certificate cannot be loaded."""


class ReviewError(ValueError):
    """The request is not a ConversionReview this webhook can answer."""


def review_conversion(review: object) -> dict[str, Any]:
    """Answer one ConversionReview request.

    Every object must be a ServiceMeshExtension in a served version; if any is not,
    no object is converted and the response reports the failure (the API server
    converts all or nothing).
    """
    if not isinstance(review, Mapping):
        raise ReviewError("expected a JSON object")
    if review.get("kind") != REVIEW_KIND or review.get("apiVersion") != REVIEW_API_VERSION:
        raise ReviewError(
            f"expected {REVIEW_KIND} {REVIEW_API_VERSION}, "
            f"got {review.get('kind')!r} {review.get('apiVersion')!r}"
        )
    request = review.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ReviewError("request.uid is missing")
    uid: str = request["uid"]
    desired = request.get("desiredAPIVersion")
    objects = request.get("objects")
    if not isinstance(objects, list):
        objects = []
    try:
        if desired not in _VERSIONS:
            raise ValueError(f"cannot convert to {desired!r}; served versions are {_VERSIONS}")
        converted = [_convert_one(obj, str(desired)) for obj in objects]
    except ValueError as exc:
        log.warning("conversion review %s failed: %s", uid, exc)
        return _response(uid, {"status": "Failure", "message": str(exc)})
    return _response(uid, {"status": "Success"}, converted)


def _convert_one(obj: object, desired: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError("an object in the review is not a JSON object")
    meta = obj.get("metadata")
    name = ""
    if isinstance(meta, Mapping):
        name = f" {meta.get('namespace', '')}/{meta.get('name', '')}"
    if obj.get("kind") != extension.KIND:
        raise ValueError(f"{obj.get('kind')}{name}: only {extension.KIND} is converted here")
    if obj.get("apiVersion") not in _VERSIONS:
        raise ValueError(f"{extension.KIND}{name}: unknown apiVersion {obj.get('apiVersion')!r}")
    return convert_document(dict(obj), desired)


def _response(
    uid: str, result: dict[str, Any], converted: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "result": result}
    if converted is not None:
        response["convertedObjects"] = converted
    return {"apiVersion": REVIEW_API_VERSION, "kind": REVIEW_KIND, "response": response}


# --------------------------------------------------------------------------- HTTP


async def _handle_convert(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        answer = review_conversion(body)
    except (ValueError, ReviewError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(answer, dumps=_compact)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def webhook_routes(app: web.Application) -> None:
    """Add ``POST /convert`` to ``app``."""
    app.router.add_post(CONVERT_PATH, _handle_convert)


class ReloadingCertificate:
    """A server SSL context whose certificate is re-read when its files change.

    cert-manager and similar tools rotate the Secret mounted into the pod. At each
    TLS handshake that names a server (SNI, as the API server does for a Service)
    the files are checked (two ``stat`` calls); when they changed, a context with the
    new certificate is built and that handshake and the following ones use it.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self._stamp = self._current_stamp()
        self._latest = self._load()
        self.context = self._load()
        self.context.sni_callback = self._on_handshake

    def _current_stamp(self) -> tuple[float, float]:
        return (os.stat(self.cert).st_mtime, os.stat(self.key).st_mtime)

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def _on_handshake(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        try:
            stamp = self._current_stamp()
            if stamp != self._stamp:
                self._latest = self._load()
                self._stamp = stamp
                log.info("reloaded the webhook serving certificate from %s", self.cert)
        except (OSError, ssl.SSLError) as exc:
            log.warning("keeping the previous webhook certificate: %s", exc)
        connection.context = self._latest
