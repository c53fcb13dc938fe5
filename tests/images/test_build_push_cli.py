"""``meshext image build/push/pull/inspect`` against skopeo and a real registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from meshext.cli.image import image
from meshext.images.client import RegistryClient
from meshext.images.push import push_layout
from tests.images.conftest import registry_config, run, unique
from tests.images.registry import Registry
from tests.images.wasm import padded_module, proxy_wasm_module

pytestmark = pytest.mark.e2e


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(image, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def registry_flags(registry: Registry, tmp_path: Path) -> list[str]:
    flags = []
    if registry.ca is not None:
        flags.append(f"--ca-file={registry.ca.ca_file}")
        flags.append("--allow-private-registry=127.0.0.1")
    else:
        flags.append("--insecure-registry=127.0.0.1")
    config = tmp_path / "docker-config.json"
    auths = {}
    if registry.username:
        auths[registry.host] = {"username": registry.username, "password": registry.password}
    config.write_text(json.dumps({"auths": auths}))
    flags.append(f"--registry-config={config}")
    return flags


def layer_files(dir_copy: Path) -> dict[str, bytes]:
    """The files in the single layer of an image skopeo copied to ``dir:``."""
    manifest = json.loads((dir_copy / "manifest.json").read_bytes())
    (layer,) = manifest["layers"]
    blob = (dir_copy / layer["digest"].removeprefix("sha256:")).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == layer["digest"].removeprefix("sha256:")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as archive:
        return {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
        }


def build(tmp_path: Path, module: bytes, *target: str) -> Result:
    wasm = tmp_path / "filter.wasm"
    wasm.write_bytes(module)
    return invoke(
        "build",
        f"--wasm={wasm}",
        "--name=header-append",
        "--phase=PostAuthZ",
        "--priority=12",
        "--description=adds a header",
        "--version=1.2.0",
        "--quiet",
        *target,
    )


def test_built_layout_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    module = proxy_wasm_module("reproducible")
    build(tmp_path, module, f"--output-layout={tmp_path / 'one'}:v1")
    build(tmp_path, module, f"--output-layout={tmp_path / 'two'}:v1")
    files_one = sorted(
        p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file()
    )
    files_two = sorted(
        p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file()
    )
    assert files_one == files_two
    for relative in files_one:
        assert (tmp_path / "one" / relative).read_bytes() == (
            tmp_path / "two" / relative
        ).read_bytes()


def test_built_layout_is_read_by_skopeo_as_a_linux_amd64_image_with_both_files(
    tmp_path: Path,
) -> None:
    module = proxy_wasm_module("skopeo reads the layout")
    build(tmp_path, module, f"--output-layout={tmp_path / 'layout'}:v1")
    inspected = json.loads(run("skopeo", "inspect", f"oci:{tmp_path / 'layout'}:v1"))
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")
    run("skopeo", "copy", "--quiet", f"oci:{tmp_path / 'layout'}:v1", f"dir:{tmp_path / 'copy'}")
    files = layer_files(tmp_path / "copy")
    assert sorted(files) == ["manifest.yaml", "plugin.wasm"]
    assert files["plugin.wasm"] == module
    assert yaml.safe_load(files["manifest.yaml"]) == {
        "schemaVersion": 1,
        "name": "header-append",
        "description": "adds a header",
        "version": "1.2.0",
        "phase": "PostAuthZ",
        "priority": 12,
        "module": "plugin.wasm",
    }


def test_build_with_tag_pushes_to_a_basic_auth_registry_that_skopeo_reads_back(
    tmp_path: Path, basic_registry: Registry
) -> None:
    module = proxy_wasm_module("pushed by build")
    reference = f"{basic_registry.host}/{unique('built')}:1.2.0"
    result = build(
        tmp_path, module, f"--tag={reference}", *registry_flags(basic_registry, tmp_path)
    )
    digest = result.output.split()[0]
    inspected = json.loads(
        run("skopeo", "inspect", *basic_registry.skopeo_args(), f"docker://{reference}")
    )
    assert inspected["Digest"] == digest
    run(
        "skopeo",
        "copy",
        "--quiet",
        *basic_registry.skopeo_args("src-"),
        f"docker://{reference}",
        f"dir:{tmp_path / 'copy'}",
    )
    assert layer_files(tmp_path / "copy")["plugin.wasm"] == module


def test_push_copies_a_umoci_layout_to_a_token_registry(
    tmp_path: Path, token_registry: Registry
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "plugin.wasm").write_bytes(proxy_wasm_module("umoci push"))
    layout = tmp_path / "umoci"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:v1")
    run("umoci", "insert", "--image", f"{layout}:v1", str(files / "plugin.wasm"), "/plugin.wasm")
    reference = f"{token_registry.host}/{unique('pushed')}:v1"
    result = invoke(
        "push", "--quiet", f"{layout}:v1", reference, *registry_flags(token_registry, tmp_path)
    )
    index = json.loads((layout / "index.json").read_bytes())
    assert result.output.split()[0] == index["manifests"][0]["digest"]
    raw = run("skopeo", "inspect", "--raw", *token_registry.skopeo_args(), f"docker://{reference}")
    assert json.loads(raw) == json.loads(
        (layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes()
    )


async def test_large_blobs_are_pushed_in_chunks_that_the_registry_reassembles(
    tmp_path: Path, plain_registry: Registry
) -> None:
    module = padded_module(1_200_000, "chunked")
    build(tmp_path, module, f"--output-layout={tmp_path / 'layout'}:v1")
    config = registry_config(plain_registry, chunk_size=256 * 1024)
    repository = unique("chunked")
    async with RegistryClient(plain_registry.host, config, push=True) as client:
        await push_layout(
            tmp_path / "layout",
            "v1",
            client,
            repository=repository,
            tag="v1",
            limits=config.limits,
        )
    run(
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{plain_registry.host}/{repository}:v1",
        f"dir:{tmp_path / 'copy'}",
    )
    assert layer_files(tmp_path / "copy")["plugin.wasm"] == module


def test_pull_writes_the_module_and_inspect_reports_it_as_json(
    tmp_path: Path, tls_registry: Registry
) -> None:
    module = proxy_wasm_module("pull and inspect")
    reference = f"{tls_registry.host}/{unique('cli')}:v3"
    flags = registry_flags(tls_registry, tmp_path)
    build(tmp_path, module, f"--tag={reference}", *flags)
    output = tmp_path / "out.wasm"
    cache = f"--cache={tmp_path / 'cache'}"
    pulled = invoke("pull", "--quiet", reference, f"--output={output}", cache, *flags)
    assert output.read_bytes() == module
    assert pulled.output.split()[0] == "sha256:" + hashlib.sha256(module).hexdigest()
    report = json.loads(invoke("inspect", reference, "-o", "json", cache, *flags).output)
    assert report["format"] == "maistra"
    assert report["moduleSha256"] == hashlib.sha256(module).hexdigest()
    assert report["abiVersions"] == ["proxy_abi_version_0_2_1"]
    assert report["manifest"]["phase"] == "PostAuthZ"
    assert report["size"] == len(module)
    skopeo_digest = json.loads(
        run("skopeo", "inspect", *tls_registry.skopeo_args(), f"docker://{reference}")
    )["Digest"]
    assert report["imageDigest"] == skopeo_digest


def test_inspect_reads_a_local_layout_and_prints_text(tmp_path: Path) -> None:
    build(tmp_path, proxy_wasm_module("inspect text"), f"--output-layout={tmp_path / 'layout'}:v1")
    text = invoke(
        "inspect", f"oci-layout:{tmp_path / 'layout'}:v1", f"--cache={tmp_path / 'c'}"
    ).output
    assert "format: maistra" in text
    assert "abiVersions: proxy_abi_version_0_2_1" in text


def test_pull_of_a_missing_image_exits_with_the_reason(
    tmp_path: Path, plain_registry: Registry
) -> None:
    reference = f"{plain_registry.host}/{unique('nothing')}:v1"
    result = CliRunner().invoke(
        image,
        [
            "pull",
            "--quiet",
            reference,
            f"--cache={tmp_path / 'c'}",
            "--insecure-registry=127.0.0.1",
        ],
    )
    assert result.exit_code == 1
    assert f"{reference} not found" in result.output
