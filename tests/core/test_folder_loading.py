"""Loading a folder: broken documents are reported one error each; the rest still load."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshext.api.extension import V1ALPHA1, ServiceMeshExtension
from meshext.sources.folder import load_folder

DATA = Path(__file__).parent / "data"
BROKEN = DATA / "broken"
QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart"


@pytest.fixture(scope="module")
def broken() -> dict[str, list[str]]:
    result = load_folder(BROKEN)
    by_file: dict[str, list[str]] = {}
    for error in result.errors:
        assert error.location is not None
        by_file.setdefault(Path(error.location.path).name, []).append(str(error))
    return by_file


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        (
            "bad-phase.yaml",
            "ServiceMeshExtension bookinfo/bad-phase: spec.phase: unknown phase 'BeforeEverything'",
        ),
        (
            "bare-image.yaml",
            "ServiceMeshExtension bookinfo/bare-image: spec.image: 'quay.io/ext/no-tag' has neither a tag nor a digest",
        ),
        (
            "bad-digest.yaml",
            "ServiceMeshExtension bookinfo/bad-digest: spec.image: invalid digest 'sha256:12345'",
        ),
        (
            "wrong-types.yaml",
            "ServiceMeshExtension bookinfo/wrong-types: spec.priority: priority must be an integer, got 'high'",
        ),
        (
            "v1-config-string.yaml",
            "ServiceMeshExtension bookinfo/v1-config-string: spec.config: in maistra.io/v1 config is an object, got str",
        ),
        ("syntax-error.yaml", "YAML syntax error at line 8"),
        (
            "duplicates.yaml",
            "ServiceMeshExtension bookinfo/twice: metadata.name: duplicate: ServiceMeshExtension bookinfo/twice is already defined at",
        ),
    ],
)
def test_each_broken_manifest_yields_exactly_one_clear_error(
    broken: dict[str, list[str]], file: str, expected: str
) -> None:
    assert len(broken[file]) == 1
    assert expected in broken[file][0]
    assert f"{file} (document" in broken[file][0]


def test_valid_documents_beside_broken_ones_still_load() -> None:
    result = load_folder(BROKEN)
    names = sorted(r.key.name for r in result.resources if r.key.kind == "ServiceMeshExtension")
    assert names == ["before-syntax-error", "good", "good-beside-bad-phase", "twice"]
    assert len(result.errors) == 7


def test_the_first_of_two_duplicates_wins() -> None:
    result = load_folder(BROKEN)
    twice = next(r for r in result.resources if r.key.name == "twice")
    assert isinstance(twice.resource, ServiceMeshExtension)
    assert twice.resource.spec.image == "quay.io/ext/a:1"


def test_kinds_meshext_does_not_own_are_ignored() -> None:
    result = load_folder(BROKEN)
    assert all(r.key.kind != "Deployment" for r in result.resources)
    assert not any("not-ours.yaml" in str(e) for e in result.errors)


def test_quickstart_loads_without_errors_in_both_api_versions() -> None:
    result = load_folder(QUICKSTART)
    assert result.ok, result.errors
    versions = {
        r.resource.served_version
        for r in result.resources
        if isinstance(r.resource, ServiceMeshExtension)
    }
    assert V1ALPHA1 in versions
    assert len(versions) == 2


def test_relative_local_images_resolve_against_the_manifest_folder() -> None:
    result = load_folder(QUICKSTART)
    sme = next(r.resource for r in result.resources if r.key.name == "header-append")
    assert isinstance(sme, ServiceMeshExtension)
    expected = (QUICKSTART.parent / "extensions" / "build" / "header-append.wasm").resolve()
    assert sme.spec.image == f"file:{expected}"


def test_v1alpha1_config_is_handed_to_the_module_verbatim() -> None:
    result = load_folder(QUICKSTART)
    sme = next(r.resource for r in result.resources if r.key.name == "header-append")
    assert isinstance(sme, ServiceMeshExtension)
    assert sme.module_config() == "test"
    assert sme.spec.config == {"raw_v1alpha1_config": "test"}


def test_a_missing_folder_is_an_error_not_an_empty_mesh(tmp_path: Path) -> None:
    result = load_folder(tmp_path / "nope")
    assert not result.ok
    assert "no such file or folder" in str(result.errors[0])


def test_unsupported_api_version_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: maistra.io/v9\nkind: ServiceMeshExtension\nmetadata: {name: a}\nspec: {}\n"
    )
    result = load_folder(tmp_path)
    assert "apiVersion: unsupported apiVersion 'maistra.io/v9'" in str(result.errors[0])
    assert "maistra.io/v1, maistra.io/v1alpha1" in str(result.errors[0])


def test_a_member_roll_not_named_default_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: maistra.io/v1\nkind: ServiceMeshMemberRoll\n"
        "metadata: {name: other, namespace: istio-system}\nspec: {members: [a]}\n"
    )
    result = load_folder(tmp_path)
    assert "metadata.name: a member roll must be named 'default'" in str(result.errors[0])


def test_unknown_fields_are_reported_as_likely_typos(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
        "metadata: {name: a, namespace: ns}\n"
        "spec: {image: 'r.io/a:1', workloadselector: {labels: {app: x}}}\n"
    )
    result = load_folder(tmp_path)
    assert "spec.workloadselector: unknown field (check its spelling)" in str(result.errors[0])
