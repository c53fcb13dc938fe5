"""Layer application (whiteouts), refusal of unsafe entries, and module checks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from meshext.images.archive import copy_file, scan_layers
from meshext.images.checks import ModuleChecker
from meshext.images.config import Limits
from meshext.images.errors import InvalidImage, InvalidModule, SizeLimitExceeded, UnsafeArchive
from tests.images.layouts import Entry, tar_layer
from tests.images.wasm import module_without_abi, proxy_wasm_module

LIMITS = Limits()


def layers(tmp_path: Path, *contents: bytes) -> list[Path]:
    paths = []
    for number, data in enumerate(contents):
        path = tmp_path / f"layer-{number}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_later_layers_replace_files_of_earlier_ones(tmp_path: Path) -> None:
    paths = layers(
        tmp_path,
        tar_layer([Entry("a.wasm", b"one"), Entry("manifest.yaml", b"first")]),
        tar_layer([Entry("./a.wasm", b"two")], compress=False),
    )
    scan = scan_layers(paths, LIMITS, frozenset({"manifest.yaml"}))
    assert scan.files == {"a.wasm": 1, "manifest.yaml": 0}
    assert scan.small == {"manifest.yaml": b"first"}


def test_whiteout_deletes_a_file_and_everything_under_a_folder(tmp_path: Path) -> None:
    paths = layers(
        tmp_path,
        tar_layer([Entry("keep.wasm"), Entry("gone.wasm"), Entry("dir/x"), Entry("dir/sub/y")]),
        tar_layer([Entry(".wh.gone.wasm"), Entry(".wh.dir")]),
    )
    assert scan_layers(paths, LIMITS, frozenset()).files == {"keep.wasm": 0}


def test_opaque_whiteout_empties_a_folder_of_lower_layers_only(tmp_path: Path) -> None:
    paths = layers(
        tmp_path,
        tar_layer([Entry("dir/old"), Entry("other")]),
        tar_layer([Entry("dir/new"), Entry("dir/.wh..wh..opq")]),
    )
    assert scan_layers(paths, LIMITS, frozenset()).files == {"dir/new": 1, "other": 0}


def test_whiteout_of_manifest_yaml_forgets_its_content(tmp_path: Path) -> None:
    paths = layers(
        tmp_path, tar_layer([Entry("manifest.yaml", b"x")]), tar_layer([Entry(".wh.manifest.yaml")])
    )
    assert scan_layers(paths, LIMITS, frozenset({"manifest.yaml"})).small == {}


def test_layer_ending_without_end_of_archive_blocks_is_read(tmp_path: Path) -> None:
    data = tar_layer([Entry("plugin.wasm", b"abc")], compress=False)
    paths = layers(tmp_path, data[: _first_member_end(data)])
    assert scan_layers(paths, LIMITS, frozenset()).files == {"plugin.wasm": 0}


def test_module_cut_short_inside_its_data_is_an_error(tmp_path: Path) -> None:
    data = tar_layer([Entry("plugin.wasm", b"x" * 2000)], compress=False)
    paths = layers(tmp_path, data[: _first_member_end(data) - 1500])
    with (tmp_path / "out").open("wb") as sink, pytest.raises(InvalidImage):
        copy_file(paths[0], 0, "plugin.wasm", sink, LIMITS)


def _first_member_end(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.getmembers()[-1]
        return member.offset_data + member.size


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry("/abs"), "absolute path"),
        (Entry("a/../../b"), "escapes the root"),
        (Entry("link", kind="symlink", target="x"), "symbolic link"),
        (Entry("hard", kind="hardlink", target="x"), "hard link"),
        (Entry("dev", kind="device"), "device or FIFO"),
    ],
)
def test_unsafe_entries_are_refused(tmp_path: Path, entry: Entry, message: str) -> None:
    with pytest.raises(UnsafeArchive, match=message):
        scan_layers(layers(tmp_path, tar_layer([entry])), LIMITS, frozenset())


def test_decompression_stops_at_the_limit(tmp_path: Path) -> None:
    bomb = tar_layer([Entry("zeros", b"\0" * (4 * 1024 * 1024))])
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        scan_layers(layers(tmp_path, bomb), Limits(decompressed=1024 * 1024), frozenset())


def test_corrupt_gzip_is_an_invalid_image(tmp_path: Path) -> None:
    data = tar_layer([Entry("plugin.wasm", b"x" * 5000)])
    broken = data[:20] + bytes(b ^ 0xFF for b in data[20:60]) + data[60:]
    with pytest.raises(InvalidImage):
        scan_layers(layers(tmp_path, broken), LIMITS, frozenset())


def test_manifest_yaml_over_its_limit_is_refused(tmp_path: Path) -> None:
    big = tar_layer([Entry("manifest.yaml", b"#" * 2048)])
    with pytest.raises(SizeLimitExceeded, match=r"manifest\.yaml"):
        scan_layers(layers(tmp_path, big), Limits(manifest_yaml=1024), frozenset({"manifest.yaml"}))


async def test_valid_module_reports_its_hash_and_abi_version(tmp_path: Path) -> None:
    module = proxy_wasm_module()
    (tmp_path / "m.wasm").write_bytes(module)
    info = await ModuleChecker(LIMITS).check(tmp_path / "m.wasm", "m.wasm")
    assert info.abi_versions == ("0_2_1",)
    assert info.size == len(module)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04 a zip file", "is not a WebAssembly module"),
        (b"\0asm\x0d\x00\x01\x00", "is a WebAssembly component, not a core module"),
        (b"\0asm\x02\x00\x00\x00", "has WebAssembly version 02000000"),
        (b"\0asm\x01\x00\x00\x00\xff\xff", "does not compile"),
        (module_without_abi(), "does not export proxy_abi_version_*"),
    ],
)
async def test_modules_that_are_not_proxy_wasm_are_refused(
    tmp_path: Path, data: bytes, message: str
) -> None:
    (tmp_path / "m.wasm").write_bytes(data)
    with pytest.raises(InvalidModule, match=message.replace("*", r"\*")):
        await ModuleChecker(LIMITS).check(tmp_path / "m.wasm", "m.wasm")
