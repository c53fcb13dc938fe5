"""meshext's WasmPlugin model knows every field of Istio's own CRD schema, no more, no less."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel

from meshext.api.wasmplugin import WasmPluginSpec
from tests.kube_harness import find_binaries


def wasm_plugin_spec_schemas() -> list[dict[str, Any]]:
    """The ``spec`` schema of every served version of Istio's WasmPlugin CRD."""
    text = find_binaries().istio_crds.read_text()
    for document in yaml.safe_load_all(text):
        if document and document["spec"]["names"]["kind"] == "WasmPlugin":
            return [
                v["schema"]["openAPIV3Schema"]["properties"]["spec"]
                for v in document["spec"]["versions"]
                if v.get("served", True)
            ]
    raise AssertionError("Istio's CRDs define no WasmPlugin")


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X | None`` or ``tuple[X, ...]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple):
        for arg in typing.get_args(annotation):
            found = model_of(arg)
            if found is not None:
                return found
    return None


def schema_fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub


def unknown_fields(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    """Fields of ``schema`` (recursively) that ``model`` does not declare."""
    by_alias = {(f.alias or n): f for n, f in model.model_fields.items()}
    missing: list[str] = []
    for field_path, sub in schema_fields(schema, path):
        name = field_path.rsplit(".", 1)[1]
        field = by_alias.get(name)
        if field is None:
            missing.append(field_path)
            continue
        nested = sub.get("items", sub)
        inner = model_of(field.annotation)
        if inner is not None and "properties" in nested:
            missing.extend(unknown_fields(inner, nested, field_path))
    return missing


def test_every_field_of_istios_wasmplugin_schema_is_known_to_meshext() -> None:
    schemas = wasm_plugin_spec_schemas()
    assert schemas
    for schema in schemas:
        assert unknown_fields(WasmPluginSpec, schema, "spec") == []


def test_meshext_declares_no_wasmplugin_field_istio_does_not_have() -> None:
    (schema, *_) = wasm_plugin_spec_schemas()
    istio = set(schema["properties"])
    ours = {f.alias or n for n, f in WasmPluginSpec.model_fields.items()}
    assert ours - istio == set()


def test_the_walk_would_notice_a_missing_field() -> None:
    (schema, *_) = wasm_plugin_spec_schemas()
    extended = {
        **schema,
        "properties": {
            **schema["properties"],
            "match": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        **schema["properties"]["match"]["items"]["properties"],
                        "sourceLabels": {"type": "object"},
                    },
                },
            },
        },
    }
    assert unknown_fields(WasmPluginSpec, extended, "spec") == ["spec.match.sourceLabels"]
