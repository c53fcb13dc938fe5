"""A sandbox proxy-wasm host on wasmtime that starts a module as Envoy would.

Envoy starts an extension in stages, and an extension that fails any of them is
either NACKed (local delivery) or, when the module arrives asynchronously (remote
delivery), leaves its filter failing every request. The sandbox runs the same stages
with the same inputs, in order:

1. instantiate the module (its start section runs);
2. the start function: ``_initialize`` (WASI reactors: Go's ``c-shared``, Rust,
   C++ with wasi-libc), else ``_start`` (WASI commands);
3. ``proxy_on_context_create(root, 0)``: the SDK creates the root context it
   registered under the plugin's root id (asked through ``proxy_get_property``
   ``plugin_root_id``);
4. ``proxy_on_vm_start(root, len(vm config))``;
5. ``proxy_on_configure(root, len(plugin config))``.

The host implements what modules call at these stages for real: logging (every line
is kept, so a refusal is reported in the module's own words), the plugin and VM
configuration buffers, the plugin's properties (root id, name, VM id), metrics
definitions, time, tick periods, and WASI preview 1 (``wasi_snapshot_preview1`` by
wasmtime, ``wasi_unstable``'s ``proc_exit`` here) with no files, no preopened
directories and output captured (the last 64 KiB of each stream). Every other
function Envoy provides exists as a host function that does nothing and answers
``NOT_FOUND`` (requests, headers, shared data, queues, HTTP and gRPC calls cannot
happen before a request arrives), so a module importing it still instantiates, as it
does in Envoy.

Bounds: fuel (wasmtime counts executed instructions), the size of every linear
memory and table, and wall-clock time (epoch interruption from a watchdog thread). A
module that exceeds one fails its pre-flight, named as such.

What it cannot catch is documented in ``docs/preflight.md``: anything past
``proxy_on_configure`` (behaviour on requests, ticks, HTTP calls), V8-specific
differences, and host functions whose answers differ in a real proxy (properties of
the node, cluster or listener).

This host is hand-written: no maintained Python library implements the host side of
proxy-wasm, and wasmtime provides the execution and the limits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import struct
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

import wasmtime

from meshext.mesh.rootid import HOW_TO_SET
from meshext.preflight.errors import PreflightError

ROOT_CONTEXT_ID: Final = 1

HOST_VERSION: Final = "meshext-preflight-host/2"
"""Changes whenever the sandbox could answer differently for the same inputs (stages,
host functions, limits' meaning): results kept on disk by an older host are not used."""


class Status(IntEnum):
    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2


class BufferType(IntEnum):
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7


LOG_LEVELS: Final = ("trace", "debug", "info", "warn", "error", "critical")
INFO: Final = 2


@dataclass(frozen=True)
class Limits:
    """Bounds of one pre-flight run."""

    fuel: int = 5_000_000_000
    memory_bytes: int = 512 * 1024 * 1024
    seconds: float = 10.0


@dataclass(frozen=True)
class PreflightInput:
    """Everything a proxy hands a module before its first request."""

    root_id: str
    plugin_config: bytes
    vm_config: bytes = b""
    plugin_name: str = ""
    vm_id: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogLine:
    level: str
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


@dataclass(frozen=True)
class PreflightResult:
    """The outcome: ``passed``, or the stage that failed and why, with the module's logs."""

    passed: bool
    stage: str = ""
    reason: str = ""
    logs: tuple[LogLine, ...] = ()
    config_read: bool = False
    """Whether the module read its plugin configuration (``proxy_get_buffer_bytes``)
    during ``proxy_on_configure``."""

    def unread_config_warning(self, plugin_config: str, root_id: str) -> str | None:
        """A warning when the module started without reading a non-empty configuration:
        the root id may not be the one it registered (the C++ SDK then runs a do-nothing
        root context without a word)."""
        if not self.passed or self.config_read or not plugin_config:
            return None
        return (
            "warning: the module never read its configuration while starting "
            f"(proxy_on_configure); the root id {root_id!r} may not be the one it "
            f"registered, in which case it does nothing: {HOW_TO_SET}"
        )

    def describe(self) -> str:
        """One paragraph for status: the failed stage, the reason, the module's words."""
        if self.passed:
            return "the module started with this configuration"
        text = f"the module failed in {self.stage}: {self.reason}"
        said = [str(line) for line in self.logs if line.level in LOG_LEVELS[INFO:]]
        if said:
            text += "; the module logged: " + " | ".join(said[-5:])
        return text


class _HostStop(Exception):
    """Raised by a host function to stop the module (``proc_exit``, bad pointers)."""


class _Failed(Exception):
    """A stage failed; carries the stage and reason out of the driving code."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class SandboxEngine:
    """A wasmtime engine for pre-flights, keeping the last few compiled modules.

    Compiling is most of a pre-flight's cost (seconds for a Go module), and the same
    module is usually started with several configurations. Runs on one engine must
    not overlap: each bounds its time by advancing the engine's epoch.
    """

    def __init__(self, *, compiled: int = 8) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        try:
            self.engine = wasmtime.Engine(config)
        except wasmtime.WasmtimeError as exc:
            raise PreflightError(f"cannot start the wasm sandbox: {exc}") from exc
        self._compiled: OrderedDict[str, _Compiled] = OrderedDict()
        self._keep = compiled
        self._watchdog = _Watchdog(self.engine)
        self.output_folder = Path(tempfile.mkdtemp(prefix="meshext-preflight-"))
        """Where runs write the module's stdout and stderr (wasmtime truncates the files
        for each run; runs on one engine never overlap). Removed with the engine."""
        weakref.finalize(self, shutil.rmtree, self.output_folder, ignore_errors=True)

    @property
    def watchdog_thread(self) -> str:
        """The name of the thread that ends runs past their time, while it runs."""
        return self._watchdog.thread_name

    def run(self, module: bytes, given: PreflightInput, limits: Limits) -> PreflightResult:
        """Start ``module`` with ``given``; never raises for the module's faults (those
        are results), only :class:`PreflightError` when wasmtime cannot run."""
        return self.run_known(hashlib.sha256(module).hexdigest(), lambda: module, given, limits)

    def run_known(
        self, sha256: str, read: Callable[[], bytes], given: PreflightInput, limits: Limits
    ) -> PreflightResult:
        """:meth:`run` for the module whose bytes hash to ``sha256``, read with ``read``
        only when this engine has not compiled it (a large module costs milliseconds
        to read and hash). Bytes read that hash otherwise run under their own digest."""
        compiled = self._compiled.get(sha256)
        if compiled is None:
            module = read()
            sha256 = hashlib.sha256(module).hexdigest()
            compiled = self._compiled.get(sha256)
        if compiled is None:
            try:
                compiled = _Compiled.of(wasmtime.Module(self.engine, module))
            except wasmtime.WasmtimeError as exc:
                return PreflightResult(False, "compilation", _one_line(str(exc)))
            self._compiled[sha256] = compiled
            while len(self._compiled) > self._keep:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(sha256)
        # Made again if a cleaner of temporary files removed it since the last run.
        self.output_folder.mkdir(mode=0o700, exist_ok=True)
        self._watchdog.arm(limits.seconds)
        try:
            return _Sandbox(self.engine, compiled, given, limits, self.output_folder).run()
        finally:
            self._watchdog.disarm()


@dataclass(frozen=True)
class _Compiled:
    """A compiled module with its imports and export names, read once: wasmtime builds
    new Python objects for them on every access (a Go module imports dozens)."""

    module: wasmtime.Module
    imports: tuple[tuple[str, str, Any], ...]
    """(module, name, type) of each import."""
    exports: frozenset[str]

    @classmethod
    def of(cls, module: wasmtime.Module) -> _Compiled:
        imports = tuple((item.module, item.name or "", item.type) for item in module.imports)
        return cls(module, imports, frozenset(item.name for item in module.exports))


class _Watchdog:
    """Ends a run that passes its time by advancing the engine's epoch, from one thread
    per engine instead of a timer thread per run. The thread starts with the first
    run and ends after :data:`WATCHDOG_IDLE` seconds without one."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._changed = threading.Condition()
        self._deadline: float | None = None
        self._watching = False
        self.thread_name = f"meshext-preflight-watchdog-{id(self):x}"

    def arm(self, seconds: float) -> None:
        with self._changed:
            self._deadline = time.monotonic() + seconds
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name=self.thread_name, daemon=True).start()
            self._changed.notify()

    def disarm(self) -> None:
        with self._changed:
            self._deadline = None
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while True:
                deadline = self._deadline
                if deadline is None:
                    if not self._changed.wait(WATCHDOG_IDLE) and self._deadline is None:
                        self._watching = False
                        return
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    self._engine.increment_epoch()
                    self._deadline = None
                else:
                    self._changed.wait(left)


