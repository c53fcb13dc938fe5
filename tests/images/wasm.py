"""Proxy-wasm test modules, written in WAT and compiled with ``wasmtime.wat2wasm``.

The module implements the handful of ABI 0.2.1 entry points Envoy calls first and
does nothing else; a marker string in a data segment makes modules with different
markers hash differently.
"""

from __future__ import annotations

import wasmtime

PROXY_WASM_WAT = """
(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "{marker}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_log (i32.const 2) (i32.const 16) (i32.const {length})))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
)
"""

PLAIN_WASM_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))
)
"""


def proxy_wasm_module(marker: str = "meshext test module") -> bytes:
    """A valid proxy-wasm (ABI 0.2.1) module; different markers give different bytes."""
    text = PROXY_WASM_WAT.replace("{marker}", marker).replace("{length}", str(len(marker)))
    return bytes(wasmtime.wat2wasm(text))


def module_without_abi() -> bytes:
    """Valid WebAssembly that is not a proxy-wasm module (no proxy_abi_version_*)."""
    return bytes(wasmtime.wat2wasm(PLAIN_WASM_WAT))


def padded_module(size: int, marker: str = "padded") -> bytes:
    """A proxy-wasm module grown to about ``size`` bytes by a custom section."""
    module = proxy_wasm_module(marker)
    payload_size = max(0, size - len(module) - 16)
    name = b"meshext.padding"
    body = _leb128(len(name)) + name + bytes((i * 7919) % 251 for i in range(payload_size))
    return module + b"\x00" + _leb128(len(body)) + body


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
