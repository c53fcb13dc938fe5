from __future__ import annotations

import pytest

from meshext.api.manifest import ExtensionManifest, ManifestError, parse_manifest, render_manifest
from meshext.api.phase import Phase

GOOD = b"""
schemaVersion: 1
name: header-append
description: Appends a header
version: 1.0
phase: PostAuthZ
priority: 100
module: extension.wasm
"""


def test_a_maistra_manifest_gives_module_path_and_defaults() -> None:
    manifest = parse_manifest(GOOD)
    assert manifest.module_path == "extension.wasm"
    assert manifest.phase is Phase.POST_AUTHZ
    assert manifest.priority == 100
    assert manifest.version == "1.0"


def test_rendered_manifest_parses_back_to_the_same_manifest() -> None:
    manifest = parse_manifest(GOOD)
    assert parse_manifest(render_manifest(manifest)) == manifest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"schemaVersion: 2\nname: a\nmodule: a.wasm\n", "schemaVersion"),
        (b"schemaVersion: 1\nname: a\n", "module: required|module: Field required"),
        (b"schemaVersion: 1\nname: a\nmodule: ../etc/passwd\n", "inside the image"),
        (b"schemaVersion: 1\nname: a\nmodule: a.wasm\nphase: Early\n", "unknown phase 'Early'"),
        (b"- a list\n", "mapping"),
        (b"name: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_manifests_name_the_field(text: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text, source="quay.io/x/y:1 manifest.yaml")


def test_a_built_manifest_leaves_out_an_empty_version_and_keeps_the_root_id() -> None:
    manifest = ExtensionManifest(
        schema_version=1, name="ext", version="", root_id="my_root", module="plugin.wasm"
    )
    text = render_manifest(manifest).decode()
    assert "version" not in text.replace("schemaVersion", "")
    assert "description" not in text
    assert parse_manifest(text.encode()).root_id == "my_root"
