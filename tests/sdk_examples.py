"""The example extensions built with real proxy-wasm SDKs (Go, AssemblyScript)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.d" / "30-sdk-examples.sh"
BUILD = ROOT / "examples" / "sdk" / "build"

AS_ROOT_ID = "as_header_append"
"""The root id the AssemblyScript example registers its root context under."""


@functools.cache
def _built() -> None:
    """Runs the setup fragment once per test session (a no-op when up to date)."""
    subprocess.run([str(SETUP)], check=True)


def sdk_module(name: str) -> Path:
    """``go-header-append`` or ``as-header-append``, built by the setup fragment (a no-op
    when up to date)."""
    _built()
    path = BUILD / f"{name}.wasm"
    assert path.is_file(), path
    return path
