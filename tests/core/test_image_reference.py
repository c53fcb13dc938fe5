from __future__ import annotations

from pathlib import Path

import pytest

from meshext.images.reference import (
    ImageReferenceError,
    ReferenceKind,
    parse_image_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("quay.io/maistra/header-append:2.1", "quay.io", "maistra/header-append", "2.1", None),
        ("localhost:5000/ext/hello:v1", "localhost:5000", "ext/hello", "v1", None),
        ("busybox:latest", "docker.io", "library/busybox", "latest", None),
        ("team/ext:1", "docker.io", "team/ext", "1", None),
        (f"quay.io/x/y@{DIGEST}", "quay.io", "x/y", None, DIGEST),
        (f"quay.io/x/y:1.0@{DIGEST}", "quay.io", "x/y", "1.0", DIGEST),
        ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000", "a/b", "c", None),
    ],
)
def test_registry_references_split_into_registry_repository_tag_and_digest(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_image_reference(text)
    assert ref.kind is ReferenceKind.REGISTRY
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quay.io/maistra/header-append", "neither a tag nor a digest"),
        ("localhost:5000/ext", "neither a tag nor a digest"),
        ("quay.io/x/y@sha256:abc", "invalid digest"),
        ("quay.io/x/y@md5:" + "a" * 32, "invalid digest"),
        ("quay.io/X/y:1", "invalid repository"),
        ("quay.io/x/y:-bad", "invalid tag"),
        ("", "empty"),
        (" quay.io/x/y:1", "white space"),
    ],
)
def test_invalid_references_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ImageReferenceError, match=message):
        parse_image_reference(text)


def test_latest_without_digest_is_flagged_as_latest() -> None:
    assert parse_image_reference("quay.io/x/y:latest").is_latest
    assert not parse_image_reference(f"quay.io/x/y:latest@{DIGEST}").is_latest


def test_local_file_and_layout_references_resolve_against_a_base_folder(tmp_path: Path) -> None:
    base = tmp_path
    ref = parse_image_reference("file:ext/a.wasm").with_base(base)
    assert ref.kind is ReferenceKind.FILE
    assert ref.path == str(base / "ext" / "a.wasm")
    layout = parse_image_reference("oci-layout:images/ext:v2").with_base(base)
    assert (layout.kind, layout.path, layout.tag) == (
        ReferenceKind.OCI_LAYOUT,
        str(base / "images" / "ext"),
        "v2",
    )
    assert str(layout) == f"oci-layout:{base / 'images' / 'ext'}:v2"


def test_canonical_spelling_round_trips() -> None:
    for text in ("quay.io/x/y:1", f"quay.io/x/y:1@{DIGEST}", "docker.io/library/busybox:1"):
        assert str(parse_image_reference(text)) == text
