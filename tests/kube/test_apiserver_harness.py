"""The kube-apiserver test harness serves a real, authenticated API."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.kube_harness import KubeApiServer

pytestmark = pytest.mark.e2e


def _configmap(name: str, data: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "data": data,
        }
    )


def test_kubectl_lists_default_and_kube_system_namespaces(kube_apiserver: KubeApiServer) -> None:
    out = kube_apiserver.kubectl("get", "ns", "-o", "name").stdout.split()
    assert "namespace/default" in out
    assert "namespace/kube-system" in out


def test_admin_token_has_full_rights(kube_apiserver: KubeApiServer) -> None:
    assert kube_apiserver.kubectl("auth", "can-i", "*", "*", "-A").stdout.strip() == "yes"
    review = json.loads(kube_apiserver.kubectl("auth", "whoami", "-o", "json").stdout)
    assert "system:masters" in review["status"]["userInfo"]["groups"]


def test_admin_client_certificate_authenticates_without_token(
    kube_apiserver: KubeApiServer,
) -> None:
    context = ssl.create_default_context(cafile=str(kube_apiserver.ca_path))
    context.load_cert_chain(
        str(kube_apiserver.client_cert_path), str(kube_apiserver.client_key_path)
    )
    url = kube_apiserver.url + "/api/v1/namespaces/kube-system"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        body = json.loads(response.read())
    assert body["metadata"]["name"] == "kube-system"


def test_anonymous_requests_are_not_authorized_for_resources(
    kube_apiserver: KubeApiServer,
) -> None:
    context = ssl.create_default_context(cafile=str(kube_apiserver.ca_path))
    url = kube_apiserver.url + "/api/v1/namespaces"
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert excinfo.value.code in {401, 403}


def test_configmap_survives_apiserver_restart(kube_apiserver: KubeApiServer) -> None:
    name = "survives-restart"
    kube_apiserver.kubectl("apply", "-f", "-", input=_configmap(name, {"key": "before-restart"}))
    url_before = kube_apiserver.url

    kube_apiserver.stop_apiserver()
    try:
        assert not kube_apiserver.apiserver_running
        down = kube_apiserver.kubectl("get", "configmap", name, "--request-timeout=3s", check=False)
        assert down.returncode != 0
    finally:
        kube_apiserver.start_apiserver()

    assert kube_apiserver.url == url_before
    stored = json.loads(kube_apiserver.kubectl("get", "configmap", name, "-o", "json").stdout)
    assert stored["data"] == {"key": "before-restart"}
    kube_apiserver.kubectl("delete", "configmap", name)


def test_server_side_dry_run_apply_does_not_persist(kube_apiserver: KubeApiServer) -> None:
    name = "dry-run-only"
    out = kube_apiserver.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=_configmap(name, {"k": "v"})
    ).stdout
    assert "server dry run" in out
    missing = kube_apiserver.kubectl("get", "configmap", name, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


def test_server_side_dry_run_rejects_invalid_object(kube_apiserver: KubeApiServer) -> None:
    result = kube_apiserver.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=_configmap("Not_A_Valid_Name", {"k": "v"}),
        check=False,
    )
    assert result.returncode != 0
    assert "Invalid value" in result.stderr


def test_istio_crds_install_with_server_side_apply(
    kube_apiserver: KubeApiServer, istio_crds: Path
) -> None:
    names = kube_apiserver.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/wasmplugins.extensions.istio.io" in names
    assert "customresourcedefinition.apiextensions.k8s.io/envoyfilters.networking.istio.io" in names


@pytest.mark.parametrize(
    "resource",
    ["wasmplugins.extensions.istio.io", "envoyfilters.networking.istio.io"],
)
def test_istio_resources_can_be_listed_in_all_namespaces(
    kube_apiserver: KubeApiServer, istio_crds: Path, resource: str
) -> None:
    listing = json.loads(kube_apiserver.kubectl("get", resource, "-A", "-o", "json").stdout)
    assert listing["kind"] == "List"
    assert isinstance(listing["items"], list)


def test_wasmplugin_round_trips_through_apiserver(
    kube_apiserver: KubeApiServer, istio_crds: Path
) -> None:
    plugin = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "harness-plugin", "namespace": "default"},
        "spec": {
            "url": "oci://registry.invalid/meshext/harness:v1",
            "phase": "AUTHN",
            "pluginConfig": {"greeting": "hello"},
        },
    }
    kube_apiserver.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(plugin))
    stored = json.loads(
        kube_apiserver.kubectl(
            "get", "wasmplugins.extensions.istio.io", "harness-plugin", "-o", "json"
        ).stdout
    )
    assert stored["spec"]["pluginConfig"] == {"greeting": "hello"}
    assert stored["spec"]["phase"] == "AUTHN"
    kube_apiserver.kubectl("delete", "wasmplugins.extensions.istio.io", "harness-plugin")
