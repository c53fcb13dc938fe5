"""The bootstrap a proxy starts from: its identity, the admin port and where xDS comes from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from meshext.envoy.bootstrap import AdsServer, BootstrapError, gateway_bootstrap, sidecar_bootstrap
from meshext.envoy.files import ConfigDirectory, config_files
from meshext.envoy.node import DeliveryMode, HostPort, proxy_from_node
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh.workload import ProxyKind
from tests.envoy.harness import ENVOY, write_atomically
from tests.envoy.support import plan, proxy

ADS = AdsServer(HostPort("127.0.0.1", 18000))
# Parsing a bootstrap resolves the Any types it holds: their modules must be loaded.
HTTP_PROTOCOL_OPTIONS = http_protocol_options_pb2.HttpProtocolOptions


def bootstrap(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "name": "httpbin",
        "namespace": "apps",
        "labels": {"app": "httpbin"},
        "listen": 15006,
        "app": "127.0.0.1:8080",
        "xds": ADS,
        "admin_port": 15000,
    }
    arguments.update(overrides)
    return sidecar_bootstrap(**arguments)


def as_proto(config: dict[str, Any]) -> Any:
    return json_format.ParseDict(config, bootstrap_pb2.Bootstrap())


def test_a_sidecar_bootstrap_is_a_valid_envoy_bootstrap_naming_the_proxy() -> None:
    config = as_proto(bootstrap())
    info = proxy_from_node(config.node)
    assert config.node.id == "sidecar~httpbin.apps~15006"
    assert config.node.cluster == "httpbin.apps"
    assert info.workload.namespace == "apps"
    assert info.workload.labels == {"app": "httpbin"}
    assert info.workload.name == "httpbin"
    assert info.kind is ProxyKind.SIDECAR
    assert info.inbound_port == 15006
    assert info.app_address == "127.0.0.1:8080"
    assert config.admin.address.socket_address.address == "127.0.0.1"
    assert config.admin.address.socket_address.port_value == 15000


def test_listeners_and_clusters_come_over_one_ads_stream() -> None:
    config = as_proto(bootstrap())
    dynamic = config.dynamic_resources
    assert dynamic.ads_config.api_type == dynamic.ads_config.GRPC
    assert dynamic.ads_config.grpc_services[0].envoy_grpc.cluster_name == "meshext.xds"
    assert dynamic.lds_config.HasField("ads")
    assert dynamic.cds_config.HasField("ads")
    (xds,) = config.static_resources.clusters
    assert xds.name == "meshext.xds"
    address = xds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 18000)


def test_delta_xds_is_selectable() -> None:
    config = as_proto(bootstrap(xds=AdsServer(HostPort("127.0.0.1", 18000), delta=True)))
    assert (
        config.dynamic_resources.ads_config.api_type
        == config.dynamic_resources.ads_config.DELTA_GRPC
    )


def test_an_xds_server_behind_a_host_name_is_resolved_by_dns() -> None:
    config = as_proto(bootstrap(xds=AdsServer(HostPort("meshext.internal", 18000))))
    assert (
        config.static_resources.clusters[0].type == config.static_resources.clusters[0].STRICT_DNS
    )


def test_a_config_directory_makes_the_proxy_watch_files() -> None:
    config = as_proto(bootstrap(xds=ConfigDirectory("/run/xds")))
    dynamic = config.dynamic_resources
    assert dynamic.lds_config.path_config_source.path == "/run/xds/listeners.json"
    assert dynamic.cds_config.path_config_source.path == "/run/xds/clusters.json"
    assert not dynamic.HasField("ads_config")


def test_a_gateway_bootstrap_says_gateway_and_binds_the_address_given() -> None:
    config = as_proto(
        gateway_bootstrap(
            name="ingress",
            namespace="istio-system",
            labels={"istio": "ingressgateway"},
            listen="127.0.0.1:8443",
            app="backend.internal:80",
            xds=ADS,
            admin_port=15001,
            module_delivery=DeliveryMode.REMOTE,
        )
    )
    info = proxy_from_node(config.node)
    assert info.kind is ProxyKind.GATEWAY
    assert info.inbound_address == "127.0.0.1"
    assert info.inbound_port == 8443
    assert info.app == HostPort("backend.internal", 80)
    assert info.module_delivery is DeliveryMode.REMOTE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"listen": "not-a-port"}, "listen"),
        ({"listen": 0}, "listen"),
        ({"listen": "localhost:80"}, "listen"),
        ({"app": "8080"}, "app"),
        ({"admin_port": 70000}, "admin port"),
        ({"namespace": "Bad_Namespace"}, "NAMESPACE"),
        ({"name": ""}, "name"),
    ],
)
def test_an_invalid_argument_is_an_error_naming_it(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(BootstrapError, match=message):
        bootstrap(**overrides)


def test_a_bootstrap_is_json_serializable_and_node_metadata_is_plain() -> None:
    text = json.dumps(bootstrap())
    node = json_format.ParseDict(json.loads(text)["node"], base_pb2.Node())
    assert proxy_from_node(node).inbound_port == 15006


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["ads", "delta", "files"])
def test_envoy_accepts_the_bootstrap(tmp_path: Path, transport: str) -> None:
    transports: dict[str, AdsServer | ConfigDirectory] = {
        "ads": ADS,
        "delta": AdsServer(HostPort("127.0.0.1", 18000), delta=True),
        "files": ConfigDirectory(str(tmp_path / "xds")),
    }
    xds = transports[transport]
    if isinstance(xds, ConfigDirectory):
        resources = proxy_resources(proxy(), plan([]), ModuleDelivery())
        for file, text in config_files(resources, xds).items():
            write_atomically(Path(file), text)
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(xds=xds)))
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "--config-path", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
