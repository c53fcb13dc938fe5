"""The conversion webhook answers ConversionReviews as the API server expects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshext.kube.http import webhook_app
from meshext.kube.webhook import ReviewError, review_conversion


def _sme(version: str, config: object, name: str = "ext") -> dict[str, Any]:
    return {
        "apiVersion": f"maistra.io/{version}",
        "kind": "ServiceMeshExtension",
        "metadata": {"name": name, "namespace": "team-a", "uid": "1234", "generation": 3},
        "spec": {"image": "quay.io/x/y:v1", "phase": "PostAuthZ", "config": config},
        "status": {"deployment": {"ready": True}},
    }


def _review(desired: str, *objects: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {"uid": "review-1", "desiredAPIVersion": desired, "objects": list(objects)},
    }


def test_v1alpha1_json_string_config_becomes_an_object_in_v1() -> None:
    answer = review_conversion(_review("maistra.io/v1", _sme("v1alpha1", '{"header": "x"}')))
    response = answer["response"]
    assert answer["kind"] == "ConversionReview"
    assert response["uid"] == "review-1"
    assert response["result"] == {"status": "Success"}
    (converted,) = response["convertedObjects"]
    assert converted["apiVersion"] == "maistra.io/v1"
    assert converted["spec"]["config"] == {"header": "x"}


def test_v1alpha1_plain_string_config_is_wrapped_and_comes_back_unchanged() -> None:
    to_v1 = review_conversion(_review("maistra.io/v1", _sme("v1alpha1", "plain text")))
    (v1,) = to_v1["response"]["convertedObjects"]
    assert v1["spec"]["config"] == {"raw_v1alpha1_config": "plain text"}
    back = review_conversion(_review("maistra.io/v1alpha1", v1))
    (v1alpha1,) = back["response"]["convertedObjects"]
    assert v1alpha1["spec"]["config"] == "plain text"


def test_metadata_and_status_pass_through_unchanged() -> None:
    original = _sme("v1", {"a": 1})
    answer = review_conversion(_review("maistra.io/v1alpha1", original))
    (converted,) = answer["response"]["convertedObjects"]
    assert converted["metadata"] == original["metadata"]
    assert converted["status"] == original["status"]
    assert converted["spec"]["config"] == '{"a":1}'


def test_every_object_of_a_review_is_converted_in_order() -> None:
    objects = [_sme("v1", {"n": i}, name=f"ext-{i}") for i in range(3)]
    answer = review_conversion(_review("maistra.io/v1alpha1", *objects))
    names = [o["metadata"]["name"] for o in answer["response"]["convertedObjects"]]
    assert names == ["ext-0", "ext-1", "ext-2"]


def test_an_unknown_target_version_fails_the_review_with_a_message() -> None:
    answer = review_conversion(_review("maistra.io/v3", _sme("v1", {})))
    result = answer["response"]["result"]
    assert result["status"] == "Failure"
    assert "maistra.io/v3" in result["message"]
    assert "convertedObjects" not in answer["response"]


def test_an_object_of_another_kind_fails_the_review_naming_it() -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}}
    answer = review_conversion(_review("maistra.io/v1", other))
    assert answer["response"]["result"]["status"] == "Failure"
    assert "ConfigMap n/c" in answer["response"]["result"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"apiVersion": "v1", "kind": "Pod"},
        {"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview"},
    ],
)
def test_a_request_that_is_not_a_conversion_review_is_refused(body: object) -> None:
    with pytest.raises(ReviewError):
        review_conversion(body)


async def test_the_http_endpoint_answers_reviews_and_refuses_garbage() -> None:
    app: web.Application = webhook_app()
    async with TestClient(TestServer(app)) as client:
        good = await client.post(
            "/convert", json=_review("maistra.io/v1", _sme("v1alpha1", '{"k": true}'))
        )
        assert good.status == 200
        body = json.loads(await good.text())
        assert body["response"]["convertedObjects"][0]["spec"]["config"] == {"k": True}
        bad = await client.post("/convert", data=b"not json")
        assert bad.status == 400
