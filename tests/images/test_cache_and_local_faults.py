"""Faults of the machine meshext runs on get clear errors: a cache folder that cannot be
written, local images outside the allowed folders, files that are not regular."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshext.cli.main import cli
from meshext.images.cache import ModuleCache
from meshext.images.local import LocalImages
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import FolderPullSecretStore, MappingPullSecretStore
from meshext.mesh.resolution import ResolutionState
from tests.images.conftest import extension
from tests.images.wasm import proxy_wasm_module


async def test_a_cache_that_cannot_be_written_is_a_clear_retryable_error(
    tmp_path: Path,
) -> None:
    cache = ModuleCache(tmp_path / "cache")
    shutil.rmtree(cache.root / "tmp")
    (cache.root / "tmp").write_text("not a folder")  # every pull's work folder now fails
    (tmp_path / "filter.wasm").write_bytes(proxy_wasm_module("cache fault"))
    resolver = ImageResolver(cache, MappingPullSecretStore())
    resolution = await resolver.resolve(extension(f"file:{tmp_path / 'filter.wasm'}"))
    assert resolution.state is ResolutionState.FAILED
    assert resolution.retryable is True
    assert f"the module cache in {cache.root} cannot be written" in resolution.message
    assert "--cache-dir" in resolution.message


def test_serve_with_a_cache_folder_it_cannot_create_exits_with_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "config").mkdir()
    result = CliRunner().invoke(
        cli,
        ["serve", "--config", str(tmp_path / "config"), "--cache-dir", str(tmp_path / "file/x")],
    )
    assert result.exit_code == 1
    assert "error: cannot prepare the module cache" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("kind", ["fifo", "device-link", "link-out", "outside", "none-allowed"])
async def test_local_images_are_read_only_from_regular_files_below_allowed_folders(
    tmp_path: Path, kind: str
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "secret.wasm").write_text("SECRET-BYTES")
    roots: tuple[Path, ...] = (allowed,)
    path = allowed / "module.wasm"
    expected = "not below a folder"
    if kind == "fifo":
        os.mkfifo(path)
        expected = "not a regular file"
    elif kind == "device-link":
        path.symlink_to("/dev/zero")
    elif kind == "link-out":
        path.symlink_to(outside / "secret.wasm")
    elif kind == "outside":
        path = outside / "secret.wasm"
    else:
        roots = ()
        expected = "local images (file: and oci-layout:) are not allowed here"
    resolver = ImageResolver(
        ModuleCache(tmp_path / "cache"), MappingPullSecretStore(), local_images=LocalImages(roots)
    )
    resolution = await resolver.resolve(extension(f"file:{path}"))
    assert resolution.state is ResolutionState.FAILED
    assert expected in resolution.message
    assert "SECRET" not in resolution.message


async def test_pull_secrets_are_found_beside_hostile_files_in_the_folder(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text(
        "kind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        "metadata: {name: regcred, namespace: ns}\nstringData: {.dockerconfigjson: '{}'}\n"
    )
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "cycle.yaml").write_text("&c {self: *c}\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    store = FolderPullSecretStore(tmp_path)
    assert await store.get("ns", "regcred") == b"{}"
