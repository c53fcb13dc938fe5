"""Render result files of run.py as the Markdown table of the README.

.venv/bin/python benchmarks/xds_vs_go_control_plane/table.py results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    "scenario",
    "proxies",
    "change → all ACKed p50",
    "p99",
    "server CPU / change",
    "RSS connected (max)",
    "connect all",
    "server CPU to connect",
    "client CPU / change",
    "load avg (1 min)",
)


def pair(result: dict[str, Any], key: str, unit: str = " s", digits: int = 2) -> str:
    a, b = result["meshext"].get(key), result["go_control_plane"].get(key)
    if a is None or b is None:
        return "n/a"
    return f"{a:.{digits}f} / {b:.{digits}f}{unit}"


def row(result: dict[str, Any]) -> str:
    m, g = result["meshext"], result["go_control_plane"]
    rss = (
        f"{m['server_rss_connected_mib']:.0f} ({m['server_rss_max_mib']:.0f}) / "
        f"{g['server_rss_connected_mib']:.0f} ({g['server_rss_max_mib']:.0f}) MiB"
    )
    load = f"{m['load_average_before'][0]:.1f} / {g['load_average_before'][0]:.1f}"
    cells = [
        result["scenario"].rsplit("-", 1)[0],
        f"{result['proxies']:,}",
        pair(result, "all_acked_p50_s"),
        pair(result, "all_acked_p99_s"),
        pair(result, "server_cpu_per_change_s"),
        rss,
        pair(result, "connect_all_s", digits=1),
        pair(result, "server_cpu_connect_s", digits=1),
        pair(result, "client_cpu_per_change_s"),
        load,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    results = [json.loads(Path(name).read_text()) for name in sys.argv[1:]]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for result in results:
        print(row(result))


if __name__ == "__main__":
    main()
