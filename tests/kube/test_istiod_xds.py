"""Rendered extensions travel through a real istiod to the proxies they are meant for.

The controller renders ServiceMeshExtensions into WasmPlugins and EnvoyFilters on
the test kube-apiserver; one istiod (``pilot-discovery``, built from the pinned
istio.io/istio module) watches that apiserver for the whole module, and
:func:`tests.kube.istio_proxy.fetch_proxy_config` asks it for a workload's
listeners and extension configs over plaintext ADS, as the workload's istio-proxy
would. The assertions are about what istiod emits: which HTTP filter chains carry
each wasm filter, in which order relative to Istio's own filters, and with which
name, root id, configuration and module reference.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from envoy.config.bootstrap.v3 import bootstrap_pb2

from meshext.api.phase import Phase
from meshext.images.config import RegistryConfig
from meshext.istio.render import IstioOptions
from meshext.kube.certs import self_signed
from tests.envoy.harness import ENVOY, EchoApp
from tests.images.registry import start_registry
from tests.istiod_harness import ROOT_NAMESPACE, Istiod
from tests.kube.istio_envoy import upstream_bootstrap
from tests.kube.istio_proxy import HttpChain, ProxyConfig, Workload, fetch_proxy_config
from tests.kube.support import (
    MESHEXT,
    MODULE_SERVER,
    WASM_PLUGINS,
    Cluster,
    Mesh,
    eventually,
    extension,
    running_controller,
    settings,
    unique,
    wasm_file,
)
from tests.kube_harness import KubeApiServer
from tests.network import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]

EXACT = {"meshext.io/placement": "exact"}
MX = "istio.metadata_exchange"
JWT = "envoy.filters.http.jwt_authn"
RBAC = "envoy.filters.http.rbac"
STATS = "istio.stats"
ROUTER = "envoy.filters.http.router"
INBOUND = "virtualInbound"
WEB = {"app": "web"}


@pytest.fixture(scope="module")
def istiod(kube_apiserver: KubeApiServer, istio_crds: Path) -> Iterator[Istiod]:
    """One istiod for the module, watching the session's apiserver."""
    if kube_apiserver.kubectl("get", "namespace", ROOT_NAMESPACE, check=False).returncode:
        kube_apiserver.kubectl("create", "namespace", ROOT_NAMESPACE)
    with Istiod(kube_apiserver) as running:
        yield running


def plugin_filter(namespace: str, name: str) -> str:
    """The HTTP filter (and ECDS resource) name istiod gives a WasmPlugin."""
    return f"extensions.istio.io/trafficextension/{namespace}.{name}~istio-translated-wasmplugin"


def exact_filter(namespace: str, name: str) -> str:
    return f"meshext.{namespace}.{name}"


def web_service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "selector": WEB,
            "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def allow_all(namespace: str) -> dict[str, Any]:
    """An AuthorizationPolicy, so that istiod adds its RBAC filter to the workload."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-all", "namespace": namespace},
        "spec": {"selector": {"matchLabels": WEB}, "action": "ALLOW", "rules": [{}]},
    }


def jwt_policy(namespace: str) -> dict[str, Any]:
    """A RequestAuthentication (inline JWKS, nothing fetched), so istiod adds jwt_authn."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    numbers = key.public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    jwks = {"keys": [{"kty": "RSA", "kid": "test", "e": b64(numbers.e), "n": b64(numbers.n)}]}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": WEB},
            "jwtRules": [{"issuer": "meshext-tests", "jwks": json.dumps(jwks)}],
        },
    }


def inbound_http_chains(config: ProxyConfig) -> list[HttpChain]:
    chains = [c for c in config.http_chains() if c.listener == INBOUND]
    assert chains, f"no inbound HTTP chain in {sorted(config.listeners)}"
    return chains


def service_chain(config: ProxyConfig) -> HttpChain:
    """The inbound HTTP chain istiod built for the Service's port 8080."""
    found = [c for c in inbound_http_chains(config) if "8080" in c.chain]
    assert found, [c.chain for c in inbound_http_chains(config)]
    return found[0]


async def proxy_having(
    istiod: Istiod,
    workload: Workload,
    wanted: AbstractSet[str],
    absent: AbstractSet[str] = frozenset(),
) -> ProxyConfig:
    """Poll istiod until the workload's inbound chains hold ``wanted`` and none of ``absent``."""

    async def probe() -> ProxyConfig | None:
        config = await fetch_proxy_config(istiod.grpc_address, workload)
        names = {f for c in config.http_chains() if c.listener == INBOUND for f in c.filters}
        return config if wanted <= names and not absent & names else None

    return await eventually(probe, f"istiod to send {sorted(wanted)} without {sorted(absent)}")


