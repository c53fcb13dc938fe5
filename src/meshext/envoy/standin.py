"""The stand-in: a tiny proxy-wasm module a proxy runs, under an extension's filter
name, while it has not accepted the extension's real module.

With remote delivery Envoy fetches a module in the background and, with
``nack_on_code_cache_miss``, rejects the configuration until the module is in its
cache (see :mod:`meshext.server.fetch_retries`). Meanwhile the extension's filter
must have a configuration: a filter without one answers 500, and a listener waiting
for one does not serve. So the filter gets a stand-in, delivered inline (nothing to
fetch), as its ECDS ``default_config`` and as the resource meshext sends while the
real module is not accepted. The listener and every other extension keep serving.

What the stand-in does with traffic follows the extension's failure policy, as Envoy
does for a plugin that failed to load:

- ``FAIL_OPEN``: the pass-through module (:data:`STAND_IN_WAT`) lets every request
  and connection through; the chain runs as if the extension were absent.
- ``FAIL_CLOSED`` (the default) and ``FAIL_RELOAD``: the closed module
  (:data:`CLOSED_STAND_IN_WAT`) answers every request with 503 and closes every
  connection of a NETWORK extension, so an extension that enforces something is
  never bypassed because its module has not arrived.

The pass-through module exports only what Envoy requires to start a plugin (the ABI
version, memory and its allocator, context creation, VM start and configure, both
answering true); a proxy-wasm host continues every callback a module does not
export. Both are written here in WAT and assembled by wasmtime (already needed by
the pre-flight sandbox): modules of a few hundred bytes are simpler to keep readable
as text than as SDK builds.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import wasmtime
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2

from meshext.envoy.resources import pack
from meshext.envoy.wasm import V8_RUNTIME
from meshext.mesh.extension import FailurePolicy

STAND_IN_VM_ID: Final = "meshext.stand-in"

CLOSED_STAND_IN_VM_ID: Final = "meshext.stand-in.closed"

_START = """
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
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
"""

STAND_IN_WAT: Final = f"""
(module
  (memory (export "memory") 1)
  {_START})
"""
"""The pass-through stand-in (``FAIL_OPEN`` extensions)."""

CLOSED_BODY: Final = (
    b"meshext: an extension of this workload is not running on this proxy yet (fail-closed)\n"
)
CLOSED_DETAILS: Final = b"meshext_extension_not_loaded"
_CLOSED_BODY_WAT: Final = CLOSED_BODY.decode().replace("\n", "\\0a")

CLOSED_STAND_IN_WAT: Final = f"""
(module
  (import "env" "proxy_send_local_response"
    (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{CLOSED_DETAILS.decode()}")
  (data (i32.const 64) "{_CLOSED_BODY_WAT}")
  {_START}
  ;; HTTP: answer 503 (no extra headers, not gRPC) and stop the chain.
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $respond (i32.const 503) (i32.const 16) (i32.const {len(CLOSED_DETAILS)})
                         (i32.const 64) (i32.const {len(CLOSED_BODY)})
                         (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))
  ;; NETWORK: close the downstream connection (stream type 2) and stop.
  (func (export "proxy_on_new_connection") (param i32) (result i32)
    (drop (call $close (i32.const 2)))
    (i32.const 1))
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) (i32.const 1)))
"""
"""The closed stand-in (``FAIL_CLOSED`` and ``FAIL_RELOAD`` extensions)."""


@functools.cache
def stand_in_module(*, closed: bool = False) -> bytes:
    """The stand-in's bytes (assembled once): pass-through, or ``closed``."""
    return bytes(wasmtime.wat2wasm(CLOSED_STAND_IN_WAT if closed else STAND_IN_WAT))


def stand_in_plugin(plugin_name: str, *, closed: bool = False) -> Any:
    """The stand-in's ``PluginConfig``: inline code, fail-open (the stand-in itself never
    fails to load), named like the extension (Envoy's ``wasm.<name>.*`` stats and logs)."""
    return wasm_pb2.PluginConfig(
        name=plugin_name,
        root_id="",
        vm_config=wasm_pb2.VmConfig(
            vm_id=CLOSED_STAND_IN_VM_ID if closed else STAND_IN_VM_ID,
            runtime=V8_RUNTIME,
            code=base_pb2.AsyncDataSource(
                local=base_pb2.DataSource(inline_bytes=stand_in_module(closed=closed))
            ),
        ),
        failure_policy=wasm_pb2.FAIL_OPEN,
    )


def stand_in_filter(plugin_name: str, *, network: bool, closed: bool = False) -> Any:
    """The stand-in as an HTTP (or, with ``network``, a network) wasm filter."""
    plugin = stand_in_plugin(plugin_name, closed=closed)
    if network:
        return network_wasm_pb2.Wasm(config=plugin)
    return wasm_filter_pb2.Wasm(config=plugin)


def stand_in_config(
    config_name: str, plugin_name: str, *, network: bool, closed: bool = False
) -> Any:
    """The ECDS resource ``config_name`` holding the stand-in."""
    wasm = stand_in_filter(plugin_name, network=network, closed=closed)
    return extension_pb2.TypedExtensionConfig(name=config_name, typed_config=pack(wasm))


def closes(policy: FailurePolicy) -> bool:
    """Whether an extension with ``policy`` gets the closed stand-in."""
    return policy is not FailurePolicy.FAIL_OPEN
