"""The stand-in: a pass-through proxy-wasm module a proxy runs, under an extension's
filter name, while it has not accepted the extension's real module.

With remote delivery Envoy fetches a module in the background and, with
``nack_on_code_cache_miss``, rejects the configuration until the module is in its
cache (see :mod:`meshext.server.fetch_retries`). Meanwhile the extension's filter
must have a configuration: a filter without one answers 500, and a listener waiting
for one does not serve. So the filter gets this module, delivered inline (nothing to
fetch), fail-open, as its ECDS ``default_config`` and as the resource meshext sends
while the real module is not accepted. It lets every request and connection through.

The module exports only what Envoy requires to start a plugin (the ABI version,
memory and its allocator, context creation, VM start and configure, both answering
true); a proxy-wasm host treats every callback a module does not export as
"continue". It is written here in WAT and assembled by wasmtime (already needed by
the pre-flight sandbox): a module of a few hundred bytes is simpler to keep
readable as text than as an SDK build.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Final

import wasmtime
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2

from meshext.envoy.resources import pack
from meshext.envoy.wasm import V8_RUNTIME

STAND_IN_VM_ID: Final = "meshext.stand-in"

STAND_IN_WAT: Final = """
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (if (i32.gt_u (global.get $next) (i32.const 60000))
      (then (global.set $next (i32.add (i32.const 1024) (local.get $size)))
            (local.set $at (i32.const 1024))))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1)))
"""


@functools.cache
def stand_in_module() -> bytes:
    """The stand-in's bytes (assembled once)."""
    return bytes(wasmtime.wat2wasm(STAND_IN_WAT))


@functools.cache
def stand_in_sha256() -> str:
    return hashlib.sha256(stand_in_module()).hexdigest()


def stand_in_plugin(plugin_name: str) -> Any:
    """The stand-in's ``PluginConfig``: inline code, fail-open, named like the extension
    (Envoy's ``wasm.<name>.*`` stats and logs)."""
    return wasm_pb2.PluginConfig(
        name=plugin_name,
        root_id="",
        vm_config=wasm_pb2.VmConfig(
            vm_id=STAND_IN_VM_ID,
            runtime=V8_RUNTIME,
            code=base_pb2.AsyncDataSource(
                local=base_pb2.DataSource(inline_bytes=stand_in_module())
            ),
        ),
        failure_policy=wasm_pb2.FAIL_OPEN,
    )


def stand_in_filter(plugin_name: str, *, network: bool) -> Any:
    """The stand-in as an HTTP (or, with ``network``, a network) wasm filter."""
    plugin = stand_in_plugin(plugin_name)
    if network:
        return network_wasm_pb2.Wasm(config=plugin)
    return wasm_filter_pb2.Wasm(config=plugin)


def stand_in_config(config_name: str, plugin_name: str, *, network: bool) -> Any:
    """The ECDS resource ``config_name`` holding the stand-in."""
    return extension_pb2.TypedExtensionConfig(
        name=config_name, typed_config=pack(stand_in_filter(plugin_name, network=network))
    )
