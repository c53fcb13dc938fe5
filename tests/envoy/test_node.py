"""Reading a proxy's identity from the node metadata it sends."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from meshext.envoy.errors import NodeMetadataError
from meshext.envoy.node import DeliveryMode, HostPort, node_metadata, proxy_from_node
from meshext.mesh.workload import ProxyKind, Workload


def node(metadata: dict[str, Any], node_id: str = "sidecar~httpbin.apps~15006") -> Any:
    return json_format.ParseDict({"id": node_id, "metadata": metadata}, base_pb2.Node())


def valid_metadata(**overrides: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "NAMESPACE": "apps",
        "LABELS": {"app": "httpbin", "version": "v1"},
        "WORKLOAD_NAME": "httpbin",
        "PROXY_KIND": "sidecar",
        "INBOUND_PORT": "15006",
        "APP_ADDRESS": "127.0.0.1:8080",
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def test_a_sidecar_node_reads_back_as_its_workload_port_and_app() -> None:
    info = proxy_from_node(node(valid_metadata()))
    assert info.node_id == "sidecar~httpbin.apps~15006"
    assert info.workload == Workload(
        "apps", {"app": "httpbin", "version": "v1"}, ProxyKind.SIDECAR, "httpbin"
    )
    assert info.inbound_port == 15006
    assert info.inbound_address == "0.0.0.0"
    assert info.app == HostPort("127.0.0.1", 8080)
    assert info.app_address == "127.0.0.1:8080"
    assert info.module_delivery is None


def test_the_metadata_meshext_writes_is_the_metadata_it_reads() -> None:
    written = node_metadata(
        namespace="istio-system",
        labels={"istio": "ingressgateway"},
        workload_name="ingress",
        kind=ProxyKind.GATEWAY,
        inbound_port=8443,
        app=HostPort("::1", 9000),
        inbound_address="127.0.0.1",
        module_delivery=DeliveryMode.REMOTE,
    )
    info = proxy_from_node(node(written, "gateway~ingress"))
    assert info.kind is ProxyKind.GATEWAY
    assert info.workload.labels == {"istio": "ingressgateway"}
    assert info.inbound_port == 8443
    assert info.inbound_address == "127.0.0.1"
    assert info.app_address == "[::1]:9000"
    assert info.module_delivery is DeliveryMode.REMOTE


def test_a_numeric_inbound_port_is_accepted() -> None:
    assert proxy_from_node(node(valid_metadata(INBOUND_PORT=8080))).inbound_port == 8080


def test_labels_and_kind_are_optional() -> None:
    info = proxy_from_node(node(valid_metadata(LABELS=None, PROXY_KIND=None, WORKLOAD_NAME=None)))
    assert info.workload == Workload("apps", {}, ProxyKind.SIDECAR, "")


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"NAMESPACE": None}, "NAMESPACE", "missing"),
        ({"NAMESPACE": "Not_A_Namespace"}, "NAMESPACE", "not a valid namespace"),
        ({"NAMESPACE": 7}, "NAMESPACE", "expected a string, got a number"),
        ({"LABELS": ["app"]}, "LABELS", "expected an object"),
        ({"LABELS": {"app": 1}}, "LABELS", "label 'app'"),
        ({"PROXY_KIND": "router"}, "PROXY_KIND", "unknown value 'router'"),
        ({"INBOUND_PORT": None}, "INBOUND_PORT", "missing"),
        ({"INBOUND_PORT": "http"}, "INBOUND_PORT", "not a port number"),
        ({"INBOUND_PORT": "70000"}, "INBOUND_PORT", "between 1 and 65535"),
        ({"INBOUND_PORT": True}, "INBOUND_PORT", "not a port number"),
        ({"INBOUND_ADDRESS": "localhost"}, "INBOUND_ADDRESS", "not an IP address"),
        ({"APP_ADDRESS": None}, "APP_ADDRESS", "missing"),
        ({"APP_ADDRESS": "127.0.0.1"}, "APP_ADDRESS", "not host:port"),
        ({"APP_ADDRESS": "::1:8080"}, "APP_ADDRESS", "[address]:port"),
        ({"APP_ADDRESS": "app:0"}, "APP_ADDRESS", "between 1 and 65535"),
        ({"MODULE_DELIVERY": "ftp"}, "MODULE_DELIVERY", "unknown value 'ftp'"),
    ],
)
def test_a_missing_or_invalid_key_is_an_error_naming_the_node_and_the_key(
    overrides: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(NodeMetadataError) as caught:
        proxy_from_node(node(valid_metadata(**overrides)))
    error = caught.value
    assert error.key == key
    assert error.node_id == "sidecar~httpbin.apps~15006"
    assert "node 'sidecar~httpbin.apps~15006'" in str(error)
    assert f"metadata {key}" in str(error)
    assert problem in str(error)


def test_an_empty_node_id_is_an_error() -> None:
    with pytest.raises(NodeMetadataError, match="node id is empty"):
        proxy_from_node(node(valid_metadata(), node_id=""))
