"""The v1alpha1 ⇄ v1 conversion rules of ServiceMeshExtension, one row each."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given

from meshext.api.decode import decode
from meshext.api.extension import (
    CONFIG_TEXT_ANNOTATION,
    V1,
    V1ALPHA1,
    ExtensionSpecV1,
    ExtensionSpecV1Alpha1,
    ServiceMeshExtension,
    config_object_to_text,
    config_text_to_object,
    convert_document,
    kept_config_text,
    spec_v1_to_v1alpha1,
    spec_v1alpha1_to_v1,
)
from tests.json_texts import config_texts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"header": "x", "n": 1}', {"header": "x", "n": 1}),
        ("test", {"raw_v1alpha1_config": "test"}),
        ("", {"raw_v1alpha1_config": ""}),
        ("[1, 2]", {"raw_v1alpha1_config": "[1, 2]"}),
        ('"quoted"', {"raw_v1alpha1_config": '"quoted"'}),
        ("42", {"raw_v1alpha1_config": "42"}),
        ("{broken", {"raw_v1alpha1_config": "{broken"}),
        (None, None),
    ],
)
def test_v1alpha1_config_string_becomes_an_object_or_is_wrapped(
    text: str | None, expected: dict[str, Any] | None
) -> None:
    assert config_text_to_object(text) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"raw_v1alpha1_config": "test"}, "test"),
        ({"b": 1, "a": {"c": True}}, '{"a":{"c":true},"b":1}'),
        ({}, "{}"),
        (None, ""),
    ],
)
def test_v1_config_object_becomes_the_raw_string_or_json(
    config: dict[str, Any] | None, expected: str
) -> None:
    assert config_object_to_text(config) == expected


def test_v1alpha1_spec_converts_to_v1_and_back_without_loss() -> None:
    spec = ExtensionSpecV1Alpha1.model_validate(
        {
            "image": "quay.io/x/y:1",
            "imagePullPolicy": "Always",
            "imagePullSecrets": [{"name": "regcred"}],
            "workloadSelector": {"labels": {"app": "httpbin"}},
            "config": "test",
            "phase": "PostAuthZ",
            "priority": 100,
        }
    )
    v1 = spec_v1alpha1_to_v1(spec)
    assert v1.config == {"raw_v1alpha1_config": "test"}
    assert spec_v1_to_v1alpha1(v1) == spec


def test_v1_spec_with_object_config_converts_to_json_string() -> None:
    v1 = ExtensionSpecV1.model_validate({"image": "quay.io/x/y:1", "config": {"k": "v"}})
    assert spec_v1_to_v1alpha1(v1).config == '{"k":"v"}'


def test_whole_documents_convert_and_keep_metadata_and_status() -> None:
    document = {
        "apiVersion": V1ALPHA1,
        "kind": "ServiceMeshExtension",
        "metadata": {"name": "a", "namespace": "ns", "generation": 3},
        "spec": {"image": "quay.io/x/y:1", "config": "plain"},
        "status": {"phase": "PreAuthN"},
    }
    v1 = convert_document(document, V1)
    assert v1["apiVersion"] == V1
    assert v1["spec"]["config"] == {"raw_v1alpha1_config": "plain"}
    assert v1["metadata"] == document["metadata"]
    assert v1["status"] == document["status"]
    assert convert_document(v1, V1ALPHA1) == document


def test_documents_without_config_convert_by_changing_only_the_version() -> None:
    document = {"apiVersion": V1, "kind": "ServiceMeshExtension", "spec": {"image": "a/b:1"}}
    assert convert_document(document, V1ALPHA1) == {**document, "apiVersion": V1ALPHA1}


def test_conversion_to_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot convert"):
        convert_document({"apiVersion": V1}, "maistra.io/v2")


# --------------------------------------------------------------------------- without loss


def _alpha(config: str | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "a", "namespace": "ns"}
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"image": "quay.io/x/y:1"}
    if config is not None:
        spec["config"] = config
    return {"apiVersion": V1ALPHA1, "kind": "ServiceMeshExtension", "metadata": meta, "spec": spec}


@pytest.mark.parametrize(
    "text",
    [
        '{"z": 1, "a": 2}',
        '{"n": 1.0}',
        '{"n": 1e3}',
        '{"n": 12345678901234567890}',
        '{"a": 1, "a": 2}',
        '{"a":1}\n',
        '{"raw_v1alpha1_config": "x"}',
        '{"raw_v1alpha1_config": "x", "b": 1}',
        '{"n": NaN}',
        '{"n": 1e400}',
        "plain",
        "",
    ],
)
def test_every_v1alpha1_config_string_comes_back_exactly(text: str) -> None:
    stored = convert_document(_alpha(text, {"team": "a"}), V1)
    assert isinstance(stored["spec"]["config"], dict)
    back = convert_document(stored, V1ALPHA1)
    assert back == _alpha(text, {"team": "a"})


def test_the_original_text_is_kept_only_where_the_object_loses_something() -> None:
    assert "annotations" not in convert_document(_alpha('{"a":1,"b":2}'), V1)["metadata"]
    assert "annotations" not in convert_document(_alpha("plain"), V1)["metadata"]
    stored = convert_document(_alpha('{"b": 2, "a": 1}'), V1)
    assert stored["metadata"]["annotations"] == {CONFIG_TEXT_ANNOTATION: '{"b": 2, "a": 1}'}
    assert stored["spec"]["config"] == {"a": 1, "b": 2}


def test_a_config_that_looks_like_the_wrapper_is_wrapped_again() -> None:
    text = '{"raw_v1alpha1_config": "x"}'
    assert config_text_to_object(text) == {"raw_v1alpha1_config": text}
    assert config_object_to_text({"raw_v1alpha1_config": "x", "b": 1}) == (
        '{"b":1,"raw_v1alpha1_config":"x"}'
    )


def test_kept_text_is_dropped_when_a_v1_client_changed_the_config() -> None:
    stored = convert_document(_alpha('{"b": 2, "a": 1}'), V1)
    stored["spec"]["config"] = {"a": 5}
    back = convert_document(stored, V1ALPHA1)
    assert back["spec"]["config"] == '{"a":5}'
    assert "annotations" not in back["metadata"]


def test_kept_text_still_applies_after_the_api_server_stored_big_numbers_as_doubles() -> None:
    text = '{"n": 12345678901234567890, "f": 1.0}'
    annotations = {CONFIG_TEXT_ANNOTATION: text}
    as_stored = {"n": 12345678901234567000, "f": 1}
    assert kept_config_text(annotations, as_stored) == text
    assert kept_config_text(annotations, {"n": 12345678901234567000, "f": 2}) is None


def test_the_module_receives_the_kept_text_of_a_stored_v1_object() -> None:
    text = '{"z": 1, "a": 2}'
    stored = convert_document(_alpha(text), V1)
    sme = decode(stored)
    assert isinstance(sme, ServiceMeshExtension)
    assert sme.module_config() == text
    stored["spec"]["config"] = {"a": 3}
    edited = decode(stored)
    assert isinstance(edited, ServiceMeshExtension)
    assert edited.module_config() == '{"a":3}'


@given(config_texts)
def test_any_string_round_trips_through_v1(text: str) -> None:
    stored = convert_document(_alpha(text), V1)
    json.dumps(stored, allow_nan=False)  # what the webhook sends is valid JSON
    assert convert_document(stored, V1ALPHA1) == _alpha(text)