WATCHDOG_IDLE: Final = 60.0
"""Seconds a sandbox engine's watchdog thread waits for a run before it ends."""

OUTPUT_KEPT: Final = 64 * 1024
"""The last bytes read of what a module wrote to stdout, and of stderr: a module
writing without end fills no memory (its output is bounded on disk by fuel and time)."""


def _tail(path: Path) -> str:
    """The last :data:`OUTPUT_KEPT` bytes of ``path``, as text ("" if unreadable)."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - OUTPUT_KEPT))
            return file.read(OUTPUT_KEPT).decode(errors="replace")
    except OSError:
        return ""


def run_preflight(
    module: bytes, given: PreflightInput, limits: Limits = Limits()
) -> PreflightResult:
    """Start ``module`` with ``given`` in a fresh sandbox engine."""
    return SandboxEngine().run(module, given, limits)


class _Sandbox:
    def __init__(
        self,
        engine: wasmtime.Engine,
        module: _Compiled,
        given: PreflightInput,
        limits: Limits,
        output_folder: Path,
    ) -> None:
        self.engine = engine
        self.module = module
        self.output_folder = output_folder
        self.given = given
        self.limits = limits
        self.logs: list[LogLine] = []
        self.metrics: dict[str, int] = {}
        self.exit_code: int | None = None
        self.stage = ""
        self.config_read = False

    def run(self) -> PreflightResult:
        """Run the stages; the engine's watchdog bounds the time (see :class:`_Watchdog`)."""
        out, err = self.output_folder / "stdout", self.output_folder / "stderr"
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=self.limits.memory_bytes, table_elements=1_000_000)
        store.set_fuel(self.limits.fuel)
        store.set_epoch_deadline(1)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_file = str(out)
        wasi.stderr_file = str(err)
        wasi.env = sorted(self.given.env.items())
        wasi.argv = ["proxy-wasm"]
        store.set_wasi(wasi)
        try:
            self._drive(store)
            result = PreflightResult(True)
        except _Failed as failed:
            result = PreflightResult(False, failed.stage, failed.reason)
        finally:
            self._collect_output(out, "stdout")
            self._collect_output(err, "stderr")
        return dataclasses.replace(result, logs=tuple(self.logs), config_read=self.config_read)

    # -- the stages -------------------------------------------------------------------

    def _drive(self, store: wasmtime.Store) -> None:
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        for module, name, kind in self.module.imports:
            if module == "wasi_snapshot_preview1":
                continue
            if not isinstance(kind, wasmtime.FuncType):
                raise _Failed(
                    "instantiation",
                    f"imports {module}.{name}, which is not a function; "
                    "proxies provide only functions",
                )
            linker.define_func(
                module, name, kind, self._host_function(module, name, kind), access_caller=True
            )
        instance = self._stage(
            "instantiation", store, lambda: linker.instantiate(store, self.module.module)
        )
        exports = instance.exports(store)
        names = self.module.exports
        if not any(name.startswith("proxy_abi_version_") for name in names):
            raise _Failed("instantiation", "no proxy_abi_version_* export: not a proxy-wasm module")
        start = next((name for name in ("_initialize", "_start") if name in names), None)
        if start is not None:
            self._stage(start, store, lambda: self._call(exports, store, start))
        given = self.given
        root = ROOT_CONTEXT_ID
        if "proxy_on_context_create" in names:
            self._stage(
                f"proxy_on_context_create (creating the root context of root id {given.root_id!r})",
                store,
                lambda: self._call(exports, store, "proxy_on_context_create", root, 0),
            )
        if "proxy_on_vm_start" in names:
            started = self._stage(
                "proxy_on_vm_start",
                store,
                lambda: self._call(exports, store, "proxy_on_vm_start", root, len(given.vm_config)),
            )
            if not started:
                raise _Failed("proxy_on_vm_start", "it returned false (the VM refused to start)")
        if "proxy_on_configure" in names:
            configured = self._stage(
                "proxy_on_configure",
                store,
                lambda: self._call(
                    exports, store, "proxy_on_configure", root, len(given.plugin_config)
                ),
            )
            if not configured:
                raise _Failed(
                    "proxy_on_configure", "it returned false (the module refused its configuration)"
                )

    def _stage(self, stage: str, store: wasmtime.Store, action: Callable[[], Any]) -> Any:
        self.stage = stage
        try:
            return action()
        except wasmtime.ExitTrap as exc:
            raise _Failed(stage, f"the module exited with code {exc.code}") from exc
        except wasmtime.Trap as exc:
            raise _Failed(stage, self._trap_reason(exc, store)) from exc
        except wasmtime.WasmtimeError as exc:
            raise _Failed(stage, self._trap_reason(exc, store)) from exc
        except _Failed:
            raise
        except Exception as exc:  # raised by a host function on the module's behalf
            raise _Failed(stage, self._trap_reason(exc, store)) from exc

    def _trap_reason(self, exc: Exception, store: wasmtime.Store) -> str:
        message = _one_line(str(exc))
        if "all fuel consumed" in message or store.get_fuel() == 0:
            return f"it ran past the pre-flight's budget of {self.limits.fuel} instructions"
        if "interrupt" in message:
            return f"it ran longer than the pre-flight's {self.limits.seconds:g} seconds"
        if self.exit_code is not None:
            return f"the module exited with code {self.exit_code}"
        return f"it trapped: {message}"

    @staticmethod
    def _call(exports: Any, store: wasmtime.Store, name: str, *args: int) -> Any:
        function = exports[name]
        if not isinstance(function, wasmtime.Func):
            raise _Failed(name, f"the export {name} is not a function")
        return function(store, *args)

    def _collect_output(self, path: Path, level: str) -> None:
        for line in _tail(path).splitlines()[-50:]:
            if line.strip():
                self.logs.append(LogLine("error" if level == "stderr" else "info", line))

    # -- host functions ---------------------------------------------------------------

    def _host_function(self, module: str, name: str, ty: wasmtime.FuncType) -> Callable[..., Any]:
        implemented: dict[tuple[str, str], Callable[..., Any]] = {
            ("env", "proxy_log"): self._log,
            ("env", "proxy_get_log_level"): self._get_log_level,
            ("env", "proxy_get_buffer_bytes"): self._get_buffer_bytes,
            ("env", "proxy_get_property"): self._get_property,
            ("env", "proxy_define_metric"): self._define_metric,
            ("env", "proxy_get_current_time_nanoseconds"): self._get_time,
            ("wasi_unstable", "proc_exit"): self._proc_exit,
        }
        function = implemented.get((module, name))
        if function is not None:
            return function
        results = list(ty.results)

        def nothing(caller: wasmtime.Caller, *args: Any) -> Any:
            # Setters (tick period, effective context, metrics) succeed; getters of
            # request state find nothing: no request exists at these stages.
            if not results:
                return None
            status = Status.OK if _is_setter(name) else Status.NOT_FOUND
            values = [int(status)] + [0] * (len(results) - 1)
            return values[0] if len(values) == 1 else values

        return nothing

    def _log(self, caller: wasmtime.Caller, level: int, ptr: int, size: int) -> int:
        text = _read(caller, ptr, min(size, 4096)).decode(errors="replace")
        name = LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else str(level)
        if len(self.logs) < 1000:
            self.logs.append(LogLine(name, text))
        return Status.OK

    def _get_log_level(self, caller: wasmtime.Caller, ptr: int) -> int:
        _write(caller, ptr, struct.pack("<I", INFO))
        return Status.OK

    def _get_buffer_bytes(
        self, caller: wasmtime.Caller, kind: int, start: int, size: int, ptr_ptr: int, size_ptr: int
    ) -> int:
        buffers = {
            BufferType.VM_CONFIGURATION: self.given.vm_config,
            BufferType.PLUGIN_CONFIGURATION: self.given.plugin_config,
        }
        data = buffers.get(kind)  # type: ignore[call-overload]
        if data is None:
            return Status.NOT_FOUND
        if kind == BufferType.PLUGIN_CONFIGURATION and self.stage == "proxy_on_configure":
            self.config_read = True
        _give(caller, data[start : start + size], ptr_ptr, size_ptr)
        return Status.OK

    def _get_property(
        self, caller: wasmtime.Caller, path: int, path_size: int, ptr_ptr: int, size_ptr: int
    ) -> int:
        parts = _read(caller, path, path_size).split(b"\0")
        key = b".".join(p for p in parts if p).decode(errors="replace")
        properties = {
            "plugin_root_id": self.given.root_id,
            "plugin_name": self.given.plugin_name,
            "plugin_vm_id": self.given.vm_id,
        }
        value = properties.get(key)
        if value is None:
            return Status.NOT_FOUND
        _give(caller, value.encode(), ptr_ptr, size_ptr)
        return Status.OK

    def _define_metric(
        self, caller: wasmtime.Caller, kind: int, name: int, name_size: int, id_ptr: int
    ) -> int:
        metric = _read(caller, name, name_size).decode(errors="replace")
        metric_id = self.metrics.setdefault(metric, len(self.metrics) + 1)
        _write(caller, id_ptr, struct.pack("<I", metric_id))
        return Status.OK

    def _get_time(self, caller: wasmtime.Caller, ptr: int) -> int:
        _write(caller, ptr, struct.pack("<Q", time.time_ns()))
        return Status.OK

    def _proc_exit(self, caller: wasmtime.Caller, code: int) -> None:
        self.exit_code = code
        raise _HostStop(f"the module exited with code {code}")


