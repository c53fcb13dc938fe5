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

A WasmPlugin without ``priority`` gets 0, as in Istio.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from meshext.api.extension import ServiceMeshExtension
from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.api.wasmplugin import FailStrategy, PluginPhase, WasmPlugin, image_url_to_reference

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
    env = (
        {e.name: e.value for e in spec.vm_config.env if e.value_from == "INLINE"}
        if spec.vm_config
        else {}
    )
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
    )


ROOT_ID_ANNOTATION = "meshext.io/root-id"
"""Annotation that sets the root id an extension's module registered (default: see envoy)."""
