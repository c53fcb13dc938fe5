"""Hostile input benchmark: what refusing hostile input costs, and what it spares.

Measures, with ``--repetitions`` runs each (median and maximum reported):

* the safe loader refusing a billion-laughs document (9 levels of 10 aliases), a
  document nested 5,000 deep, a recursive alias, and 4 MiB of one-value lines (the
  worst case of the per-file parsing bound);
* ``load_folder`` over the whole hostile corpus of the test suite (109 cases);
* the admin API's ``/healthz`` round trip, idle and while a control plane (in this
  process, on this event loop, as ``meshext serve`` runs) reloads the corpus folder
  plus the worst-case 4 MiB file;
* the peak resident memory of resolving an image whose registry answers 500 with a
  1 GiB body (the client reads 16 KiB of it).

Writes the results into README.md beside this file.

    .venv/bin/python benchmarks/hostile_input/run.py [--repetitions 7]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from meshext.api import safe_yaml
from meshext.api.meta import ResourceKey
from meshext.images.cache import ModuleCache
from meshext.images.config import NO_RETRIES, RegistryConfig
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import MappingPullSecretStore
from meshext.mesh.extension import Extension, PullSettings
from meshext.server.app import ServeOptions, running_control_plane
from meshext.sources.folder import load_folder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the test suite's corpus and hostile registry


def laughs() -> str:
    lines = ['l0: &l0 "lollollol"']
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def timed(work: Callable[[], object], repetitions: int) -> list[float]:
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return times


def refuse(text: str) -> Callable[[], object]:
    def work() -> object:
        try:
            return list(safe_yaml.load_all(text))
        except safe_yaml.UnsafeYamlError as exc:
            return exc

    return work


def build_corpus(folder: Path) -> None:
    from tests.hostile.corpus import all_config_cases, build_case  # noqa: PLC0415

    for case in all_config_cases():
        build_case(case, folder / "cases" / case.name)


async def healthz_times(url: str, stop: asyncio.Event) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=60) as client:
        while not stop.is_set():
            start = time.perf_counter()
            (await client.get(url)).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.01)
    return times


async def admin_latency(workdir: Path, seconds: float) -> tuple[list[float], list[float]]:
    config = workdir / "config"
    config.mkdir(parents=True)
    options = ServeOptions(
        config=config,
        xds_address="127.0.0.1:0",
        admin_address="127.0.0.1:0",
        module_address="127.0.0.1:0",
        cache_dir=workdir / "cache",
    )
    async with running_control_plane(options) as running:
        url = running.admin_url + "/healthz"
        stop = asyncio.Event()
        idle = asyncio.create_task(healthz_times(url, stop))
        await asyncio.sleep(seconds)
        stop.set()
        idle_times = await idle
        stop = asyncio.Event()
        busy = asyncio.create_task(healthz_times(url, stop))
        await asyncio.to_thread(build_corpus, config)
        (config / "worst.yaml").write_text("- 1\n" * (1 << 20))

        def loaded() -> bool:
            errors = [str(e) for e in running.control.config_errors]
            return len(errors) > 90 and any("worst.yaml" in e for e in errors)

        while not loaded():  # the corpus and the worst-case file read
            await asyncio.sleep(0.05)
        stop.set()
        return idle_times, await busy


async def error_body_rss(workdir: Path) -> tuple[int, int]:
    from tests.hostile.hostile_registry import hostile_registry  # noqa: PLC0415

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with hostile_registry() as registry:
        resolver = ImageResolver(
            ModuleCache(workdir / "rss-cache"),
            MappingPullSecretStore(),
            registry_config=RegistryConfig(insecure_registries=frozenset({"127.0.0.1"})),
            retries=NO_RETRIES,
        )
        ext = Extension(
            key=ResourceKey("ServiceMeshExtension", "bench", "big"),
            generation=1,
            image=f"127.0.0.1:{registry.port}/bigerror:1",
            selector={},
            config="",
            phase=None,
            priority=None,
            pull=PullSettings(),
        )
        resolution = await resolver.resolve(ext)
        await resolver.aclose()
        assert "HTTP 500" in resolution.message, resolution.message
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return before, after


def row(name: str, times: list[float]) -> str:
    return f"| {name} | {statistics.median(times):.1f} ms | {max(times):.1f} ms | {len(times)} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()
    rows = [
        row(
            "refuse a billion laughs (10^9 values expanded)",
            timed(refuse(laughs()), args.repetitions),
        ),
        row(
            "refuse nesting 5,000 deep",
            timed(refuse("a: " + "[" * 5000 + "]" * 5000 + "\n"), args.repetitions),
        ),
        row("refuse a recursive alias", timed(refuse("&c {self: *c}\n"), args.repetitions)),
        row(
            "refuse 4 MiB of one-value lines (the parsing bound)",
            timed(refuse("- 1\n" * (1 << 20)), args.repetitions),
        ),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="meshext-hostile-bench-"))
    try:
        corpus = workdir / "corpus"
        build_corpus(corpus)
        rows.append(
            row(
                "load_folder over the 109-case corpus",
                timed(lambda: load_folder(corpus), args.repetitions),
            )
        )
        idle, busy = asyncio.run(admin_latency(workdir / "serve", 3.0))
        rows.append(row("`/healthz` round trip, idle", idle))
        rows.append(row("`/healthz` round trip while the corpus and a worst-case file load", busy))
        before, after = asyncio.run(error_body_rss(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = "\n".join(["| what | median | max | runs |", "|---|---|---|---|", *rows])
    machine = (
        f"{platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}"
    )
    rss = (
        f"Peak resident memory before resolving an image whose registry answers 500 with "
        f"a 1 GiB body: {before / 1024:.0f} MiB; after: {after / 1024:.0f} MiB."
    )
    readme = (HERE / "README.md").read_text() if (HERE / "README.md").exists() else ""
    head = readme.split("## Results", 1)[0].rstrip() or "# Hostile input benchmark"
    (HERE / "README.md").write_text(
        f"{head}\n\n## Results\n\n{table}\n\n{rss}\n\nMachine: {machine}, 2 shared cores.\n"
    )
    print(table)
    print(rss)


if __name__ == "__main__":
    main()
