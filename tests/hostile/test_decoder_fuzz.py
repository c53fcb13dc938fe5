"""Property-based fuzzing of the YAML loader and the decoder: whatever the input, the
outcome is a resource, an ignored document, or a clear error; never another exception,
and never a resource outside the ranges Kubernetes and Maistra allow."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshext.api import safe_yaml
from meshext.api.decode import DecodeError, decode
from meshext.api.extension import ServiceMeshExtension
from meshext.api.kube_values import INT32_MAX, INT32_MIN, label_key_problem, label_value_problem
from meshext.api.meta import SourceLocation
from meshext.sources.folder import load_folder
from tests.hostile.corpus import sme

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = ["image", "phase", "priority", "config", "imagePullPolicy", "imagePullSecrets",
          "workloadSelector"]  # fmt: skip
META = ["name", "namespace", "labels", "generation", "annotations"]


def decode_or_error(document: object) -> object:
    try:
        return decode(document, SourceLocation("fuzz.yaml"))
    except DecodeError as exc:
        error = exc
    assert error.errors
    assert all(str(e) for e in error.errors)
    return error


def assert_within_ranges(resource: object) -> None:
    if not isinstance(resource, ServiceMeshExtension):
        return
    priority = resource.spec.priority
    assert priority is None or INT32_MIN <= priority <= INT32_MAX
    assert resource.metadata.generation >= 0
    for key, value in resource.metadata.labels.items():
        assert label_key_problem(key) is None
        assert label_value_problem(value) is None
    selector = resource.spec.workload_selector
    for key, value in (selector.labels if selector else {}).items():
        assert label_key_problem(key) is None
        assert label_value_problem(value) is None


@FUZZ
@given(st.text(max_size=400))
def test_any_text_loads_or_fails_with_a_yaml_error(text: str) -> None:
    error = _yaml_error(lambda: list(safe_yaml.load_all(text)))
    assert error is None or (str(error) and error.document >= 1)


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_in_a_manifest_file_give_documents_or_errors_naming_the_file(
    data: bytes,
) -> None:
    with tempfile.TemporaryDirectory(prefix="meshext-fuzz-") as name:
        folder = Path(name)
        (folder / "fuzz.yaml").write_bytes(data)
        result = load_folder(folder)
    assert all("fuzz.yaml" in str(e) for e in result.errors)
    for loaded in result.resources:
        assert_within_ranges(loaded.resource)


@FUZZ
@given(
    st.sampled_from(FIELDS),
    values,
    st.sampled_from(META),
    values,
    st.sampled_from(["maistra.io/v1", "maistra.io/v1alpha1"]),
)
def test_any_value_in_any_field_decodes_or_is_a_decode_error(
    field: str, value: Any, meta_field: str, meta_value: Any, api_version: str
) -> None:
    document = sme("fuzzed", {field: value}, apiVersion=api_version)
    document["metadata"][meta_field] = meta_value
    outcome = decode_or_error(document)
    assert_within_ranges(outcome)


@FUZZ
@given(values)
def test_any_document_shape_decodes_or_is_a_decode_error(document: Any) -> None:
    if isinstance(document, dict):
        document = {**document, "apiVersion": "maistra.io/v1", "kind": "ServiceMeshExtension"}
    assert_within_ranges(decode_or_error(document))


# JSON escapes everything but printable ASCII then (DEL excepted, which YAML refuses);
# PyYAML reads an escaped surrogate pair as two characters, so the text stays in the BMP.
json_text = st.text(
    st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"], exclude_characters="\x7f"),
    max_size=40,
)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**62), 2**62), json_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        # "<<" is YAML's merge key, not an ordinary key
        st.dictionaries(json_text.filter(lambda k: k != "<<"), children, max_size=4),
    ),
    max_leaves=20,
)
"""Values JSON and YAML 1.1 read alike (YAML 1.1 reads ``1e-05`` as text, not a number)."""


@FUZZ
@given(json_values)
def test_json_documents_load_as_the_same_values(document: Any) -> None:
    text = json.dumps(document)
    assert list(safe_yaml.load_all(text)) == [document]


anchored = st.recursive(
    st.sampled_from(["1", "x", "*a", "*b", "&a 1", "&b [1, 2]", "&a {k: v}"]),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=5).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(children, min_size=1, max_size=5).map(
            lambda xs: "{" + ", ".join(f"k{i}: {x}" for i, x in enumerate(xs)) + "}"
        ),
        children.map(lambda x: "&a " + x if not x.startswith("&") else x),
        children.map(lambda x: "&b " + x if not x.startswith("&") else x),
    ),
    max_leaves=30,
)


@FUZZ
@given(anchored)
def test_documents_with_anchors_and_aliases_load_within_bounds_or_fail_clearly(
    text: str,
) -> None:
    limits = safe_yaml.YamlLimits(max_nodes=500, max_depth=20)
    documents: list[Any] = []
    error = _yaml_error(lambda: documents.extend(safe_yaml.load_all(text, limits)))
    assert (error is not None and str(error)) or _size(documents) <= 500 + 1


def _yaml_error(load: Callable[[], object]) -> safe_yaml.UnsafeYamlError | None:
    try:
        load()
    except safe_yaml.UnsafeYamlError as exc:
        return exc
    return None


def _size(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_size(k) + _size(v) for k, v in value.items())
    if isinstance(value, list):
        return 1 + sum(_size(v) for v in value)
    return 1
