"""Checks a module passes before anything uses it.

In order, cheapest first: the size limit; the WebAssembly magic and version (a
component-model binary is named as such, not as garbage); compilation with
wasmtime, in a worker thread because compiling is CPU-bound and a big module would
stall every other task of the event loop; and a ``proxy_abi_version_*`` export,
which is how Envoy recognises a proxy-wasm module.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from meshext.images.config import Limits
from meshext.images.errors import InvalidModule, SizeLimitExceeded

WASM_MAGIC = b"\0asm"
CORE_VERSION = b"\x01\x00\x00\x00"
ABI_EXPORT_PREFIX = "proxy_abi_version_"


@dataclass(frozen=True)
class ModuleInfo:
    sha256: str
    size: int
    abi_versions: tuple[str, ...]
    """The ABI versions the module exports, e.g. ``("0_2_1",)``."""


class ModuleChecker:
    """Validates modules; one wasmtime engine is shared by every check."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._engine: wasmtime.Engine | None = None

    async def check(self, path: Path, what: str) -> ModuleInfo:
        """Check the module at ``path``; ``what`` names it in error messages."""
        size = path.stat().st_size
        if size > self._limits.module:
            raise SizeLimitExceeded(
                f"{what} is {size} bytes, over the module limit of {self._limits.module} bytes"
            )
        data = path.read_bytes()
        check_header(data, what)
        exports = await asyncio.to_thread(self._compile, data, what)
        abi = tuple(
            sorted(
                name.removeprefix(ABI_EXPORT_PREFIX)
                for name in exports
                if name.startswith(ABI_EXPORT_PREFIX)
            )
        )
        if not abi:
            raise InvalidModule(
                f"{what} does not export proxy_abi_version_*: not a proxy-wasm module"
            )
        return ModuleInfo(hashlib.sha256(data).hexdigest(), len(data), abi)

    def _compile(self, data: bytes, what: str) -> list[str]:
        if self._engine is None:
            self._engine = wasmtime.Engine()
        try:
            module = wasmtime.Module(self._engine, data)
        except wasmtime.WasmtimeError as exc:
            reason = str(exc).strip().splitlines()
            raise InvalidModule(
                f"{what} does not compile: {' '.join(line.strip() for line in reason if line.strip())}"
            ) from exc
        return [export.name for export in module.exports]


def check_header(data: bytes, what: str) -> None:
    """Refuse anything that is not a core WebAssembly module by its first 8 bytes."""
    if data[:4] != WASM_MAGIC:
        raise InvalidModule(
            f"{what} is not a WebAssembly module (it does not start with b'\\x00asm')"
        )
    if data[4:8] != CORE_VERSION:
        if len(data) >= 8 and data[6:8] == b"\x01\x00":
            raise InvalidModule(
                f"{what} is a WebAssembly component, not a core module; proxy-wasm needs a "
                "core module"
            )
        raise InvalidModule(f"{what} has WebAssembly version {data[4:8].hex()}, expected 01000000")
