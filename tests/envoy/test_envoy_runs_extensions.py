"""The generated resources in a real Envoy (1.40, V8), fed from files, in front of an echo app."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from meshext.api.phase import Phase
from meshext.envoy.files import ConfigDirectory
from meshext.envoy.node import DeliveryMode, HostPort, ProxyInfo
from meshext.envoy.resources import EnvoyResources
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh.extension import FailurePolicy
from meshext.mesh.planner import PlannedExtension
from meshext.mesh.resolution import ResolvedModule
from meshext.mesh.workload import ProxyKind
from meshext.server.modules import module_app, start_module_server
from tests.envoy.harness import EchoApp, EnvoyProxy, headers_named
from tests.envoy.support import (
    example_module,
    module_from_bytes,
    plan,
    planned,
    proxy,
    workload,
)
from tests.network import free_port

pytestmark = pytest.mark.e2e

LOCAL = ModuleDelivery(mode=DeliveryMode.LOCAL)


def sidecar(app: EchoApp) -> ProxyInfo:
    port = free_port()
    return proxy(
        port=port, app=HostPort("127.0.0.1", app.port), node_id=f"sidecar~httpbin.apps~{port}"
    )


def resources_for(
    info: ProxyInfo, extensions: list[PlannedExtension], delivery: ModuleDelivery, workdir: Path
) -> EnvoyResources:
    return proxy_resources(
        info, plan(extensions), delivery, config_source=ConfigDirectory(str(workdir / "xds"))
    )


def header_append(
    name: str, value: str, *, phase: Phase = Phase.POST_AUTHZ, priority: int = 0
) -> PlannedExtension:
    return planned(
        name, phase=phase, priority=priority, config=value, module=example_module("header-append")
    )


async def test_header_append_adds_its_header_to_requests_reaching_the_app(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    info = sidecar(app)
    resources = resources_for(info, [header_append("header-append", "test")], LOCAL, tmp_path)
    async with EnvoyProxy(tmp_path, info, resources) as envoy:
        echo = await envoy.echo("/get")
    assert headers_named(echo, "x-header-append") == ["test"]
    assert echo["path"] == "/get"


async def test_extensions_run_in_phase_then_priority_order_among_the_anchors(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    # Each instance appends its own value; the app sees them in execution order.
    extensions = [
        header_append("z-post-stats", "8", phase=Phase.POST_STATS),
        header_append("a-pre-stats", "7", phase=Phase.PRE_STATS),
        header_append("low-post-authz", "6", phase=Phase.POST_AUTHZ, priority=-5),
        header_append("high-post-authz", "5", phase=Phase.POST_AUTHZ, priority=100),
        header_append("pre-authz", "4", phase=Phase.PRE_AUTHZ),
        header_append("post-authn", "3", phase=Phase.POST_AUTHN),
        header_append("b-pre-authn", "2", phase=Phase.PRE_AUTHN, priority=1),
        header_append("a-pre-authn", "1", phase=Phase.PRE_AUTHN, priority=1),
    ]
    info = sidecar(app)
    async with EnvoyProxy(
        tmp_path, info, resources_for(info, extensions, LOCAL, tmp_path)
    ) as envoy:
        echo = await envoy.echo()
    assert headers_named(echo, "x-header-append") == ["1", "2", "3", "4", "5", "6", "7", "8"]


async def test_anchor_filters_let_requests_through_untouched(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    info = sidecar(app)
    resources = resources_for(info, [header_append("marker", "seen")], LOCAL, tmp_path)
    async with EnvoyProxy(tmp_path, info, resources) as envoy:
        # A bearer token that is no JWT: jwt_authn without providers must neither reject
        # nor strip it, and rbac without rules must allow the request.
        echo = await envoy.echo("/anything", {"authorization": "Bearer not-a-jwt"})
        stats = await envoy.stats()
    assert headers_named(echo, "authorization") == ["Bearer not-a-jwt"]
    assert headers_named(echo, "x-header-append") == ["seen"]
    prefix = f"http.inbound_{info.inbound_port}"
    assert stats[f"{prefix}.jwt_authn.allowed"] >= 1
    assert stats[f"{prefix}.jwt_authn.denied"] == 0
    assert stats[f"{prefix}.rbac.denied"] == 0


async def test_deny_unless_header_answers_403_without_the_header_and_passes_with_it(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    deny = planned(
        "require-token",
        phase=Phase.PRE_AUTHZ,
        config='{"name": "x-token", "value": "s3cret"}',
        module=example_module("deny-unless-header"),
    )
    info = sidecar(app)
    async with EnvoyProxy(tmp_path, info, resources_for(info, [deny], LOCAL, tmp_path)) as envoy:
        missing = await envoy.request("/")
        wrong = await envoy.request("/", {"x-token": "guess"})
        echo = await envoy.echo("/", {"x-token": "s3cret"})
    assert missing.status_code == 403
    assert missing.text == "forbidden: the request has no x-token header\n"
    assert missing.headers["content-type"] == "text/plain"
    assert wrong.status_code == 403
    assert "s3cret" not in wrong.text
    assert headers_named(echo, "x-token") == ["s3cret"]
    assert app.requests == 1


async def test_request_counter_counts_requests_in_an_envoy_metric(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    counter = planned(
        "count-requests",
        phase=Phase.PRE_STATS,
        config="httpbin_requests_total",
        module=example_module("request-counter"),
    )
    info = sidecar(app)
    async with EnvoyProxy(tmp_path, info, resources_for(info, [counter], LOCAL, tmp_path)) as envoy:
        for _ in range(7):
            await envoy.echo()
        stats = await envoy.stats()
    assert stats["wasmcustom.httpbin_requests_total"] == 7


async def test_two_extensions_with_one_module_share_a_vm_and_each_see_their_own_config(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    one = [header_append("first", "config-of-first", priority=2)]
    two = [*one, header_append("second", '{"value": "config-of-second"}', priority=1)]
    info_one, info_two = sidecar(app), sidecar(app)
    async with EnvoyProxy(
        tmp_path / "one", info_one, resources_for(info_one, one, LOCAL, tmp_path / "one")
    ) as envoy:
        vms_for_one_extension = (await envoy.stats())["wasm.envoy.wasm.runtime.v8.active"]
    async with EnvoyProxy(
        tmp_path / "two", info_two, resources_for(info_two, two, LOCAL, tmp_path / "two")
    ) as envoy:
        echo = await envoy.echo()
        vms_for_two_extensions = (await envoy.stats())["wasm.envoy.wasm.runtime.v8.active"]
    assert headers_named(echo, "x-header-append") == ["config-of-first", "config-of-second"]
    assert vms_for_two_extensions == vms_for_one_extension


async def test_changing_an_extension_config_applies_in_place_without_draining_the_listener(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    info = sidecar(app)
    other = header_append("other", "unchanged", priority=1)
    before = resources_for(info, [other, header_append("tagger", "v1")], LOCAL, tmp_path)
    after = resources_for(info, [other, header_append("tagger", "v2")], LOCAL, tmp_path)
    assert after.listeners == before.listeners
    ecds = "extension_config_discovery.http_filter.meshext.servicemeshextension.apps"
    async with EnvoyProxy(tmp_path, info, before) as envoy:
        assert headers_named(await envoy.echo(), "x-header-append") == ["unchanged", "v1"]
        stats_before = await envoy.stats()
        envoy.write(after)
        await envoy.wait_for_stat(
            f"{ecds}.tagger.config_reload",
            lambda v: v > stats_before[f"{ecds}.tagger.config_reload"],
        )
        echo = await envoy.echo()
        stats_after = await envoy.stats()
    assert headers_named(echo, "x-header-append") == ["unchanged", "v2"]
    for stat in (
        "listener_manager.listener_modified",
        "listener_manager.listener_in_place_updated",
        "listener_manager.listener_added",
        "listener_manager.total_listeners_draining",
        f"{ecds}.other.config_reload",
    ):
        assert stats_after[stat] == stats_before[stat], stat
    assert stats_after["listener_manager.total_listeners_draining"] == 0


async def test_adding_an_extension_updates_the_listener_in_place(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    # The contrast to the test above: a chain change is a listener change.
    info = sidecar(app)
    before = resources_for(info, [header_append("first", "1", priority=1)], LOCAL, tmp_path)
    after = resources_for(
        info,
        [header_append("first", "1", priority=1), header_append("second", "2")],
        LOCAL,
        tmp_path,
    )
    async with EnvoyProxy(tmp_path, info, before) as envoy:
        stats_before = await envoy.stats()
        envoy.write(after)
        await envoy.wait_for_stat(
            "listener_manager.listener_in_place_updated",
            lambda v: v > stats_before["listener_manager.listener_in_place_updated"],
        )
        echo = await envoy.echo()
    assert headers_named(echo, "x-header-append") == ["1", "2"]


class FileStore:
    """A module store over a dict, counting what it was asked for."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.asked: list[str] = []

    def path_for(self, sha256: str) -> Path | None:
        self.asked.append(sha256)
        return self.files.get(sha256)


