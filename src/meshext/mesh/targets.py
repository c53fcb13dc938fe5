"""WasmPlugin ``targetRefs``: which proxies a plugin attached to a resource runs on.

As in Istio:

- ``Gateway`` (Gateway API): the gateway proxies of that Gateway, i.e. gateways whose
  label ``gateway.networking.k8s.io/gateway-name`` names it, in the plugin's namespace;
- ``GatewayClass``: gateways labelled ``gateway.networking.k8s.io/gateway-class-name``
  with its name, and only from the control-plane (root) namespace;
- ``Service`` and ``ServiceEntry``: Istio applies these on waypoint proxies only.
  meshext runs no waypoints, so such a plugin applies to no sidecar or gateway, and
  the plan says so rather than guessing another meaning.

The namespace rule (a plugin reaches only its own namespace, or all from the root
namespace) is the planner's, checked before this.
"""

from __future__ import annotations

from meshext.mesh.extension import GATEWAY_CLASS_LABEL, GATEWAY_NAME_LABEL, Extension, Target
from meshext.mesh.workload import ProxyKind, Workload

WAYPOINT_KINDS = frozenset({"Service", "ServiceEntry"})


def target_mismatch(ext: Extension, workload: Workload, root_namespace: str) -> str | None:
    """``None`` when one of ``ext.targets`` selects ``workload``, else why none does."""
    reasons = [_mismatch(t, ext, workload, root_namespace) for t in ext.targets]
    if any(reason is None for reason in reasons):
        return None
    return "; ".join(r for r in reasons if r is not None)


def _mismatch(target: Target, ext: Extension, workload: Workload, root: str) -> str | None:
    if target.kind in WAYPOINT_KINDS:
        return f"targets {target}: Istio applies {target.kind} targets on waypoint proxies only"
    if workload.kind is not ProxyKind.GATEWAY:
        return f"targets {target}, which selects gateway proxies; this is a sidecar"
    if target.kind == "GatewayClass":
        if ext.namespace != root:
            return (
                f"targets {target}: GatewayClass targets apply only from the "
                f"control-plane namespace {root!r}"
            )
        label = GATEWAY_CLASS_LABEL
    else:
        if workload.namespace != ext.namespace:
            return f"targets {target} in namespace {ext.namespace!r}; the gateway is elsewhere"
        label = GATEWAY_NAME_LABEL
    if workload.labels.get(label) != target.name:
        return f"targets {target}; the gateway's label {label} is not {target.name!r}"
    return None
