"""One normalized shape for every extension API, so the planner knows only one.

ServiceMeshExtension maps over directly. Istio's WasmPlugin has four phases; they are
placed on Maistra's six at the spot where Istio inserts them:

=================  ===============  ============================================
WasmPlugin phase   Maistra phase    why
=================  ===============  ============================================
AUTHN              PreAuthN         Istio inserts AUTHN plugins before authn
AUTHZ              PreAuthZ         after authn, before the authz filter
STATS              PreStats         after authz, before the stats filter
(unspecified)      PostStats        Istio puts them last, before the router
=================  ===============  ============================================

A WasmPlugin without ``priority`` gets 0, as in Istio. Its ``match`` becomes a
:class:`~meshext.mesh.traffic.TrafficMatch`, its ``type`` the filter layer and its
``targetRefs`` :class:`Target` s; a ServiceMeshExtension keeps Maistra's traffic
(inbound and gateways) on the HTTP layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from meshext.api.extension import ServiceMeshExtension
from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.api.wasmplugin import (
    FailStrategy,
    PluginPhase,
    PluginType,
    TrafficSelector,
    WasmPlugin,
    WorkloadMode,
    image_url_to_reference,
)
from meshext.mesh import traffic
from meshext.mesh.traffic import FilterLayer, TrafficMatch

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
"""The label a Gateway API gateway's proxies carry, naming their Gateway."""
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
"""The label naming the GatewayClass of a gateway's proxies."""

PLUGIN_PHASES: Mapping[PluginPhase, Phase] = {
    PluginPhase.AUTHN: Phase.PRE_AUTHN,
    PluginPhase.AUTHZ: Phase.PRE_AUTHZ,
    PluginPhase.STATS: Phase.PRE_STATS,
    PluginPhase.UNSPECIFIED: Phase.POST_STATS,
}


class FailurePolicy(StrEnum):
    """What the proxy does when the extension's VM fails."""

    FAIL_CLOSED = "FAIL_CLOSED"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


@dataclass(frozen=True)
class PullSettings:
    """How to fetch the extension's image: policy and the Secrets in its namespace."""

    policy: str | None = None
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """A resource a WasmPlugin attaches to (``targetRefs``), by kind and name."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Extension:
    """An extension as the planner sees it, whatever API declared it.

    ``phase`` and ``priority`` are ``None`` when the resource leaves them to the image's
    ``manifest.yaml``. ``config`` is the exact text handed to ``proxy_on_configure``.
    """

    key: ResourceKey
    generation: int
    image: str
    selector: Mapping[str, str]
    config: str
    phase: Phase | None
    priority: int | None
    pull: PullSettings = PullSettings()
    failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED
    expected_sha256: str | None = None
    root_id: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    host_env: tuple[str, ...] = ()
    """Environment variables of the proxy's own process the VM may read (``valueFrom: HOST``)."""
    traffic: TrafficMatch = traffic.MAISTRA_TRAFFIC
    layer: FilterLayer = FilterLayer.HTTP
    targets: tuple[Target, ...] = ()
    """When not empty, the extension applies only to proxies of these resources."""

    @property
    def namespace(self) -> str:
        return self.key.namespace

    @property
    def name(self) -> str:
        return self.key.name


def from_service_mesh_extension(sme: ServiceMeshExtension) -> Extension:
    selector = sme.spec.workload_selector.labels if sme.spec.workload_selector else {}
    return Extension(
        key=sme.key,
        generation=sme.metadata.generation,
        image=sme.spec.image,
        selector=dict(selector),
        config=sme.module_config(),
        phase=sme.spec.phase,
        priority=sme.spec.priority,
        pull=PullSettings(
            policy=sme.spec.image_pull_policy,
            secrets=tuple(s.name for s in sme.spec.image_pull_secrets),
        ),
        root_id=sme.metadata.annotations.get(ROOT_ID_ANNOTATION),
    )


def from_wasm_plugin(plugin: WasmPlugin) -> Extension:
    spec = plugin.spec
    config = (
        ""
        if spec.plugin_config is None
        else json.dumps(spec.plugin_config, sort_keys=True, separators=(",", ":"))
    )
    policy = None if spec.image_pull_policy == "UNSPECIFIED_POLICY" else spec.image_pull_policy
    failure = {
        FailStrategy.FAIL_CLOSE: FailurePolicy.FAIL_CLOSED,
        FailStrategy.FAIL_OPEN: FailurePolicy.FAIL_OPEN,
        FailStrategy.FAIL_RELOAD: FailurePolicy.FAIL_RELOAD,
    }[spec.fail_strategy]
    env_vars = spec.vm_config.env if spec.vm_config else ()
    env = {e.name: e.value for e in env_vars if e.value_from == "INLINE"}
    host_env = tuple(sorted(e.name for e in env_vars if e.value_from == "HOST"))
    return Extension(
        key=plugin.key,
        generation=plugin.metadata.generation,
        image=image_url_to_reference(spec.url),
        selector=dict(spec.selector.match_labels) if spec.selector else {},
        config=config,
        phase=PLUGIN_PHASES[spec.phase],
        priority=spec.priority if spec.priority is not None else 0,
        pull=PullSettings(
            policy=policy,
            secrets=(spec.image_pull_secret,) if spec.image_pull_secret else (),
        ),
        failure_policy=failure,
        expected_sha256=spec.sha256,
        root_id=spec.plugin_name,
        env=env,
        host_env=host_env,
        traffic=traffic_match(spec.match),
        layer=FilterLayer.NETWORK if spec.plugin_type is PluginType.NETWORK else FilterLayer.HTTP,
        targets=tuple(Target(t.kind, t.name) for t in spec.targets),
    )


_MODES = {
    WorkloadMode.UNDEFINED: traffic.CLIENT_AND_SERVER,
    WorkloadMode.CLIENT_AND_SERVER: traffic.CLIENT_AND_SERVER,
    WorkloadMode.CLIENT: traffic.CLIENT,
    WorkloadMode.SERVER: traffic.SERVER,
}


def traffic_match(selectors: tuple[TrafficSelector, ...]) -> TrafficMatch:
    """A WasmPlugin's ``match``: no selectors means all traffic, as in Istio."""
    if not selectors:
        return traffic.ALL_TRAFFIC
    return TrafficMatch(
        tuple(
            traffic.TrafficSelector(_MODES[s.mode], frozenset(p.number for p in s.ports))
            for s in selectors
        )
    )


ROOT_ID_ANNOTATION = "meshext.io/root-id"
"""Annotation that sets the root id an extension's module registered (default: see envoy)."""
