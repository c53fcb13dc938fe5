"""TLS in the generated configuration: the bootstrap's xDS cluster and the module
server's cluster (pure generation; real Envoy runs them in tests/server and tests/xds)."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshext.envoy import names
from meshext.envoy.bootstrap import AdsServer, XdsTls, sidecar_bootstrap
from meshext.envoy.node import DeliveryMode, HostPort
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.tls import CredentialFiles
from meshext.envoy.wasm import ModuleDelivery, ModuleServerTls
from tests.envoy.support import plan, planned, proxy

SERVER = "spiffe://cluster.local/ns/meshext-system/sa/meshext"


def bootstrap(xds: AdsServer) -> dict[str, object]:
    return sidecar_bootstrap(
        name="httpbin",
        namespace="bookinfo",
        labels={},
        listen=18000,
        app="127.0.0.1:8000",
        xds=xds,
        admin_port=15000,
    )


def xds_cluster(document: dict[str, object]) -> dict[str, object]:
    static = document["static_resources"]
    assert isinstance(static, dict)
    cluster: dict[str, object] = static["clusters"][0]
    return cluster


def test_the_xds_cluster_uses_the_credentials_folder_through_watched_sds() -> None:
    tls = XdsTls(CredentialFiles("/creds"), SERVER)
    socket = xds_cluster(bootstrap(AdsServer(HostPort("meshext.local", 15010), tls=tls)))[
        "transport_socket"
    ]
    assert isinstance(socket, dict)
    context = socket["typed_config"]
    assert context["sni"] == "meshext.local"
    common = context["common_tls_context"]
    [certificate] = common["tls_certificate_sds_secret_configs"]
    assert certificate["sds_config"]["path_config_source"] == {
        "path": "/creds/workload.sds.json",
        "watched_directory": {"path": "/creds"},
    }
    validation = common["combined_validation_context"]
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": SERVER}}
    ]
    sds = validation["validation_context_sds_secret_config"]["sds_config"]
    assert sds["path_config_source"]["path"] == "/creds/trust-bundle.sds.json"


def test_an_ip_address_is_not_sent_as_sni() -> None:
    tls = XdsTls(CredentialFiles("/creds"), SERVER)
    socket = xds_cluster(bootstrap(AdsServer(HostPort("127.0.0.1", 15010), tls=tls)))[
        "transport_socket"
    ]
    assert isinstance(socket, dict)
    assert "sni" not in socket["typed_config"]


def test_a_plaintext_bootstrap_has_no_transport_socket() -> None:
    assert "transport_socket" not in xds_cluster(bootstrap(AdsServer(HostPort("127.0.0.1", 1))))


def test_the_module_cluster_verifies_the_server_with_the_bundle_and_its_identity() -> None:
    delivery = ModuleDelivery(
        mode=DeliveryMode.REMOTE,
        server=HostPort("10.0.0.5", 15080),
        tls=ModuleServerTls("-----BEGIN CERTIFICATE-----\n", SERVER),
    )
    assert delivery.base_url == "https://10.0.0.5:15080"
    resources = proxy_resources(proxy(), plan([planned("tag")]), delivery)
    [modules] = [c for c in resources.clusters if c.name == names.MODULES_CLUSTER]
    context = tls_pb2.UpstreamTlsContext()
    modules.transport_socket.typed_config.Unpack(context)
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.inline_string == "-----BEGIN CERTIFICATE-----\n"
    assert [m.matcher.exact for m in validation.match_typed_subject_alt_names] == [SERVER]
