"""A minimal proxy-wasm host on wasmtime, to run the example modules without Envoy.

It implements the few host functions the examples import, with the same contracts as
Envoy (buffers handed to the module are allocated through its
``proxy_on_memory_allocate``), and drives the callbacks a stream goes through; like
Envoy, it skips the optional callbacks a module does not export. It is a
test double for Envoy's host, named as such: behaviour inside Envoy is tested with
Envoy itself; this one exists to run hundreds of thousands of requests quickly and
watch the module's memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

I32 = wasmtime.ValType.i32()
I64 = wasmtime.ValType.i64()
OK, NOT_FOUND = 0, 1
PLUGIN_CONFIGURATION = 7


@dataclass
class LocalResponse:
    status: int
    body: bytes
    headers: list[tuple[str, str]]


@dataclass
class Stream:
    headers: list[tuple[str, str]]
    local_response: LocalResponse | None = None


@dataclass
class FakeEnvoyHost:
    """One VM of a module, with counters and the stream being processed."""

    module_path: Path
    plugin_config: bytes = b""
    metrics: dict[int, tuple[int, str]] = field(default_factory=dict)
    metric_values: dict[str, int] = field(default_factory=dict)
    logs: list[tuple[int, str]] = field(default_factory=list)
    stream: Stream | None = None
    next_context: int = 1

    def __post_init__(self) -> None:
        self.engine = wasmtime.Engine()
        self.store = wasmtime.Store(self.engine)
        module = wasmtime.Module(self.engine, self.module_path.read_bytes())
        linker = wasmtime.Linker(self.engine)
        functions: dict[str, tuple[list[Any], list[Any], Any]] = {
            "proxy_log": ([I32] * 3, [I32], self._log),
            "proxy_get_buffer_bytes": ([I32] * 5, [I32], self._get_buffer_bytes),
            "proxy_get_header_map_value": ([I32] * 5, [I32], self._get_header),
            "proxy_add_header_map_value": ([I32] * 5, [I32], self._add_header),
            "proxy_send_local_response": ([I32] * 8, [I32], self._send_local_response),
            "proxy_define_metric": ([I32] * 4, [I32], self._define_metric),
            "proxy_increment_metric": ([I32, I64], [I32], self._increment_metric),
        }
        for name, (params, results, function) in functions.items():
            linker.define_func("env", name, wasmtime.FuncType(params, results), function)
        self.instance = linker.instantiate(self.store, module)
        self.exports = self.instance.exports(self.store)
        self.memory: Any = self.exports["memory"]
        self.root_context = self._new_context()
        self.call("proxy_on_context_create", self.root_context, 0)

    # -- driving the module ---------------------------------------------------------

    def call(self, name: str, *args: int) -> Any:
        function = self.exports[name]
        assert isinstance(function, wasmtime.Func), name
        return function(self.store, *args)

    def exports_callback(self, name: str) -> bool:
        return isinstance(self.exports.get(name), wasmtime.Func)

    def call_if_exported(self, name: str, *args: int) -> Any:
        """Calls an optional callback the way Envoy does: only when the module exports it."""
        return self.call(name, *args) if self.exports_callback(name) else None

    def start(self) -> bool:
        return bool(self.call("proxy_on_vm_start", self.root_context, 0))

    def configure(self, config: bytes) -> bool:
        self.plugin_config = config
        return bool(self.call("proxy_on_configure", self.root_context, len(config)))

    def request(self, headers: list[tuple[str, str]]) -> Stream:
        """One request through the stream callbacks, as Envoy calls them (those the
        module exports; a response is not simulated)."""
        context = self._new_context()
        self.stream = Stream(list(headers))
        self.call_if_exported("proxy_on_context_create", context, self.root_context)
        self.call_if_exported("proxy_on_request_headers", context, len(headers), 1)
        self.call_if_exported("proxy_on_done", context)
        self.call_if_exported("proxy_on_log", context)
        self.call_if_exported("proxy_on_delete", context)
        stream, self.stream = self.stream, None
        return stream

    def memory_bytes(self) -> int:
        return int(self.memory.data_len(self.store))

    def _new_context(self) -> int:
        self.next_context += 1
        return self.next_context

    # -- memory helpers -------------------------------------------------------------

    def _read(self, ptr: int, size: int) -> bytes:
        return bytes(self.memory.read(self.store, ptr, ptr + size))

    def _give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> None:
        """Copies ``data`` into memory the module allocates, as Envoy's host does."""
        ptr = int(self.call("proxy_on_memory_allocate", max(len(data), 1)))
        if data:
            self.memory.write(self.store, data, ptr)
        self.memory.write(self.store, struct.pack("<I", ptr), ptr_ptr)
        self.memory.write(self.store, struct.pack("<I", len(data)), size_ptr)

    # -- host functions -------------------------------------------------------------

    def _log(self, level: int, ptr: int, size: int) -> int:
        self.logs.append((level, self._read(ptr, size).decode()))
        return OK

    def _get_buffer_bytes(
        self, kind: int, start: int, size: int, ptr_ptr: int, size_ptr: int
    ) -> int:
        if kind != PLUGIN_CONFIGURATION:
            return NOT_FOUND
        self._give(self.plugin_config[start : start + size], ptr_ptr, size_ptr)
        return OK

    def _get_header(self, kind: int, key: int, key_size: int, ptr_ptr: int, size_ptr: int) -> int:
        assert self.stream is not None
        assert kind == 0
        name = self._read(key, key_size).decode().lower()
        for header, value in self.stream.headers:
            if header == name:
                self._give(value.encode(), ptr_ptr, size_ptr)
                return OK
        return NOT_FOUND

    def _add_header(self, kind: int, key: int, key_size: int, value: int, value_size: int) -> int:
        assert self.stream is not None
        assert kind == 0
        self.stream.headers.append(
            (self._read(key, key_size).decode().lower(), self._read(value, value_size).decode())
        )
        return OK

    def _send_local_response(self, *args: int) -> int:
        # status, details, details size, body, body size, headers, headers size, grpc status
        status, _details, _details_size, body, body_size, headers, headers_size, _grpc = args
        assert self.stream is not None
        self.stream.local_response = LocalResponse(
            status, self._read(body, body_size), _pairs(self._read(headers, headers_size))
        )
        return OK

    def _define_metric(self, kind: int, name: int, name_size: int, id_ptr: int) -> int:
        metric_name = self._read(name, name_size).decode()
        metric_id = next(
            (i for i, (_, existing) in self.metrics.items() if existing == metric_name),
            len(self.metrics) + 1,
        )
        self.metrics[metric_id] = (kind, metric_name)
        self.metric_values.setdefault(metric_name, 0)
        self.memory.write(self.store, struct.pack("<I", metric_id), id_ptr)
        return OK

    def _increment_metric(self, metric_id: int, offset: int) -> int:
        _, name = self.metrics[metric_id]
        self.metric_values[name] += offset
        return OK


def _pairs(data: bytes) -> list[tuple[str, str]]:
    """Decodes proxy-wasm's serialized header pairs."""
    if not data:
        return []
    (count,) = struct.unpack_from("<I", data, 0)
    sizes = struct.unpack_from(f"<{2 * count}I", data, 4)
    pos = 4 + 8 * count
    pairs = []
    for i in range(count):
        key = data[pos : pos + sizes[2 * i]]
        pos += sizes[2 * i] + 1
        value = data[pos : pos + sizes[2 * i + 1]]
        pos += sizes[2 * i + 1] + 1
        pairs.append((key.decode(), value.decode()))
    return pairs
