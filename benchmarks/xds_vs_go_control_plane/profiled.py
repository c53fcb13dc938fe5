"""Run ``meshext`` under cProfile and write the profile when SIGTERM ends it.

``run.py --profile FILE`` starts the server through this module::

    python profiled.py FILE serve --config ...

SIGTERM (how run.py stops the server) becomes a ``KeyboardInterrupt``, so the server
shuts down as on Ctrl-C and the profile of its main thread (the event loop, where all
of meshext's Python work runs) is written to ``FILE``; read it with ``pstats``.
"""

from __future__ import annotations

import cProfile
import signal
import sys

from meshext.cli.main import main as meshext_main


def main() -> int:
    output, argv = sys.argv[1], sys.argv[2:]

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    sys.argv = ["meshext", *argv]
    profiler = cProfile.Profile()
    code = 0
    try:
        code = profiler.runcall(meshext_main) or 0
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        profiler.dump_stats(output)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
