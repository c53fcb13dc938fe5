"""Consoles for command output: tables as wide as the terminal, or wide enough when
the output goes to a file or a pipe (where rich would assume 80 columns)."""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 160


def make_console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr, width=width)