def assert_maistra_order(filters: tuple[str, ...], placed: dict[str, Phase]) -> None:
    """Each extension sits where Maistra's anchor table puts its phase.

    Maistra: PreAuthN before authentication (``jwt_authn``; this Istio has no
    separate HTTP authentication filter), PostAuthN after it; PostAuthN and
    PreAuthZ before RBAC, PostAuthZ after it; PreStats before stats, PostStats after
    it; all before the router; and the phases in their order.
    """
    at = {name: filters.index(name) for name in placed}
    anchors = {name: filters.index(name) for name in (JWT, RBAC, STATS, ROUTER)}
    for name, phase in placed.items():
        where = at[name]
        assert where < anchors[ROUTER], (name, filters)
        if phase is Phase.PRE_AUTHN:
            assert where < anchors[JWT], (name, filters)
        if phase in (Phase.POST_AUTHN, Phase.PRE_AUTHZ):
            assert anchors[JWT] < where < anchors[RBAC], (name, filters)
        if phase in (Phase.POST_AUTHZ, Phase.PRE_STATS):
            assert anchors[RBAC] < where < anchors[STATS], (name, filters)
        if phase is Phase.POST_STATS:
            assert anchors[STATS] < where, (name, filters)
    ranked = sorted(placed, key=lambda n: at[n])
    assert [placed[n].rank for n in ranked] == sorted(placed[n].rank for n in ranked), ranked


Placed = list[tuple[str, str, Phase, int]]
"""(SME namespace, name, phase, priority) of extensions selecting the web workload."""


def apply_web_workload(
    cluster: Cluster,
    namespace: str,
    placed: Placed,
    modules: Path,
    annotations: dict[str, str] | None = None,
) -> None:
    """The web Service with authentication and authorization policies, and ``placed``."""
    cluster.apply(web_service(namespace), allow_all(namespace), jwt_policy(namespace))
    cluster.apply(
        *(
            extension(
                name,
                ns,
                f"file:{wasm_file(modules, name)}",
                phase=phase.value,
                priority=priority,
                config={"extension": name},
                annotations=annotations,
                workloadSelector={"labels": WEB},
            )
            for ns, name, phase, priority in placed
        )
    )


async def test_every_phase_reaches_the_sidecar_inbound_chain_in_maistras_order(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, istiod: Istiod, tmp_path: Path
) -> None:
    namespace, root = mesh.members[0], mesh.control_plane
    modules = tmp_path / "modules"
    # Mesh-wide extensions come from the control plane.
    placed: Placed = [
        (root, "g-preauthn", Phase.PRE_AUTHN, 5),
        (namespace, "preauthn", Phase.PRE_AUTHN, 1),
        (namespace, "postauthn", Phase.POST_AUTHN, 9),
        (root, "g-preauthz", Phase.PRE_AUTHZ, 2),
        (namespace, "postauthz", Phase.POST_AUTHZ, 8),
        (namespace, "prestats", Phase.PRE_STATS, 3),
        (root, "g-poststats", Phase.POST_STATS, 0),
    ]
    apply_web_workload(cluster, namespace, placed, modules)
    cluster.apply(
        # Selects another workload: must not reach this one.
        extension(
            "elsewhere",
            namespace,
            f"file:{wasm_file(modules, 'elsewhere')}",
            workloadSelector={"labels": {"app": "other"}},
        ),
    )
    web = Workload("web-0", namespace, WEB)
    rendered = {
        name: plugin_filter(ROOT_NAMESPACE if ns == root else ns, name) for ns, name, _, _ in placed
    }
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        config = await proxy_having(istiod, web, set(rendered.values()))
    chain = service_chain(config)
    assert plugin_filter(namespace, "elsewhere") not in chain.filters
    phases = {rendered[name]: phase for _, name, phase, _ in placed}
    # Istio's slots: PostAuthN and PreAuthZ share AUTHZ, PostAuthZ and PreStats share
    # STATS (ordered by priority only, as the priorities above keep Maistra's order),
    # and PostStats runs before Istio's stats filter instead of after it.
    istio_phases = dict(phases)
    del istio_phases[rendered["g-poststats"]]
    assert_maistra_order(chain.filters, istio_phases)
    poststats = chain.filters.index(rendered["g-poststats"])
    assert chain.filters.index(rendered["prestats"]) < poststats < chain.filters.index(STATS)
    # Within AUTHN: priority descending across both scopes.
    assert chain.filters.index(rendered["g-preauthn"]) < chain.filters.index(rendered["preauthn"])
    assert chain.filters.index(MX) < chain.filters.index(rendered["g-preauthn"])
    for ns, name, _, _ in placed:
        sme = cluster.get("sme", name, ns)
        plugin = cluster.get(WASM_PLUGINS, name, ROOT_NAMESPACE if ns == root else ns)
        assert sme is not None
        assert plugin is not None
        sha = sme["status"]["deployment"]["sha256"]
        wasm = config.wasm(rendered[name])
        assert json.loads(wasm.configuration) == {"extension": name}
        assert wasm.root_id == plugin["spec"].get("pluginName", "")
        assert wasm.url == f"{MODULE_SERVER}/modules/sha256/{sha}"
        assert wasm.cluster == "_", "istiod leaves the fetch to its agent"
        assert wasm.sha256 == sha
        assert wasm.failure_policy == "FAIL_CLOSED"


