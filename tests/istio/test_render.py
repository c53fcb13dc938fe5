"""ServiceMeshExtensions render into Istio WasmPlugins and EnvoyFilters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshext.api.decode import decode
from meshext.api.extension import ServiceMeshExtension
from meshext.api.phase import Phase
from meshext.istio.render import (
    ANCHORS,
    IstioOptions,
    Operation,
    RenderError,
    Resolved,
    envoy_filter_priority,
    istio_cluster_name,
    render,
)
from meshext.mesh.resolution import ImageFormat, ResolvedModule
from tests.documents import sme_document

SHA = "c" * 64
DIGEST = "sha256:" + "d" * 64
MODULE = ResolvedModule(
    sha256=SHA, path="/cache/x", size=10, image_digest=DIGEST, image_format=ImageFormat.MAISTRA
)
BASE_URL = "http://meshext.meshext-system.svc:8080"
HTTP = IstioOptions(module_base_url=BASE_URL)
OCI = IstioOptions(module_source="oci")


def _sme(
    namespace: str = "team-a",
    *,
    version: str = "v1",
    phase: str | None = "PostAuthZ",
    priority: int | None = 10,
    config: object = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> ServiceMeshExtension:
    resource = decode(
        sme_document(
            "header",
            namespace,
            "quay.io/acme/header:v1",
            version=version,
            phase=phase,
            priority=priority,
            config=config,
            annotations=annotations,
            uid="uid-1",
            **spec,
        )
    )
    assert isinstance(resource, ServiceMeshExtension)
    return resource


def _render(sme: ServiceMeshExtension, options: IstioOptions = HTTP) -> dict[str, Any]:
    resolved = Resolved(sme.spec.phase, sme.spec.priority, MODULE)
    return render(sme, resolved, control_plane_namespace="istio-system", options=options).manifest


def test_wasm_plugin_fetches_the_module_from_meshext_by_sha256() -> None:
    plugin = _render(_sme(workloadSelector={"labels": {"app": "web"}}, config={"greeting": "hi"}))
    assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
    assert plugin["kind"] == "WasmPlugin"
    assert plugin["spec"] == {
        "selector": {"matchLabels": {"app": "web"}},
        "url": f"{BASE_URL}/modules/sha256/{SHA}",
        "sha256": SHA,
        "pluginConfig": {"greeting": "hi"},
        "phase": "STATS",
        "priority": 10,
        "failStrategy": "FAIL_CLOSE",
        "type": "HTTP",
        "match": [{"mode": "SERVER"}],
    }


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("PreAuthN", "AUTHN"),
        ("PostAuthN", "AUTHZ"),
        ("PreAuthZ", "AUTHZ"),
        ("PostAuthZ", "STATS"),
        ("PreStats", "STATS"),
        ("PostStats", None),
    ],
)
def test_phases_map_as_the_migration_table_says(phase: str, expected: str | None) -> None:
    assert _render(_sme(phase=phase))["spec"].get("phase") == expected


def test_a_local_extension_stays_in_its_namespace_and_is_owned_by_it() -> None:
    meta = _render(_sme("team-a"))["metadata"]
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "meshext"}
    assert meta["annotations"] == {"meshext.io/owner": "team-a/header"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "maistra.io/v1",
            "kind": "ServiceMeshExtension",
            "name": "header",
            "uid": "uid-1",
            "controller": True,
        }
    ]


def test_a_mesh_wide_extension_goes_to_istios_root_namespace_without_owner_reference() -> None:
    sme = _sme("basic")
    rendering = render(
        sme,
        Resolved(sme.spec.phase, sme.spec.priority, MODULE),
        control_plane_namespace="basic",
        options=IstioOptions(module_base_url=BASE_URL, root_namespace="istio-system"),
    )
    assert rendering.namespace == "istio-system"
    assert "ownerReferences" not in rendering.manifest["metadata"]
    assert rendering.manifest["metadata"]["annotations"] == {"meshext.io/owner": "basic/header"}


def test_oci_mode_hands_istio_the_image_with_pull_policy_and_one_secret() -> None:
    sme = _sme(imagePullPolicy="Always", imagePullSecrets=[{"name": "one"}, {"name": "two"}])
    rendering = render(
        sme,
        Resolved(sme.spec.phase, sme.spec.priority, MODULE),
        control_plane_namespace="istio-system",
        options=OCI,
    )
    spec = rendering.manifest["spec"]
    assert spec["url"] == "oci://quay.io/acme/header:v1"
    assert spec["sha256"] == "d" * 64
    assert spec["imagePullPolicy"] == "Always"
    assert spec["imagePullSecret"] == "one"
    notes = " ".join(str(n) for n in rendering.notes)
    assert "/plugin.wasm" in notes
    assert "dropped 'two'" in notes


def test_a_plain_v1alpha1_string_config_is_wrapped_with_a_note() -> None:
    sme = _sme(version="v1alpha1", config="x-header: 1")
    rendering = render(
        sme,
        Resolved(sme.spec.phase, sme.spec.priority, MODULE),
        control_plane_namespace="istio-system",
        options=HTTP,
    )
    assert rendering.manifest["spec"]["pluginConfig"] == {"raw_v1alpha1_config": "x-header: 1"}
    assert any(n.field == "spec.config" for n in rendering.notes)


def test_a_priority_beyond_istios_32_bits_is_clamped_with_a_note() -> None:
    sme = _sme(priority=7)  # resources refuse such priorities; the renderer clamps anyway
    rendering = render(
        sme,
        Resolved(sme.spec.phase, 2**40, MODULE),
        control_plane_namespace="istio-system",
        options=HTTP,
    )
    assert rendering.manifest["spec"]["priority"] == 2**31 - 1
    assert any(n.field == "spec.priority" for n in rendering.notes)


def test_exact_placement_renders_an_envoy_filter_at_the_phase_anchor() -> None:
    sme = _sme(
        phase="PreAuthZ",
        annotations={"meshext.io/placement": "exact"},
        workloadSelector={"labels": {"app": "web"}},
        config={"k": "v"},
    )
    envoy_filter = _render(sme)
    assert envoy_filter["apiVersion"] == "networking.istio.io/v1alpha3"
    assert envoy_filter["kind"] == "EnvoyFilter"
    spec = envoy_filter["spec"]
    assert spec["workloadSelector"] == {"labels": {"app": "web"}}
    contexts = [p["match"]["context"] for p in spec["configPatches"]]
    assert contexts == ["SIDECAR_INBOUND", "GATEWAY"]
    patch = spec["configPatches"][0]
    assert patch["applyTo"] == "HTTP_FILTER"
    assert patch["match"]["listener"]["filterChain"]["filter"] == {
        "name": "envoy.filters.network.http_connection_manager",
        "subFilter": {"name": "envoy.filters.http.rbac"},
    }
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    config = patch["patch"]["value"]["typed_config"]["config"]
    remote = config["vm_config"]["code"]["remote"]
    assert remote["http_uri"] == {
        "uri": f"{BASE_URL}/modules/sha256/{SHA}",
        "cluster": "outbound|8080||meshext.meshext-system.svc.cluster.local",
        "timeout": "30s",
    }
    assert remote["sha256"] == SHA
    assert config["root_id"] == ""
    assert config["configuration"]["value"] == '{"k":"v"}'


def test_exact_placement_hands_a_v1alpha1_string_to_the_module_unchanged() -> None:
    sme = _sme(
        version="v1alpha1", config="x-header: 1", annotations={"meshext.io/placement": "exact"}
    )
    value = _render(sme)["spec"]["configPatches"][0]["patch"]["value"]
    assert value["typed_config"]["config"]["configuration"]["value"] == "x-header: 1"


def test_pre_authn_goes_first_in_the_chain() -> None:
    sme = _sme(phase="PreAuthN", annotations={"meshext.io/placement": "exact"})
    patch = _render(sme)["spec"]["configPatches"][0]
    assert patch["patch"]["operation"] == "INSERT_FIRST"
    assert "subFilter" not in patch["match"]["listener"]["filterChain"]["filter"]


def test_an_unknown_placement_is_an_error_naming_the_annotation() -> None:
    with pytest.raises(RenderError, match=r"meshext.io/placement.*'sideways'"):
        _render(_sme(annotations={"meshext.io/placement": "sideways"}))


def test_http_module_source_needs_the_module_server_url() -> None:
    sme = _sme()
    with pytest.raises(RenderError, match="module server"):
        render(
            sme,
            Resolved(sme.spec.phase, sme.spec.priority, MODULE),
            control_plane_namespace="istio-system",
            options=IstioOptions(),
        )


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        (
            "http://meshext.meshext-system.svc:8080",
            "outbound|8080||meshext.meshext-system.svc.cluster.local",
        ),
        (
            "http://meshext.meshext-system:9000",
            "outbound|9000||meshext.meshext-system.svc.cluster.local",
        ),
        ("http://modules.example.com", "outbound|80||modules.example.com"),
    ],
)
def test_the_module_cluster_is_istios_outbound_cluster_of_the_url_host(
    url: str, cluster: str
) -> None:
    assert istio_cluster_name(url) == cluster


def _chain_after_patches(extensions: list[tuple[Phase, int, int]]) -> list[int]:
    """Apply INSERT_* patches in EnvoyFilter priority order, as Istio does."""
    chain: list[str | int] = ["envoy.filters.http.rbac", "istio.stats", "envoy.filters.http.router"]
    ordered = sorted(extensions, key=lambda e: envoy_filter_priority(e[0], e[1]))
    for phase, _priority, ident in ordered:
        anchor = ANCHORS[phase]
        if anchor.operation is Operation.INSERT_FIRST:
            chain.insert(0, ident)
        else:
            chain.insert(chain.index(anchor.filter or ""), ident)
    return [x for x in chain if isinstance(x, int)]


@given(
    st.lists(
        st.tuples(st.sampled_from(list(Phase)), st.integers(-(2**24), 2**24)),
        min_size=1,
        max_size=8,
        unique_by=lambda e: e[1],
    )
)
def test_envoy_filter_priorities_reproduce_maistras_phase_and_priority_order(
    specs: list[tuple[Phase, int]],
) -> None:
    extensions = [(phase, priority, i) for i, (phase, priority) in enumerate(specs)]
    expected = [e[2] for e in sorted(extensions, key=lambda e: (e[0].rank, -e[1]))]
    assert _chain_after_patches(extensions) == expected
