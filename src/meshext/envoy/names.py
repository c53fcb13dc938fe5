"""The names of everything meshext generates for Envoy.

Scripts, dashboards and alerts come to depend on these (Envoy stat names embed them),
so they are part of meshext's interface: readable, derived only from what they name,
and never renamed without a migration note.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Final

from meshext.api.meta import ResourceKey

PREFIX: Final = "meshext"

APP_CLUSTER: Final = "meshext.app"
"""The cluster of the application a sidecar fronts (or a gateway's backend)."""
MODULES_CLUSTER: Final = "meshext.modules"
"""The cluster of meshext's module server, from which proxies fetch remote modules."""
XDS_CLUSTER: Final = "meshext.xds"
"""The bootstrap cluster of meshext's ADS server."""
HCM_FILTER: Final = "envoy.filters.network.http_connection_manager"


def extension_config_name(key: ResourceKey) -> str:
    """The ECDS resource name of an extension, which is also its HTTP filter's name.

    ``meshext.<kind in lowercase>.<namespace>.<name>``, e.g.
    ``meshext.servicemeshextension.istio-system.header-append``. Kinds and namespaces
    hold no dots, so the name reads back unambiguously.
    """
    return f"{PREFIX}.{key.kind.lower()}.{key.namespace}.{key.name}"


def vm_id(
    module_sha256: str, env: Mapping[str, str] | None = None, host_env: tuple[str, ...] = ()
) -> str:
    """The VM id of a module: extensions with the same module (and environment) share a VM.

    Derived from the module's sha256 so it is stable across restarts and pushes
    (changing a vm_id makes Envoy start new VMs and leaks V8 memory). Envoy's VM key
    leaves the environment variables out, so extensions that set different ones get
    different ids rather than silently sharing a VM with someone else's environment
    (or with access to other variables of the proxy's own, ``host_env``).
    """
    base = f"{PREFIX}.{module_sha256[:16]}"
    if not env and not host_env:
        return base
    document: object = dict(sorted((env or {}).items()))
    if host_env:
        document = [document, sorted(host_env)]
    digest = hashlib.sha256(json.dumps(document).encode()).hexdigest()
    return f"{base}.env-{digest[:12]}"


def inbound_listener_name(port: int) -> str:
    """A sidecar's inbound listener."""
    return f"{PREFIX}.inbound.{port}"


def gateway_listener_name(port: int) -> str:
    """A gateway's listener."""
    return f"{PREFIX}.gateway.{port}"


def inbound_stat_prefix(port: int) -> str:
    """The HTTP stat prefix of a sidecar's inbound listener (``http.<prefix>.*``)."""
    return f"inbound_{port}"


def gateway_stat_prefix(port: int) -> str:
    return f"gateway_{port}"


def outbound_listener_name(port: int) -> str:
    """A sidecar's outbound listener, where its application sends to one upstream."""
    return f"{PREFIX}.outbound.{port}"


def outbound_stat_prefix(port: int) -> str:
    return f"outbound_{port}"


def outbound_cluster_name(port: int) -> str:
    """The upstream an outbound listener forwards to."""
    return f"{PREFIX}.outbound.{port}"