async def test_exact_placement_puts_every_phase_where_maistra_did(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, istiod: Istiod, tmp_path: Path
) -> None:
    namespace, root = mesh.members[0], mesh.control_plane
    modules = tmp_path / "modules"
    placed: Placed = [
        (namespace, "x-preauthn", Phase.PRE_AUTHN, 1),
        (root, "xg-preauthn", Phase.PRE_AUTHN, 7),
        (namespace, "x-postauthn", Phase.POST_AUTHN, 0),
        (root, "xg-preauthz", Phase.PRE_AUTHZ, 0),
        (namespace, "x-postauthz", Phase.POST_AUTHZ, 0),
        (namespace, "x-prestats", Phase.PRE_STATS, 0),
        (namespace, "x-poststats", Phase.POST_STATS, 2),
        (root, "xg-poststats", Phase.POST_STATS, 1),
    ]
    apply_web_workload(cluster, namespace, placed, modules, annotations=EXACT)
    web = Workload("web-0", namespace, WEB)
    rendered = {name: exact_filter(ns, name) for ns, name, _, _ in placed}
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        config = await proxy_having(istiod, web, set(rendered.values()))
    chain = service_chain(config)
    assert_maistra_order(chain.filters, {rendered[n]: p for _, n, p, _ in placed})
    at = {name: chain.filters.index(rendered[name]) for _, name, _, _ in placed}
    # Priority descending within a phase, across both scopes.
    assert at["xg-preauthn"] < at["x-preauthn"]
    assert at["x-poststats"] < at["xg-poststats"]
    for ns, name, _, _ in placed:
        sme = cluster.get("sme", name, ns)
        assert sme is not None
        sha = sme["status"]["deployment"]["sha256"]
        wasm = config.inline_wasm(rendered[name])
        assert wasm.name == name
        assert json.loads(wasm.configuration) == {"extension": name}
        assert wasm.url == f"{MODULE_SERVER}/modules/sha256/{sha}"
        assert wasm.sha256 == sha
        assert wasm.cluster == "outbound|8080||meshext.meshext-system.svc.cluster.local"
        assert not wasm.fail_open
    # Every inbound HTTP chain (the Service's port and the passthrough ones) has them.
    for other in inbound_http_chains(config):
        assert set(rendered.values()) <= set(other.filters), other


def gateway(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "ingress", "namespace": namespace},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
            ],
        },
    }


