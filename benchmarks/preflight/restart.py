"""A restart of ``meshext serve`` with a Go SDK extension: seconds from start until the
extension's status is ready (image resolved, pre-flight passed), on a first start
with an empty cache folder, on a restart with the same folder, where the module and
its pre-flight result are kept, and on a restart with the module kept but the
pre-flight results removed (what every restart cost before they were kept).

    .venv/bin/python benchmarks/preflight/restart.py --repetitions 3

Everything listens on loopback; the image is a local file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from meshext.identity.authority import CaSettings
from meshext.server.app import ServeOptions, running_control_plane

ROOT = Path(__file__).resolve().parents[2]
GO_MODULE = ROOT / "examples/sdk/build/go-header-append.wasm"

MESH = """\
apiVersion: maistra.io/v2
kind: ServiceMeshControlPlane
metadata: {name: basic, namespace: istio-system}
spec: {techPreview: {wasmExtensions: {enabled: true}}}
---
apiVersion: maistra.io/v1
kind: ServiceMeshMemberRoll
metadata: {name: default, namespace: istio-system}
spec: {members: [bookinfo]}
"""


def extension() -> str:
    return json.dumps(
        {
            "apiVersion": "maistra.io/v1",
            "kind": "ServiceMeshExtension",
            "metadata": {"name": "go-tag", "namespace": "bookinfo"},
            "spec": {
                "image": f"file:{GO_MODULE}",
                "phase": "PostAuthZ",
                "config": {"name": "x-go", "value": "yes"},
            },
        }
    )


async def until_ready(workdir: Path) -> float:
    options = ServeOptions(
        config=workdir / "config",
        xds_address="127.0.0.1:0",
        admin_address="127.0.0.1:0",
        module_address="127.0.0.1:0",
        cache_dir=workdir / "cache",
        ca=CaSettings(directory=workdir / "ca"),
        local_images=(GO_MODULE.parent,),
    )
    started = time.perf_counter()
    async with running_control_plane(options) as running:
        while True:
            reports = running.control.reports()
            if reports and all(r.status.deployment.ready for r in reports):
                return time.perf_counter() - started
            await asyncio.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts/setup.d/30-sdk-examples.sh")], check=True)
    first, again, without = [], [], []
    for _ in range(args.repetitions):
        workdir = Path(tempfile.mkdtemp(prefix="meshext-restart-"))
        try:
            (workdir / "config").mkdir()
            (workdir / "config" / "00-mesh.yaml").write_text(MESH)
            (workdir / "config" / "go.yaml").write_text(extension() + "\n")
            first.append(asyncio.run(until_ready(workdir)))
            again.append(asyncio.run(until_ready(workdir)))
            shutil.rmtree(workdir / "cache" / "preflight")
            without.append(asyncio.run(until_ready(workdir)))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print("| Go SDK extension, `meshext serve` start until status ready | median | runs |")
    print("|---|---|---|")
    rows = {
        "first start (empty cache folder)": first,
        "restart (module and pre-flight result kept)": again,
        "restart without kept results (module kept, `preflight/` removed)": without,
    }
    for name, times in rows.items():
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"| {name} | {statistics.median(times):.2f} s | {runs} |")


if __name__ == "__main__":
    main()
