"""The example extensions built with real proxy-wasm SDKs (Go, AssemblyScript)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.d" / "30-sdk-examples.sh"
BUILD = ROOT / "examples" / "sdk" / "build"

AS_ROOT_ID = "as_header_append"
"""The root id the AssemblyScript example registers its root context under."""


def sdk_module(name: str) -> Path:
    """``go-header-append`` or ``as-header-append``, built by the setup fragment (a no-op
    when up to date)."""
    subprocess.run([str(SETUP)], check=True)
    path = BUILD / f"{name}.wasm"
    assert path.is_file(), path
    return path