async def test_extensions_stay_off_outbound_traffic_and_gateways_need_exact_placement(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, istiod: Istiod, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    modules = tmp_path / "modules"
    cluster.apply(web_service(namespace), gateway(namespace))
    cluster.apply(
        extension("plain", namespace, f"file:{wasm_file(modules, 'plain')}", phase="PreAuthN"),
        extension(
            "placed",
            namespace,
            f"file:{wasm_file(modules, 'placed')}",
            phase="PreAuthN",
            annotations=EXACT,
        ),
    )
    # Not rendered by meshext: a WasmPlugin without ``match``, for comparison.
    unmatched = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "unmatched", "namespace": namespace},
        "spec": {"url": f"{MODULE_SERVER}/modules/sha256/{'0' * 64}", "phase": "AUTHN"},
    }
    cluster.apply(unmatched)
    plain, placed = plugin_filter(namespace, "plain"), exact_filter(namespace, "placed")
    both_ways = plugin_filter(namespace, "unmatched")
    web = Workload("web-0", namespace, WEB)
    ingress = Workload(
        "ingress-0", namespace, {"istio": "ingressgateway"}, ip="10.1.0.20", kind="router"
    )
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        sidecar = await proxy_having(istiod, web, {plain, placed, both_ways})

        async def gateway_config() -> ProxyConfig | None:
            config = await fetch_proxy_config(istiod.grpc_address, ingress)
            names = {f for c in config.http_chains() for f in c.filters}
            return config if {placed, both_ways} <= names else None

        edge: ProxyConfig = await eventually(gateway_config, "the gateway's HTTP listener")
    cluster.delete(WASM_PLUGINS, "unmatched", namespace)
    outbound = [c for c in sidecar.http_chains() if c.listener != INBOUND]
    assert outbound, "istiod built no outbound HTTP chain for the Service"
    for chain in outbound:
        assert plain not in chain.filters, chain
        assert placed not in chain.filters, chain
        # Without ``match`` a WasmPlugin also runs on what the workload sends out.
        assert both_ways in chain.filters, chain
    for chain in inbound_http_chains(sidecar):
        assert {plain, placed, both_ways} <= set(chain.filters), chain
    gateway_chains = edge.http_chains()
    assert gateway_chains, "istiod built no HTTP chain for the Gateway"
    for chain in gateway_chains:
        assert placed in chain.filters, chain
        # Istio counts gateway listeners as CLIENT traffic: a WasmPlugin matching
        # SERVER (sidecar inbound) does not reach gateways, one without match does.
        assert plain not in chain.filters, chain
        assert both_ways in chain.filters, chain


