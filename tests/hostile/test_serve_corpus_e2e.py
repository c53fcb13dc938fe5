"""The whole hostile corpus, plus hostile images and registries, served at once while a
good extension keeps running in a real Envoy sidecar.

One control plane serves a folder with a mesh and one good extension; a sidecar runs
it. Then every case is added below the folder in one go, beside extensions whose
images are hostile (local files outside the allowed folders, FIFOs, devices, files
too large, registries at internal addresses, a registry with endless error bodies, a
trickling one, a redirect to a metadata address). Each must end in its expected,
clear error; nothing invalid may be accepted; the admin API and xDS must keep
answering; and the next edit of the good extension must still reach Envoy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshext.images.config import RegistryConfig
from meshext.server.modules import RunningServer
from tests.envoy.support import build_examples
from tests.hostile.corpus import CASES_FOLDER, Case, all_config_cases, build_case
from tests.hostile.corpus import sme as corpus_sme
from tests.hostile.hostile_registry import hostile_registry
from tests.network import free_port
from tests.server.mesh import Mesh, running_mesh, serve_options, sme

pytestmark = pytest.mark.e2e

HTTPBIN = {"app": "httpbin", "version": "v1"}
SECRET = "TOPSECRET-CONTENT-7f3a"


@dataclasses.dataclass(frozen=True)
class ImageCase:
    name: str
    image: str
    message: str


def image_case_names() -> list[str]:
    return [c.name for c in image_cases(Path("/x"), Path("/y"), 1, 2)]


def image_cases(
    allowed: Path, outside: Path, registry_port: int, closed_port: int
) -> list[ImageCase]:
    hostile = f"127.0.0.1:{registry_port}"
    return [
        ImageCase("img-outside", f"file:{outside / 'shadow.wasm'}", "not below a folder"),
        ImageCase("img-etc-shadow", "file:/etc/shadow", "not below a folder"),
        ImageCase("img-dev-zero", "file:/dev/zero", "not below a folder"),
        ImageCase("img-fifo", f"file:{allowed / 'pipe.wasm'}", "only regular files are read"),
        ImageCase("img-link-out", f"file:{allowed / 'escape.wasm'}", "not below a folder"),
        ImageCase("img-not-wasm", f"file:{allowed / 'secret.wasm'}", "not a WebAssembly module"),
        ImageCase("img-too-big", f"file:{allowed / 'big.wasm'}", "over the limit"),
        ImageCase("img-missing", f"file:{allowed / 'missing.wasm'}", "no module file"),
        ImageCase("img-folder", f"file:{allowed / 'folder.wasm'}", "a folder"),
        ImageCase("img-dev-link", f"file:{allowed / 'zero.wasm'}", "not below a folder"),
        ImageCase("layout-outside", f"oci-layout:{outside}", "not below a folder"),
        ImageCase("layout-index-fifo", f"oci-layout:{allowed / 'fifo-layout'}", "not a regular"),
        ImageCase("layout-index-huge", f"oci-layout:{allowed / 'huge-layout'}", "over the limit"),
        ImageCase("reg-metadata", "169.254.169.254/team/x:1", "link-local"),
        ImageCase("reg-loopback-other", "127.0.0.2:5000/team/x:1", "loopback"),
        ImageCase("reg-localhost", "localhost:5000/team/x:1", "loopback"),
        ImageCase("reg-private", "10.1.2.3:5000/team/x:1", "private"),
        ImageCase("reg-ipv6-loopback", "[::1]:5000/team/x:1", "loopback"),
        ImageCase("reg-closed-port", f"127.0.0.1:{closed_port}/team/x:1", "failed after"),
        ImageCase("reg-big-error", f"{hostile}/bigerror:1", "HTTP 500"),
        ImageCase("reg-trickle", f"{hostile}/trickle:1", "allowed for one pull"),
        ImageCase("reg-huge-manifest", f"{hostile}/hugemanifest:1", "over the limit"),
        ImageCase("reg-garbage", f"{hostile}/garbage:1", "not valid JSON"),
        ImageCase("reg-redirect-metadata", f"{hostile}/redirect:1", "link-local"),
    ]


def build_image_files(allowed: Path, outside: Path) -> None:
    allowed.mkdir(parents=True)
    outside.mkdir(parents=True)
    (outside / "shadow.wasm").write_text(SECRET)
    (outside / "index.json").write_text("{}")
    os.mkfifo(allowed / "pipe.wasm")
    (allowed / "escape.wasm").symlink_to(outside / "shadow.wasm")
    (allowed / "zero.wasm").symlink_to("/dev/zero")
    (allowed / "secret.wasm").write_text(SECRET)
    with (allowed / "big.wasm").open("wb") as big:
        big.truncate(65 << 20)  # sparse: 65 MiB claimed, nothing on disk
    (allowed / "folder.wasm").mkdir()
    (allowed / "fifo-layout").mkdir()
    os.mkfifo(allowed / "fifo-layout" / "index.json")
    (allowed / "huge-layout").mkdir()
    (allowed / "huge-layout" / "index.json").write_text(" " * (5 << 20))


async def admin_json(mesh: Mesh, path: str) -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(mesh.running.admin_url + path)
        response.raise_for_status()
        return response.json()


@pytest.fixture
async def registry() -> AsyncIterator[RunningServer]:
    async with hostile_registry() as server:
        yield server


async def test_hostile_configuration_and_images_never_stop_the_good_extension(
    tmp_path: Path, registry: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    build_image_files(allowed, outside)
    options = dataclasses.replace(
        serve_options(tmp_path),
        registry=RegistryConfig(insecure_registries=frozenset({"127.0.0.1"}), pull_deadline=4.0),
        local_images=(build_examples(), allowed),
    )
    config_cases = all_config_cases()
    images = image_cases(allowed, outside, registry.port, free_port())
    async with running_mesh(tmp_path, options) as mesh:
        mesh.control_plane()
        mesh.write("good.yaml", sme("bookinfo", "good", "header-append", config={"value": "one"}))
        sidecar = await mesh.sidecar("httpbin", "bookinfo", HTTPBIN)
        await mesh.until(sidecar.appended, lambda h: h == ["one"], "the good extension")

        for case in config_cases:
            build_case(case, mesh.config / CASES_FOLDER / case.name)
        documents = [corpus_sme(c.name, {"image": c.image}) for c in images]
        mesh.write("images.yaml", *(json.dumps(d) for d in documents))

        def failed(reports: list[dict[str, Any]], case: ImageCase) -> bool:
            report = next((r for r in reports if r["name"] == case.name), None)
            deployment = report["status"]["deployment"] if report else {}
            return not deployment.get("ready") and case.message in deployment.get("message", "")

        async def extensions() -> list[dict[str, Any]]:
            body: list[dict[str, Any]] = (await admin_json(mesh, "/api/v1/extensions"))[
                "extensions"
            ]
            return body

        reports = await mesh.until(
            extensions,
            lambda rs: all(failed(rs, c) for c in images),
            "every hostile image refused with its reason",
        )
        for image in images:
            status = next(r for r in reports if r["name"] == image.name)["status"]
            assert SECRET not in json.dumps(status), image.name

        errors: list[str] = (await admin_json(mesh, "/api/v1/errors"))["errors"]
        for case in config_cases:
            check_config_case(case, mesh.config / CASES_FOLDER / case.name, errors)
        expected = 1 + len(images) + sum(c.valid for c in config_cases)
        assert len(reports) == expected, [r["name"] for r in reports]

        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(mesh.running.admin_url + "/healthz")).status_code == 200
            assert (await client.get(mesh.running.admin_url + "/readyz")).status_code == 200
        assert await sidecar.appended() == ["one"]

        mesh.write("good.yaml", sme("bookinfo", "good", "header-append", config={"value": "two"}))
        await mesh.until(sidecar.appended, lambda h: h == ["two"], "the next change applied")
        assert mesh.running.control.faults.current() == []
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


def check_config_case(case: Case, folder: Path, errors: list[str]) -> None:
    mine = [e for e in errors if f"{folder}/" in e]
    if not case.errors:
        assert mine == [], f"{case.name}: {mine}"
    for expected in case.errors:
        assert any(expected in e for e in mine), f"{case.name}: {expected!r} not in {mine}"
