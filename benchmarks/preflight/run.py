"""Pre-flight cost per example module: a first run (compile and start), a run of a
new configuration of a module already compiled, a remembered result, and a restart
of ``meshext serve``: the first start of a combination with an empty on-disk store
(compile, start, write the result) against a new runner reading the kept result.

    .venv/bin/python benchmarks/preflight/run.py --repetitions 5

Prints a Markdown table of medians and writes ``results.json`` beside this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from meshext.preflight.host import Limits, PreflightInput, SandboxEngine
from meshext.preflight.runner import PreflightKey, PreflightRunner
from meshext.preflight.store import PreflightStore

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "C (header-append, no SDK)": (
        ROOT / "examples/extensions/build/header-append.wasm",
        "",
        ["one", "two"],
    ),
    "AssemblyScript SDK (as-header-append)": (
        ROOT / "examples/sdk/build/as-header-append.wasm",
        "as_header_append",
        ["one", "two"],
    ),
    "Go SDK (go-header-append)": (
        ROOT / "examples/sdk/build/go-header-append.wasm",
        "",
        ['{"name":"x-a","value":"1"}', '{"name":"x-a","value":"2"}'],
    ),
}


def measure(path: Path, root_id: str, configs: list[str]) -> dict[str, float]:
    data = path.read_bytes()
    engine = SandboxEngine()
    started = time.perf_counter()
    first = engine.run(data, PreflightInput(root_id, configs[0].encode()), Limits())
    cold = time.perf_counter() - started
    started = time.perf_counter()
    second = engine.run(data, PreflightInput(root_id, configs[1].encode()), Limits())
    warm = time.perf_counter() - started
    if not (first.passed and second.passed):
        raise SystemExit(f"{path.name}: {first.describe()}; {second.describe()}")

    runner = PreflightRunner()
    key = PreflightKey.of("bench", root_id, configs[0])

    async def remembered() -> float:
        await runner.run(key, path)
        started = time.perf_counter()
        for _ in range(1000):
            await runner.run(key, path)
        return (time.perf_counter() - started) / 1000

    first_start, restart = measure_restart(path, root_id, configs[0])
    return {
        "size_bytes": len(data),
        "cold_s": cold,
        "warm_s": warm,
        "remembered_s": asyncio.run(remembered()),
        "first_start_s": first_start,
        "restart_s": restart,
    }


def measure_restart(path: Path, root_id: str, config: str) -> tuple[float, float]:
    """Seconds for a combination's result: with an empty store (as on a first start of
    ``meshext serve``), then by a new runner on the same store (after a restart)."""
    key = PreflightKey.of("restart-" + path.name, root_id, config)
    with tempfile.TemporaryDirectory() as folder:

        async def once() -> float:
            runner = PreflightRunner(store=PreflightStore(Path(folder)))
            started = time.perf_counter()
            result = await runner.run(key, path)
            elapsed = time.perf_counter() - started
            if not result.passed:
                raise SystemExit(f"{path.name}: {result.describe()}")
            return elapsed

        return asyncio.run(once()), asyncio.run(once())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts/setup.d/30-sdk-examples.sh")], check=True)
    subprocess.run(["make", "-s", "-C", str(ROOT / "examples/extensions"), "all"], check=True)
    results: dict[str, dict[str, float]] = {}
    for name, (path, root_id, configs) in MODULES.items():
        runs = [measure(path, root_id, configs) for _ in range(args.repetitions)]
        results[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("| module | size | first run (compile + start) | new configuration | remembered |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['size_bytes'] / 1024:.0f} KiB | {r['cold_s'] * 1000:.0f} ms"
            f" | {r['warm_s'] * 1000:.1f} ms | {r['remembered_s'] * 1e6:.1f} µs |"
        )
    print("\n| module | first start (empty store) | restart (result kept on disk) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['first_start_s'] * 1000:.0f} ms | {r['restart_s'] * 1000:.2f} ms |")
    machine = f"{platform.machine()}, {platform.system()} {platform.release()}"
    print(f"\nMachine: {machine}, Python {platform.python_version()}")
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