async def test_remote_delivery_fetches_the_module_from_the_module_server_by_sha256(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    module = example_module("header-append")
    store = FileStore({module.sha256: Path(module.path)})
    server = await start_module_server(module_app(store))
    try:
        assert server.port
        # Files feed this proxy: no control loop re-offers a module Envoy rejects until
        # fetched, so it is accepted before the fetch (Envoy's default).
        delivery = ModuleDelivery(
            mode=DeliveryMode.REMOTE,
            server=HostPort("127.0.0.1", server.port),
            nack_on_code_cache_miss=False,
        )
        info = sidecar(app)
        resources = resources_for(info, [header_append("remote", "fetched")], delivery, tmp_path)
        async with EnvoyProxy(tmp_path, info, resources) as envoy:
            echo = await envoy.echo()
            stats = await envoy.stats()
    finally:
        await server.stop()
    assert headers_named(echo, "x-header-append") == ["fetched"]
    assert module.sha256 in store.asked
    assert stats["wasm.remote_load_fetch_successes"] >= 1


@pytest.mark.parametrize(
    "outcome",
    [(FailurePolicy.FAIL_CLOSED, 503, False), (FailurePolicy.FAIL_OPEN, 200, True)],
    ids=["fail-closed", "fail-open"],
)
async def test_a_remote_module_whose_bytes_do_not_match_its_sha256_is_never_run(
    examples: Path,
    app: EchoApp,
    tmp_path: Path,
    outcome: tuple[FailurePolicy, int, bool],
) -> None:
    policy, status, reaches_app = outcome
    good = example_module("header-append")
    claimed = hashlib.sha256(b"some other module").hexdigest()
    impostor = ResolvedModule(
        sha256=claimed,
        path=good.path,
        size=good.size,
        image_digest=None,
        image_format=good.image_format,
    )
    # The server hands out header-append's bytes under another module's sha256.
    store = FileStore({claimed: Path(good.path)})
    server = await start_module_server(module_app(store))
    try:
        delivery = ModuleDelivery(
            mode=DeliveryMode.REMOTE,
            server=HostPort("127.0.0.1", server.port),
            fetch_retries=0,
            nack_on_code_cache_miss=False,
        )
        info = sidecar(app)
        bad = planned("impostor", config="never", module=impostor, failure_policy=policy)
        resources = resources_for(info, [bad], delivery, tmp_path)
        async with EnvoyProxy(tmp_path, info, resources) as envoy:
            await envoy.wait_for_stat("wasm.remote_load_fetch_failures", lambda v: v >= 1)
            response = await envoy.request()
            stats = await envoy.stats()
    finally:
        await server.stop()
    assert claimed in store.asked
    assert stats.get("wasm.remote_load_fetch_successes", 0) == 0
    # The plugin failed to load: fail closed answers 503, fail open skips the filter.
    assert response.status_code == status
    assert app.requests == (1 if reaches_app else 0)
    if reaches_app:
        assert "x-header-append" not in response.text


async def test_a_module_that_fails_to_configure_is_rejected_and_other_extensions_keep_serving(
    examples: Path, app: EchoApp, tmp_path: Path, failing_module: Path
) -> None:
    info = sidecar(app)
    steady = header_append("steady", "a1", priority=1)
    flaky = header_append("flaky", "b1")
    broken = planned("flaky", config="b2", module=module_from_bytes(failing_module))
    prefix = "extension_config_discovery.http_filter.meshext.servicemeshextension.apps"
    async with EnvoyProxy(
        tmp_path, info, resources_for(info, [steady, flaky], LOCAL, tmp_path)
    ) as envoy:
        assert headers_named(await envoy.echo(), "x-header-append") == ["a1", "b1"]
        envoy.write(resources_for(info, [steady, broken], LOCAL, tmp_path))
        await envoy.wait_for_stat(f"{prefix}.flaky.config_fail", lambda v: v >= 1)
        # The rejected update leaves the last good config of "flaky" in place ...
        assert headers_named(await envoy.echo(), "x-header-append") == ["a1", "b1"]
        # ... and the other extension still takes updates.
        envoy.write(
            resources_for(
                info, [header_append("steady", "a2", priority=1), broken], LOCAL, tmp_path
            )
        )
        await envoy.wait_for_stat(f"{prefix}.steady.config_reload", lambda v: v >= 2)
        echo = await envoy.echo()
    assert headers_named(echo, "x-header-append") == ["a2", "b1"]


async def test_a_module_rejected_on_first_delivery_leaves_its_listener_failing_closed(
    examples: Path, app: EchoApp, tmp_path: Path, failing_module: Path
) -> None:
    info = sidecar(app)
    broken = planned("broken", config="x", module=module_from_bytes(failing_module))
    good = header_append("good", "g")
    prefix = "extension_config_discovery.http_filter.meshext.servicemeshextension.apps"
    async with EnvoyProxy(
        tmp_path, info, resources_for(info, [broken, good], LOCAL, tmp_path)
    ) as envoy:
        await envoy.wait_for_stat(f"{prefix}.broken.update_rejected", lambda v: v >= 1)
        response = await envoy.request()
        stats = await envoy.stats()
    # The other extension's config was accepted; the listener went live, but the filter
    # that never got a config answers 500 rather than letting requests bypass it.
    assert stats[f"{prefix}.good.update_success"] == 1
    assert response.status_code == 500
    assert app.requests == 0


async def test_a_gateway_runs_the_extensions_on_its_listener(
    examples: Path, app: EchoApp, tmp_path: Path
) -> None:
    gateway = workload("istio-system", name="ingress", kind=ProxyKind.GATEWAY)
    port = free_port()
    info = proxy(
        gateway, port=port, app=HostPort("127.0.0.1", app.port), node_id=f"gateway~ingress~{port}"
    )
    extension = planned(
        "gateway-tag",
        namespace="istio-system",
        config='{"name": "x-gateway", "value": "ingress"}',
        module=example_module("header-append"),
    )
    resources = proxy_resources(
        info,
        plan([extension], gateway),
        LOCAL,
        config_source=ConfigDirectory(str(tmp_path / "xds")),
    )
    async with EnvoyProxy(tmp_path, info, resources) as envoy:
        echo = await envoy.echo()
        stats = await envoy.stats()
    assert headers_named(echo, "x-gateway") == ["ingress"]
    assert f"http.gateway_{port}.downstream_rq_completed" in stats
