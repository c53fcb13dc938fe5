"""Keep the conversion webhook's CA bundle in the ServiceMeshExtension CRD.

The API server trusts the webhook's serving certificate only through the CRD's
``spec.conversion.webhook.clientConfig.caBundle``. A manifest cannot carry that
bundle (it is made at install time), and re-applying a manifest without it would
remove it if it had been written by the same field manager. So the controller
writes it itself, as cert-manager's CA injector does: the leader reads the CA file
mounted beside the webhook's certificate and, when the CRD holds another bundle (or
none), sets it with a server-side apply under its own field manager,
:data:`FIELD_MANAGER`. Fields owned by that manager survive ``kubectl apply`` of the
CRDs, client-side or server-side, because kubectl never owned them. The check runs
as soon as a replica becomes leader and then every ``period`` seconds, which also
picks up a rotated CA.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshext.errors import MeshextError
from meshext.kube.client import KubeClient
from meshext.kube.errors import Forbidden, KubeError, NotFound
from meshext.kube.resources import CUSTOM_RESOURCE_DEFINITION, KubeObject

log = logging.getLogger(__name__)

FIELD_MANAGER = "meshext-ca-injector"
SME_CRD_NAME = "servicemeshextensions.maistra.io"


class CaBundleError(MeshextError):
    """The CA file cannot be read or holds no PEM certificate."""


def read_ca_bundle(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise CaBundleError(f"cannot read the webhook CA {path}: {exc}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise CaBundleError(f"{path} holds no PEM certificate")
    return pem


def ca_bundle_of(crd: KubeObject) -> str:
    """The base64 caBundle of a CRD's conversion webhook, ``""`` when it has none."""
    conversion = (crd.get("spec") or {}).get("conversion") or {}
    config = (conversion.get("webhook") or {}).get("clientConfig") or {}
    return str(config.get("caBundle") or "")


def ca_bundle_patch(crd_name: str, pem: bytes) -> dict[str, Any]:
    """The server-side apply body that sets only the caBundle of ``crd_name``."""
    return {
        "apiVersion": CUSTOM_RESOURCE_DEFINITION.api_version,
        "kind": CUSTOM_RESOURCE_DEFINITION.kind,
        "metadata": {"name": crd_name},
        "spec": {
            "conversion": {
                "strategy": "Webhook",
                "webhook": {"clientConfig": {"caBundle": base64.b64encode(pem).decode("ascii")}},
            }
        },
    }


class CaBundleInjector:
    """Sets the CRD's caBundle to the PEM in ``ca_file`` whenever ``should_write()``."""

    def __init__(
        self,
        client: KubeClient,
        ca_file: Path,
        *,
        crd_name: str = SME_CRD_NAME,
        should_write: Callable[[], bool] = lambda: True,
        period: float = 10.0,
    ) -> None:
        self.client = client
        self.ca_file = ca_file
        self.crd_name = crd_name
        self.should_write = should_write
        self.period = period
        self.injections = 0
        self._last_problem = ""

    def __repr__(self) -> str:
        return f"<CaBundleInjector {self.ca_file} -> crd/{self.crd_name}: {self.injections} writes>"

    async def run(self) -> None:
        """Check at once when this replica may write (e.g. just became leader), then
        every ``period`` seconds while it may."""
        next_check = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if not self.should_write():
                next_check = 0.0
            elif loop.time() >= next_check:
                next_check = loop.time() + self.period
                try:
                    await self.ensure()
                    self._last_problem = ""
                except (KubeError, CaBundleError) as exc:
                    self._report(exc)
            await asyncio.sleep(min(1.0, self.period))

    async def ensure(self) -> bool:
        """Write the bundle if the CRD holds another one; True when it wrote."""
        pem = read_ca_bundle(self.ca_file)
        crd = await self.client.get(CUSTOM_RESOURCE_DEFINITION, "", self.crd_name)
        if ca_bundle_of(crd) == base64.b64encode(pem).decode("ascii"):
            return False
        await self.client.apply(
            CUSTOM_RESOURCE_DEFINITION,
            ca_bundle_patch(self.crd_name, pem),
            field_manager=FIELD_MANAGER,
        )
        self.injections += 1
        log.info(
            "set the conversion webhook's CA bundle of crd/%s from %s", self.crd_name, self.ca_file
        )
        return True

    def _report(self, exc: MeshextError) -> None:
        message = str(exc)
        if isinstance(exc, NotFound):
            message = f"crd/{self.crd_name} is not installed yet"
        elif isinstance(exc, Forbidden):
            message = (
                f"may not update crd/{self.crd_name} (RBAC: get and patch on "
                f"customresourcedefinitions named {self.crd_name}): {exc}"
            )
        if message != self._last_problem:
            log.warning("cannot keep the conversion webhook's CA bundle: %s", message)
            self._last_problem = message
