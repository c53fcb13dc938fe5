"""A WasmPlugin Istio's own CRD accepts is one meshext accepts, with the same meaning."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from meshext.api.decode import DecodeError, decode
from meshext.api.wasmplugin import WasmPlugin
from meshext.mesh.extension import Target, from_wasm_plugin
from meshext.mesh.traffic import Direction, FilterLayer, Side
from tests.kube.support import WASM_PLUGINS, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("istio_crds")]

NAMESPACE = "wasm-parity"
SHA = "b" * 64


def wasm_plugin(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


FULL = wasm_plugin(
    "full",
    url="https://modules.example/filter.wasm",
    sha256=SHA,
    imagePullPolicy="IfNotPresent",
    imagePullSecret="pull-secret",
    pluginName="filter_root",
    pluginConfig={"nested": {"list": [1, 2]}, "flag": True},
    phase="AUTHN",
    priority=-3,
    failStrategy="FAIL_OPEN",
    vmConfig={
        "env": [
            {"name": "TRUST", "value": "cluster.local"},
            {"name": "POD_NAME", "valueFrom": "HOST"},
        ]
    },
    match=[{"mode": "CLIENT", "ports": [{"number": 9080}]}, {"mode": "SERVER"}],
    type="NETWORK",
    targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}],
)


def test_a_wasmplugin_using_every_field_round_trips_through_the_apiserver_into_meshext(
    cluster: Cluster,
) -> None:
    cluster.namespace(NAMESPACE)
    cluster.apply(FULL)
    stored = cluster.get(WASM_PLUGINS, "full", NAMESPACE)
    assert stored is not None
    resource = decode(stored)
    assert isinstance(resource, WasmPlugin)
    ext = from_wasm_plugin(resource)
    assert ext.image == "https://modules.example/filter.wasm"
    assert ext.expected_sha256 == SHA
    assert ext.layer is FilterLayer.NETWORK
    assert ext.targets == (Target("Gateway", "edge"),)
    assert ext.host_env == ("POD_NAME",)
    assert ext.env == {"TRUST": "cluster.local"}
    assert ext.traffic.selects(Side(Direction.OUTBOUND, 9080))
    assert ext.traffic.selects(Side(Direction.INBOUND, 1234))
    assert not ext.traffic.selects(Side(Direction.OUTBOUND, 1234))


@pytest.mark.parametrize(
    "spec",
    [
        {
            "url": "oci://registry.example/f:1",
            "selector": {"matchLabels": {"app": "x"}},
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "e"}],
        },
        {"url": "oci://registry.example/f:1", "sha256": "not-hex"},
        {
            "url": "oci://registry.example/f:1",
            "vmConfig": {"env": [{"name": "X", "valueFrom": "HOST", "value": "v"}]},
        },
    ],
    ids=["selector-and-targets", "bad-sha256", "host-env-with-value"],
)
def test_what_istios_crd_refuses_meshext_refuses_too(
    cluster: Cluster, spec: dict[str, Any]
) -> None:
    cluster.namespace(NAMESPACE)
    document = wasm_plugin("refused", **spec)
    refused = cluster.try_kubectl(
        "apply",
        "--server-side",
        "--field-manager=tests",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump(document),
    )
    assert refused.returncode != 0
    with pytest.raises(DecodeError):
        decode(document)