def _is_setter(name: str) -> bool:
    verbs = ("set_", "define_", "increment_", "record_", "register_", "done", "continue_")
    return any(name.removeprefix("proxy_").startswith(verb) for verb in verbs)


def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise _HostStop("the module exports no memory")
    return memory


def _read(caller: wasmtime.Caller, ptr: int, size: int) -> bytes:
    memory = _memory(caller)
    if ptr < 0 or size < 0 or ptr + size > memory.data_len(caller):
        raise _HostStop(f"the module passed memory out of bounds ({ptr}+{size})")
    return bytes(memory.read(caller, ptr, ptr + size))


def _write(caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
    memory = _memory(caller)
    if ptr < 0 or ptr + len(data) > memory.data_len(caller):
        raise _HostStop(f"the module passed memory out of bounds ({ptr}+{len(data)})")
    memory.write(caller, data, ptr)


def _give(caller: wasmtime.Caller, data: bytes, ptr_ptr: int, size_ptr: int) -> None:
    """Copy ``data`` into memory the module allocates, as Envoy does."""
    allocate = caller.get("proxy_on_memory_allocate") or caller.get("malloc")
    if not isinstance(allocate, wasmtime.Func):
        raise _HostStop("the module exports neither proxy_on_memory_allocate nor malloc")
    ptr = int(allocate(caller, max(len(data), 1)))
    if ptr == 0:
        raise _HostStop(f"the module could not allocate {len(data)} bytes")
    if data:
        _write(caller, ptr, data)
    _write(caller, ptr_ptr, struct.pack("<I", ptr))
    _write(caller, size_ptr, struct.pack("<I", len(data)))


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
