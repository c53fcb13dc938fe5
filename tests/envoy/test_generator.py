"""The pure generator: plan → listeners, clusters and ECDS resources, byte for byte."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import wrappers_pb2

from meshext.api.phase import Phase
from meshext.envoy import names
from meshext.envoy.errors import GenerationError
from meshext.envoy.files import ConfigDirectory, config_files
from meshext.envoy.node import DeliveryMode, HostPort
from meshext.envoy.resources import (
    CLUSTER_TYPE_URL,
    EXTENSION_CONFIG_TYPE_URL,
    LISTENER_TYPE_URL,
    EnvoyResources,
)
from meshext.envoy.sidecar import (
    ListenerShape,
    filter_names,
    listener_shape,
    listener_specs,
    make_listener,
    proxy_resources,
)
from meshext.envoy.standin import stand_in_module
from meshext.envoy.wasm import WASM_FILTER_TYPE_URL, ModuleDelivery, with_fetch_attempt
from meshext.mesh.extension import FailurePolicy
from meshext.mesh.planner import PlannedExtension
from meshext.mesh.traffic import CLIENT, TrafficMatch, TrafficSelector
from meshext.mesh.workload import ProxyKind
from tests.envoy.support import fake_module, plan, planned, proxy, workload

LOCAL = ModuleDelivery(mode=DeliveryMode.LOCAL)
OPEN = FailurePolicy.FAIL_OPEN
REMOTE = ModuleDelivery(mode=DeliveryMode.REMOTE, server=HostPort("10.0.0.5", 8080))
JWT, RBAC, ROUTER = (
    "envoy.filters.http.jwt_authn",
    "envoy.filters.http.rbac",
    "envoy.filters.http.router",
)


def ecds(name: str, namespace: str = "apps") -> str:
    return f"meshext.servicemeshextension.{namespace}.{name}"


def generate(
    extensions: list[PlannedExtension], delivery: ModuleDelivery = LOCAL, **kwargs: Any
) -> EnvoyResources:
    return proxy_resources(proxy(), plan(extensions), delivery, **kwargs)


def connection_manager(resources: EnvoyResources) -> Any:
    (listener,) = resources.listeners
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    hcm = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(hcm)
    return hcm


def plugin(resources: EnvoyResources, name: str) -> Any:
    config = resources.extension_configs[name]
    assert config.typed_config.type_url == WASM_FILTER_TYPE_URL
    wasm = wasm_filter_pb2.Wasm()
    assert config.typed_config.Unpack(wasm)
    return wasm.config


def plugin_text(plugin_config: Any) -> str:
    value = wrappers_pb2.StringValue()
    assert plugin_config.configuration.Unpack(value)
    return str(value.value)


def mixed_extensions() -> list[PlannedExtension]:
    return [
        planned("auth-logger", phase=Phase.PRE_AUTHN, config="one", env={"B": "2", "A": "1"}),
        planned("header-append", phase=Phase.POST_AUTHZ, priority=100, config='{"value":"x"}'),
        planned("stats-tag", phase=Phase.POST_STATS, module=fake_module("shared")),
        planned("other-tag", phase=Phase.POST_STATS, module=fake_module("shared")),
    ]


def test_the_same_inputs_give_byte_identical_resources() -> None:
    first = generate(mixed_extensions(), REMOTE)
    # Rebuilt from scratch, extensions in another order and env keys in another order.
    rebuilt = list(reversed(mixed_extensions()))
    rebuilt[-1] = planned(
        "auth-logger", phase=Phase.PRE_AUTHN, config="one", env={"A": "1", "B": "2"}
    )
    second = generate(rebuilt, REMOTE)
    assert first.serialized() == second.serialized()
    assert first.digest() == second.digest()
    directory = ConfigDirectory("/run/xds")
    assert config_files(first, directory) == config_files(second, directory)


def test_resources_are_grouped_by_type_url_and_named() -> None:
    resources = generate(mixed_extensions(), REMOTE)
    by_type = resources.by_type()
    assert set(by_type) == {LISTENER_TYPE_URL, CLUSTER_TYPE_URL, EXTENSION_CONFIG_TYPE_URL}
    assert list(by_type[LISTENER_TYPE_URL]) == ["meshext.inbound.15006"]
    assert list(by_type[CLUSTER_TYPE_URL]) == [names.APP_CLUSTER, names.MODULES_CLUSTER]
    assert list(by_type[EXTENSION_CONFIG_TYPE_URL]) == sorted(
        ecds(n) for n in ("auth-logger", "header-append", "stats-tag", "other-tag")
    )


@pytest.mark.parametrize(
    ("phase", "chain"),
    [
        (Phase.PRE_AUTHN, ["ext", JWT, RBAC, ROUTER]),
        (Phase.POST_AUTHN, [JWT, "ext", RBAC, ROUTER]),
        (Phase.PRE_AUTHZ, [JWT, "ext", RBAC, ROUTER]),
        (Phase.POST_AUTHZ, [JWT, RBAC, "ext", ROUTER]),
        (Phase.PRE_STATS, [JWT, RBAC, "ext", ROUTER]),
        (Phase.POST_STATS, [JWT, RBAC, "ext", ROUTER]),
    ],
)
def test_an_extension_sits_at_its_phase_among_the_anchor_filters(
    phase: Phase, chain: list[str]
) -> None:
    resources = generate([planned("ext", phase=phase)])
    hcm = connection_manager(resources)
    expected = [ecds("ext") if name == "ext" else name for name in chain]
    assert [f.name for f in hcm.http_filters] == expected


def test_every_phase_and_priority_keeps_its_order_around_the_anchors() -> None:
    extensions = [
        planned("post-stats", phase=Phase.POST_STATS),
        planned("pre-stats", phase=Phase.PRE_STATS),
        planned("post-authz-low", phase=Phase.POST_AUTHZ, priority=-1),
        planned("post-authz-high", phase=Phase.POST_AUTHZ, priority=7),
        planned("pre-authz", phase=Phase.PRE_AUTHZ),
        planned("post-authn", phase=Phase.POST_AUTHN),
        planned("b-pre-authn", phase=Phase.PRE_AUTHN),
        planned("a-pre-authn", phase=Phase.PRE_AUTHN),
    ]
    hcm = connection_manager(generate(extensions))
    assert [f.name for f in hcm.http_filters] == [
        ecds("a-pre-authn"),
        ecds("b-pre-authn"),
        JWT,
        ecds("post-authn"),
        ecds("pre-authz"),
        RBAC,
        ecds("post-authz-high"),
        ecds("post-authz-low"),
        ecds("pre-stats"),
        ecds("post-stats"),
        ROUTER,
    ]
    assert filter_names(plan(extensions)) == [f.name for f in hcm.http_filters]


def test_anchor_filters_carry_neutral_configs() -> None:
    hcm = connection_manager(generate([]))
    anchors = {f.name: f.typed_config for f in hcm.http_filters}
    assert list(anchors) == [JWT, RBAC, ROUTER]
    # No providers, no rules, no policy: the filters run and decide nothing.
    assert all(config.value == b"" for config in anchors.values())
    assert anchors[JWT].type_url.endswith("jwt_authn.v3.JwtAuthentication")
    assert anchors[RBAC].type_url.endswith("rbac.v3.RBAC")


def test_each_extension_filter_takes_its_config_from_ads_without_a_default() -> None:
    hcm = connection_manager(generate([planned("ext")]))
    (ext_filter,) = [f for f in hcm.http_filters if f.name == ecds("ext")]
    assert not ext_filter.HasField("typed_config")
    discovery = ext_filter.config_discovery
    assert list(discovery.type_urls) == [WASM_FILTER_TYPE_URL]
    assert not discovery.HasField("default_config")
    assert not discovery.apply_default_config_without_warming
    assert discovery.config_source.HasField("ads")
    # Wait for the extension rather than going live with an unconfigured filter.
    assert discovery.config_source.initial_fetch_timeout.ToSeconds() == 0


def test_a_config_directory_makes_extension_filters_watch_files() -> None:
    directory = ConfigDirectory("/run/xds/p1")
    resources = generate([planned("ext")], config_source=directory)
    hcm = connection_manager(resources)
    (ext_filter,) = [f for f in hcm.http_filters if f.name == ecds("ext")]
    source = ext_filter.config_discovery.config_source
    assert source.path_config_source.path == f"/run/xds/p1/extensions/{ecds('ext')}.json"
    files = config_files(resources, directory)
    assert sorted(files) == [
        "/run/xds/p1/clusters.json",
        f"/run/xds/p1/extensions/{ecds('ext')}.json",
        "/run/xds/p1/listeners.json",
    ]


def test_ecds_names_are_stable_readable_and_carry_kind_namespace_and_name() -> None:
    sme = planned("header-append", namespace="istio-system")
    plugin_ext = planned("rate.limit", namespace="apps", kind="WasmPlugin")
    assert names.extension_config_name(sme.key) == (
        "meshext.servicemeshextension.istio-system.header-append"
    )
    assert names.extension_config_name(plugin_ext.key) == "meshext.wasmplugin.apps.rate.limit"
    resources = generate([sme, plugin_ext])
    assert set(resources.extension_configs) == {
        "meshext.servicemeshextension.istio-system.header-append",
        "meshext.wasmplugin.apps.rate.limit",
    }
    assert all(name == config.name for name, config in resources.extension_configs.items())


def test_extensions_with_the_same_module_share_a_vm_id_and_others_do_not() -> None:
    shared = fake_module("shared")
    resources = generate(
        [
            planned("a", module=shared, config="1"),
            planned("b", module=shared, config="2"),
            planned("c", module=fake_module("other")),
            planned("d", module=shared, env={"MODE": "strict"}),
        ]
    )
    vm = {
        name.rsplit(".", 1)[1]: plugin(resources, name).vm_config.vm_id
        for name in resources.extension_configs
    }
    assert vm["a"] == vm["b"] == f"meshext.{shared.sha256[:16]}"
    assert vm["c"] != vm["a"]
    # Envoy's VM key ignores environment variables: a different environment needs its own VM.
    assert vm["d"] not in (vm["a"], vm["c"])


@pytest.mark.parametrize(
    "config",
    [
        "test",
        "  leading and trailing blanks \n",
        'ünïcödé and "quotes" and \\ backslashes',
        '{"name":"x-a","value":"1"}',
        "",
    ],
)
def test_the_extension_config_reaches_the_plugin_exactly(config: str) -> None:
    resources = generate([planned("ext", config=config)])
    assert plugin_text(plugin(resources, ecds("ext"))) == config


def test_plugin_config_names_the_extension_and_runs_on_v8() -> None:
    plugin_config = plugin(generate([planned("header-append")]), ecds("header-append"))
    assert plugin_config.name == "header-append"
    assert plugin_config.root_id == ""
    assert plugin_config.vm_config.runtime == "envoy.wasm.runtime.v8"
    assert plugin_config.configuration.type_url == "type.googleapis.com/google.protobuf.StringValue"


def test_a_root_id_given_by_the_extension_is_used() -> None:
    plugin_config = plugin(generate([planned("ext", root_id="ext_root")]), ecds("ext"))
    assert plugin_config.root_id == "ext_root"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (FailurePolicy.FAIL_CLOSED, wasm_pb2.FAIL_CLOSED),
        (FailurePolicy.FAIL_OPEN, wasm_pb2.FAIL_OPEN),
        (FailurePolicy.FAIL_RELOAD, wasm_pb2.FAIL_RELOAD),
    ],
)
def test_the_failure_policy_follows_the_extension(policy: FailurePolicy, expected: int) -> None:
    plugin_config = plugin(generate([planned("ext", failure_policy=policy)]), ecds("ext"))
    assert plugin_config.failure_policy == expected


def test_the_failure_policy_defaults_to_fail_closed() -> None:
    assert plugin(generate([planned("ext")]), ecds("ext")).failure_policy == wasm_pb2.FAIL_CLOSED


def test_environment_variables_reach_the_vm_config() -> None:
    plugin_config = plugin(generate([planned("ext", env={"LEVEL": "debug"})]), ecds("ext"))
    assert dict(plugin_config.vm_config.environment_variables.key_values) == {"LEVEL": "debug"}


def test_local_delivery_points_envoy_at_the_verified_module_file() -> None:
    module = fake_module("ext")
    resources = generate([planned("ext", module=module)])
    code = plugin(resources, ecds("ext")).vm_config.code
    assert code.local.filename == module.path
    assert [c.name for c in resources.clusters] == [names.APP_CLUSTER]


def test_remote_delivery_fetches_from_the_module_server_with_the_sha256() -> None:
    module = fake_module("ext")
    resources = generate([planned("ext", module=module)], REMOTE)
    remote = plugin(resources, ecds("ext")).vm_config.code.remote
    assert remote.http_uri.uri == f"http://10.0.0.5:8080/modules/sha256/{module.sha256}"
    assert remote.http_uri.cluster == names.MODULES_CLUSTER
    assert remote.http_uri.timeout.ToSeconds() == 30
    assert remote.sha256 == module.sha256
    assert remote.retry_policy.num_retries.value == 5
    (modules,) = [c for c in resources.clusters if c.name == names.MODULES_CLUSTER]
    address = modules.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("10.0.0.5", 8080)


def test_remote_modules_are_rejected_by_envoy_until_fetched_and_stood_in_meanwhile() -> None:
    resources = generate([planned("ext", module=fake_module("ext"))], REMOTE)
    assert plugin(resources, ecds("ext")).vm_config.nack_on_code_cache_miss
    (extension_filter,) = [
        f for f in connection_manager(resources).http_filters if f.name == ecds("ext")
    ]
    default = wasm_filter_pb2.Wasm()
    assert extension_filter.config_discovery.default_config.Unpack(default)
    # The extension fails closed (the default): so does its stand-in.
    assert default.config.vm_config.code.local.inline_bytes == stand_in_module(closed=True)
    assert default.config.failure_policy == wasm_pb2.FAIL_OPEN  # the stand-in always loads
    assert default.config.name == "ext"


def test_a_fail_open_remote_extension_stands_in_with_the_pass_through_module() -> None:
    open_ext = planned("ext", module=fake_module("ext"), failure_policy=FailurePolicy.FAIL_OPEN)
    resources = generate([open_ext], REMOTE)
    (extension_filter,) = [
        f for f in connection_manager(resources).http_filters if f.name == ecds("ext")
    ]
    default = wasm_filter_pb2.Wasm()
    assert extension_filter.config_discovery.default_config.Unpack(default)
    assert default.config.vm_config.code.local.inline_bytes == stand_in_module()


def test_local_modules_and_files_fed_remote_proxies_keep_envoys_default() -> None:
    files_fed = dataclasses.replace(REMOTE, nack_on_code_cache_miss=False)
    for delivery in (LOCAL, files_fed):
        resources = generate([planned("ext", module=fake_module("ext"))], delivery)
        assert not plugin(resources, ecds("ext")).vm_config.nack_on_code_cache_miss
        (extension_filter,) = [
            f for f in connection_manager(resources).http_filters if f.name == ecds("ext")
        ]
        assert not extension_filter.config_discovery.HasField("default_config")


def test_a_fetch_attempt_is_a_new_version_of_the_same_module() -> None:
    module = fake_module("ext")
    config = generate([planned("ext", module=module)], REMOTE).extension_configs[ecds("ext")]
    again = with_fetch_attempt(config, 3)
    wasm = wasm_filter_pb2.Wasm()
    assert again.typed_config.Unpack(wasm)
    remote = wasm.config.vm_config.code.remote
    assert remote.http_uri.uri == f"http://10.0.0.5:8080/modules/sha256/{module.sha256}?attempt=3"
    assert remote.sha256 == module.sha256
    assert again.SerializeToString() != config.SerializeToString()
    assert with_fetch_attempt(config, 0) is config


def test_a_proxy_that_asks_for_remote_delivery_gets_it() -> None:
    delivery = ModuleDelivery(mode=DeliveryMode.LOCAL, server=HostPort("127.0.0.1", 9000))
    resources = proxy_resources(
        proxy(delivery=DeliveryMode.REMOTE), plan([planned("ext")]), delivery
    )
    assert plugin(resources, ecds("ext")).vm_config.code.HasField("remote")


def test_remote_delivery_without_a_module_server_is_an_error_naming_the_proxy() -> None:
    with pytest.raises(GenerationError, match=r"sidecar~httpbin\.apps~15006"):
        proxy_resources(proxy(delivery=DeliveryMode.REMOTE), plan([planned("ext")]), LOCAL)


def test_an_extension_without_a_resolved_module_is_an_error_naming_it() -> None:
    unresolved = planned("ext")
    unresolved = PlannedExtension(unresolved.extension, unresolved.phase, 0, None)
    with pytest.raises(GenerationError, match="ServiceMeshExtension apps/ext"):
        generate([unresolved])


def test_a_plan_for_another_workload_is_refused() -> None:
    foreign = plan([planned("ext", namespace="tenant-b")], workload("tenant-b"))
    with pytest.raises(GenerationError, match="tenant-b"):
        proxy_resources(proxy(), foreign, LOCAL)


def test_a_sidecar_gets_only_an_inbound_listener_routing_to_its_app() -> None:
    resources = generate([planned("ext")])
    (listener,) = resources.listeners
    assert listener.name == "meshext.inbound.15006"
    assert listener.traffic_direction == 1  # INBOUND: outbound traffic is never patched
    socket = listener.address.socket_address
    assert (socket.address, socket.port_value) == ("127.0.0.1", 15006)
    hcm = connection_manager(resources)
    assert hcm.stat_prefix == "inbound_15006"
    route = hcm.route_config.virtual_hosts[0].routes[0]
    assert route.route.cluster == names.APP_CLUSTER
    (app,) = resources.clusters
    endpoint = app.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("127.0.0.1", 8080)


def test_a_gateway_gets_the_extensions_on_its_listener_chain() -> None:
    gateway = workload("istio-system", name="ingress", kind=ProxyKind.GATEWAY)
    extensions = [planned("ext", namespace="istio-system")]
    resources = proxy_resources(
        proxy(gateway, port=8443, node_id="gateway~ingress"), plan(extensions, gateway), LOCAL
    )
    (listener,) = resources.listeners
    assert listener.name == "meshext.gateway.8443"
    assert all(
        ecds("ext", "istio-system") in [f.name for f in connection_manager(resources).http_filters]
        for _ in listener.filter_chains
    )


def test_an_app_behind_a_host_name_is_resolved_by_dns() -> None:
    resources = proxy_resources(proxy(app=HostPort("app.internal", 8080)), plan([]), LOCAL)
    (app,) = resources.clusters
    assert app.type == app.STRICT_DNS


def test_changing_one_extension_config_changes_only_its_ecds_resource() -> None:
    before = generate([planned("a", config="1"), planned("b", config="x")]).serialized()
    after = generate([planned("a", config="2"), planned("b", config="x")]).serialized()
    assert after[LISTENER_TYPE_URL] == before[LISTENER_TYPE_URL]
    assert after[CLUSTER_TYPE_URL] == before[CLUSTER_TYPE_URL]
    changed = {
        name
        for name, data in after[EXTENSION_CONFIG_TYPE_URL].items()
        if before[EXTENSION_CONFIG_TYPE_URL][name] != data
    }
    assert changed == {ecds("a")}


def test_a_workload_without_extensions_still_gets_its_listener_and_app() -> None:
    resources = generate([])
    assert len(resources.listeners) == 1
    assert [c.name for c in resources.clusters] == [names.APP_CLUSTER]
    assert resources.extension_configs == {}


def shapes(
    extensions: list[PlannedExtension], delivery: ModuleDelivery = LOCAL
) -> list[ListenerShape]:
    info = proxy()
    stand_in = delivery.stands_in(delivery.mode_for(info)) and bool(extensions)
    made = plan(extensions)
    return [listener_shape(spec, made, None, stand_in) for spec in listener_specs(info)]


def listener_bytes(extensions: list[PlannedExtension], delivery: ModuleDelivery = LOCAL) -> bytes:
    (listener,) = generate(extensions, delivery).listeners
    return bytes(listener.SerializeToString(deterministic=True))


def test_a_listener_is_made_from_its_shape_alone() -> None:
    extensions = mixed_extensions()
    (shape,) = shapes(extensions, REMOTE)
    made = make_listener(shape).SerializeToString(deterministic=True)
    assert made == listener_bytes(extensions, REMOTE)


def test_a_change_of_config_or_module_changes_no_listener_shape() -> None:
    before = [planned("a", config="1"), planned("b", module=fake_module("one"))]
    after = [planned("a", config="2"), planned("b", module=fake_module("two"))]
    for delivery in (LOCAL, REMOTE):
        assert shapes(before, delivery) == shapes(after, delivery)


def other_traffic(extension: PlannedExtension) -> PlannedExtension:
    """``extension`` run on client (outbound) traffic only: not on an inbound listener."""
    traffic = TrafficMatch((TrafficSelector(CLIENT),))
    return dataclasses.replace(
        extension,
        extension=dataclasses.replace(extension.extension, traffic=traffic),
    )


@pytest.mark.parametrize(
    ("what", "changed"),
    [
        ("another extension", [planned("a"), planned("b"), planned("c")]),
        ("one less extension", [planned("a")]),
        ("another phase", [planned("a", phase=Phase.PRE_AUTHN), planned("b")]),
        ("another order", [planned("a", priority=1), planned("b", priority=9)]),
        ("traffic not selecting the listener", [planned("a"), other_traffic(planned("b"))]),
        ("another failure policy, stood in", [planned("a"), planned("b", failure_policy=OPEN)]),
    ],
)
def test_what_a_listener_carries_changes_its_shape(
    what: str, changed: list[PlannedExtension]
) -> None:
    base = [planned("a"), planned("b")]
    assert shapes(changed, REMOTE) != shapes(base, REMOTE), what
    assert listener_bytes(changed, REMOTE) != listener_bytes(base, REMOTE), what


def test_a_failure_policy_reaches_the_listener_only_through_a_stand_in() -> None:
    base = [planned("a"), planned("b")]
    changed = [planned("a"), planned("b", failure_policy=OPEN)]
    assert shapes(changed, LOCAL) == shapes(base, LOCAL)
    assert listener_bytes(changed, LOCAL) == listener_bytes(base, LOCAL)
