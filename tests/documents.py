"""Kubernetes-style documents for tests, built with little ceremony."""

from __future__ import annotations

from typing import Any


def sme_document(
    name: str,
    namespace: str,
    image: str,
    *,
    version: str = "v1",
    phase: str | None = "PostAuthZ",
    priority: int | None = 10,
    config: object = None,
    annotations: dict[str, str] | None = None,
    uid: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A ServiceMeshExtension document; ``None`` leaves a field out."""
    body: dict[str, Any] = {"image": image, **spec}
    if phase is not None:
        body["phase"] = phase
    if priority is not None:
        body["priority"] = priority
    if config is not None:
        body["config"] = config
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    if uid is not None:
        meta["uid"] = uid
    return {
        "apiVersion": f"maistra.io/{version}",
        "kind": "ServiceMeshExtension",
        "metadata": meta,
        "spec": body,
    }
