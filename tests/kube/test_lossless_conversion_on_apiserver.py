"""Every v1alpha1 config string survives storage as v1 byte for byte, on a real API server.

The API server stores ServiceMeshExtensions as v1 and converts through the webhook
process of this session; what it cannot hold in the v1 object (key order, number
spelling, integers beyond 64 bits, duplicate keys) is kept beside it, so a v1alpha1
reader and the module get the exact string.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from meshext.api.decode import decode
from meshext.api.extension import ServiceMeshExtension
from tests.json_texts import config_texts
from tests.kube.support import (
    ENVOY_FILTERS,
    Cluster,
    Mesh,
    MeshextCrds,
    eventually,
    extension,
    running_controller,
    unique,
    wasm_file,
)
from tests.kube_harness import KubeApiServer

pytestmark = [pytest.mark.e2e]

IMAGE = "quay.io/acme/header:v1"
AWKWARD_TEXTS = [
    '{"z": 1, "a": 2}',
    '{"n": 1.0, "m": 1e3}',
    '{"big": 12345678901234567890}',
    '{"a": 1, "a": 2}',
    '{"raw_v1alpha1_config": "x"}',
    '{"raw_v1alpha1_config": "x", "other": true}',
    '  {"spaced" : [1, 2] }\n',
    '{"n": NaN}',
    "plain: text",
    "",
]


class _Api:
    """Plain REST calls for the property tests (hypothesis runs synchronous tests)."""

    def __init__(self, api: KubeApiServer, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.context = ssl.create_default_context(cafile=str(api.ca_path))

    def _call(self, method: str, version: str, name: str = "", body: object = None) -> Any:
        path = f"/apis/maistra.io/{version}/namespaces/{self.namespace}/servicemeshextensions"
        request = urllib.request.Request(
            f"{self.api.url}{path}/{name}" if name else f"{self.api.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.api.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from exc

    def create(self, document: dict[str, Any]) -> None:
        self._call("POST", document["apiVersion"].split("/")[1], body=document)

    def get(self, version: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", version, name)
        return found

    def delete(self, name: str) -> None:
        self._call("DELETE", "v1", name)


@pytest.fixture
def api(kube_apiserver: KubeApiServer, crds: MeshextCrds) -> _Api:
    return _Api(kube_apiserver, crds.cluster.namespace(unique("lossless")))


def _round_trip(api: _Api, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    name = unique("sme")
    api.create(extension(name, api.namespace, IMAGE, version="v1alpha1", config=text))
    try:
        return api.get("v1alpha1", name), api.get("v1", name)
    finally:
        api.delete(name)


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_a_v1alpha1_config_reads_back_exactly_and_reaches_the_module_exactly(
    api: _Api, text: str
) -> None:
    alpha, stored = _round_trip(api, text)
    assert alpha["spec"]["config"] == text
    assert "annotations" not in alpha["metadata"]
    assert isinstance(stored["spec"]["config"], dict)
    sme = decode(stored)
    assert isinstance(sme, ServiceMeshExtension)
    assert sme.module_config() == text


def test_a_config_edited_through_v1_is_what_v1alpha1_readers_see(api: _Api) -> None:
    name = unique("edited")
    api.create(extension(name, api.namespace, IMAGE, version="v1alpha1", config='{"b": 1, "a": 2}'))
    stored = api.get("v1", name)
    stored["spec"]["config"] = {"a": 3}
    api._call("PUT", "v1", name, stored)
    assert api.get("v1alpha1", name)["spec"]["config"] == '{"a":3}'
    sme = decode(api.get("v1", name))
    assert isinstance(sme, ServiceMeshExtension)
    assert sme.module_config() == '{"a":3}'
    api.delete(name)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=config_texts)
def test_any_string_or_json_text_round_trips_through_the_api_server(api: _Api, text: str) -> None:
    alpha, stored = _round_trip(api, text)
    assert alpha["spec"]["config"] == text
    sme = decode(stored)
    assert isinstance(sme, ServiceMeshExtension)
    assert sme.module_config() == text


@pytest.mark.usefixtures("istio_crds")
async def test_an_exact_placement_envoy_filter_carries_the_text_as_written(
    kube_apiserver: KubeApiServer, cluster: Cluster, mesh: Mesh, tmp_path: Path
) -> None:
    namespace = mesh.members[0]
    module = wasm_file(tmp_path / "modules", "verbatim")
    text = '{"z": 1, "a": 12345678901234567890}'
    cluster.apply(
        extension(
            "verbatim",
            namespace,
            f"file:{module}",
            version="v1alpha1",
            phase="PostStats",
            config=text,
            annotations={"meshext.io/placement": "exact"},
        )
    )
    async with running_controller(kube_apiserver, tmp_path / "cache"):
        envoy_filter = await eventually(
            lambda: cluster.get(ENVOY_FILTERS, "verbatim", namespace), "an EnvoyFilter"
        )
    config = envoy_filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
    assert config["configuration"]["value"] == text