async def test_deleted_and_failing_extensions_disappear_from_istiods_output(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, istiod: Istiod, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    modules = tmp_path / "modules"
    cluster.apply(web_service(namespace))
    cluster.apply(
        extension("going", namespace, f"file:{wasm_file(modules, 'going')}"),
        extension("breaking", namespace, f"file:{wasm_file(modules, 'breaking')}"),
        extension(
            "going-exact", namespace, f"file:{wasm_file(modules, 'going-exact')}", annotations=EXACT
        ),
        extension("staying", namespace, f"file:{wasm_file(modules, 'staying')}"),
    )
    web = Workload("web-0", namespace, WEB)
    going, breaking, staying = (
        plugin_filter(namespace, n) for n in ("going", "breaking", "staying")
    )
    going_exact = exact_filter(namespace, "going-exact")
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        await proxy_having(istiod, web, {going, breaking, going_exact, staying})
        cluster.delete("sme", "going", namespace)
        cluster.delete("sme", "going-exact", namespace)
        cluster.apply(extension("breaking", namespace, f"file:{modules / 'missing.wasm'}"))
        config = await proxy_having(istiod, web, {staying}, absent={going, breaking, going_exact})
    assert set(config.extensions) == {staying}


async def test_an_image_reference_reaches_the_proxy_as_istio_emits_it_for_its_agent(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, istiod: Istiod, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    registry = start_registry(tmp_path / "registry")
    (tmp_path / "no-credentials.json").write_text("{}")
    try:
        image = f"{registry.host}/extensions/header:v1"
        pushed = subprocess.run(
            [
                str(MESHEXT),
                "image",
                "build",
                f"--wasm={wasm_file(tmp_path / 'modules', 'oci')}",
                "--name=header",
                f"--tag={image}",
                f"--insecure-registry={registry.host}",
                f"--registry-config={tmp_path / 'no-credentials.json'}",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        digest = pushed.stdout.split()[0]
        cluster.apply(web_service(namespace))
        cluster.apply(
            extension("pulled", namespace, image, phase="PreAuthN", config={"k": "v"}),
        )
        oci = settings(istio=IstioOptions(module_source="oci"))
        insecure = RegistryConfig(insecure_registries=frozenset({"127.0.0.1"}))
        resource = plugin_filter(namespace, "pulled")
        web = Workload("web-0", namespace, WEB)
        async with running_controller(kube_apiserver, tmp_path / "cache", oci, registry=insecure):
            config = await proxy_having(istiod, web, {resource})
    finally:
        registry.stop()
    wasm = config.wasm(resource)
    assert wasm.url == f"oci://{image}"
    assert wasm.sha256 == digest.removeprefix("sha256:")
    assert json.loads(wasm.configuration) == {"k": "v"}
    assert wasm.failure_policy == "FAIL_CLOSED"


async def test_upstream_envoy_refuses_istiods_listener_for_istio_proxys_own_filters(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, istiod: Istiod, tmp_path: Path
) -> None:
    """What stands between istiod's output and an upstream Envoy (docs/kubernetes.md)."""
    namespace = mesh.members[0]
    cluster.apply(web_service(namespace))
    cluster.apply(extension("edge", namespace, f"file:{wasm_file(tmp_path / 'modules', 'edge')}"))
    web = Workload("web-0", namespace, WEB)
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        config = await proxy_having(istiod, web, {plugin_filter(namespace, "edge")})
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.CopyFrom(web.node())
    bootstrap.static_resources.listeners.append(config.listeners[INBOUND])
    path = tmp_path / "istiod-inbound.pb"
    path.write_bytes(bootstrap.SerializeToString())
    checked = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode != 0
    refused = checked.stdout + checked.stderr
    assert "Didn't find a registered implementation for 'istio.metadata_exchange'" in refused


@contextmanager
def controller_process(api: KubeApiServer, workdir: Path) -> Iterator[str]:
    """``meshext kube controller --istio`` serving modules on loopback; yields its URL."""
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    _, cert, key = self_signed(["127.0.0.1"]).write(workdir / "tls")
    setpriv = shutil.which("setpriv")
    command = [
        *([setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []),
        str(MESHEXT),
        "kube",
        "controller",
        f"--kubeconfig={api.kubeconfig_path}",
        "--namespace=default",
        "--identity=istiod-tests",
        f"--lease-name={unique('lease')}",
        "--istio",
        f"--module-url={admin}",
        f"--admin-address=127.0.0.1:{admin_port}",
        f"--webhook-address=127.0.0.1:{free_port()}",
        f"--webhook-cert={cert}",
        f"--webhook-key={key}",
        f"--cache={workdir / 'cache'}",
        f"--local-images={workdir.parent}",
    ]
    with (workdir / "controller.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield admin
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def test_one_request_runs_through_istiods_inbound_chain_in_upstream_envoy(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, istiod: Istiod, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "istiod-relayed-marker")
    cluster.apply(web_service(namespace))
    cluster.apply(extension("relayed", namespace, f"file:{module}", phase="PreAuthN"))
    web = Workload("web-0", namespace, WEB)
    resource = plugin_filter(namespace, "relayed")
    with controller_process(kube_apiserver, tmp_path / "controller") as module_server:
        config = await proxy_having(istiod, web, {resource})
        plugin = cluster.get(WASM_PLUGINS, "relayed", namespace)
        assert plugin is not None
        # What istio-proxy's agent does: fetch the module istiod names, check its sha256.
        wasm = config.wasm(resource)
        assert wasm.url.startswith(f"{module_server}/modules/sha256/")
        async with httpx.AsyncClient(timeout=30) as client:
            fetched = (await client.get(wasm.url)).raise_for_status().content
    assert hashlib.sha256(fetched).hexdigest() == wasm.sha256
    local = tmp_path / "agent" / f"{wasm.sha256}.wasm"
    local.parent.mkdir()
    local.write_bytes(fetched)
    # The module logs its marker from its request-headers callback.
    # Envoy names the filter, then the root id when there is one.
    root_id = plugin["spec"].get("pluginName", "")
    logged = (
        f"wasm log {namespace}.relayed~istio-translated-wasmplugin"
        f"{' ' + root_id if root_id else ''}: istiod-relayed-marker"
    )
    async with EchoApp() as app:
        listen = free_port()
        path = tmp_path / "istiod-inbound.pb"
        path.write_bytes(
            upstream_bootstrap(
                config,
                web,
                service_port=8080,
                listen_port=listen,
                app_port=app.port,
                modules={wasm.sha256: local},
            )
        )
        log_path = tmp_path / "envoy.log"
        with log_path.open("wb") as log:
            envoy = subprocess.Popen(
                [
                    str(ENVOY),
                    "-c",
                    str(path),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                    "--component-log-level",
                    "wasm:info",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            async def answer() -> httpx.Response | None:
                assert envoy.poll() is None, log_path.read_text()
                return await _get_or_none(client, f"http://127.0.0.1:{listen}/through-istiod")

            async with httpx.AsyncClient(timeout=30) as client:
                response: httpx.Response = await eventually(
                    answer, "Envoy to answer on istiod's inbound chain"
                )
            assert response.status_code == 200
            assert response.json()["path"] == "/through-istiod"
            await eventually(
                lambda: logged in log_path.read_text() or None,
                "the wasm filter's log line",
            )
        finally:
            envoy.terminate()
            envoy.wait(timeout=30)


async def _get_or_none(client: httpx.AsyncClient, url: str) -> httpx.Response | None:
    try:
        return await client.get(url)
    except httpx.TransportError:
        return None
