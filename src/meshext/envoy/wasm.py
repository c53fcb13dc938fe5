"""One extension as Envoy sees it: an ECDS resource holding a wasm HTTP filter.

The ``envoy.config.core.v3.TypedExtensionConfig`` named
:func:`~meshext.envoy.names.extension_config_name` wraps an
``envoy.extensions.filters.http.wasm.v3.Wasm`` whose ``PluginConfig`` is:

- ``name``: the extension's name (Envoy's ``wasm.<name>.*`` stats and logs use it);
- ``root_id``: :attr:`PlannedExtension.root_id`, the one rule of
  :mod:`meshext.mesh.rootid` (the resource's, else the image's ``manifest.yaml``,
  else ``""``).
- ``vm_config``: runtime ``envoy.wasm.runtime.v8``, ``vm_id`` from the module's sha256
  (:func:`~meshext.envoy.names.vm_id`) so extensions running the same module share one
  VM per worker, the code as a local file or a remote fetch (:class:`ModuleDelivery`),
  and ``Extension.env`` as environment variables;
- ``configuration``: a ``google.protobuf.StringValue`` holding ``Extension.config``
  exactly, which Envoy hands to ``proxy_on_configure`` as raw bytes;
- ``failure_policy``: from ``Extension.failure_policy`` (fail closed by default, as in
  Maistra).

A NETWORK extension (WasmPlugin ``type: NETWORK``) gets the same ``PluginConfig``
wrapped in ``envoy.extensions.filters.network.wasm.v3.Wasm`` instead: an L4 filter
that sees the connection's bytes. ``Extension.host_env`` become the VM's
``host_env_keys`` (the proxy process's own variables).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from envoy.config.core.v3 import backoff_pb2, base_pb2, extension_pb2, http_uri_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from meshext.envoy import names
from meshext.envoy.errors import GenerationError
from meshext.envoy.node import DeliveryMode, HostPort, ProxyInfo
from meshext.envoy.resources import pack
from meshext.mesh.extension import FailurePolicy
from meshext.mesh.planner import PlannedExtension
from meshext.mesh.resolution import ResolvedModule
from meshext.mesh.traffic import FilterLayer
from meshext.server.modules import module_url

V8_RUNTIME: Final = "envoy.wasm.runtime.v8"
WASM_FILTER_TYPE_URL: Final = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM_FILTER_TYPE_URL: Final = (
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
)

_FAILURE_POLICIES: Final = {
    FailurePolicy.FAIL_CLOSED: wasm_pb2.FAIL_CLOSED,
    FailurePolicy.FAIL_OPEN: wasm_pb2.FAIL_OPEN,
    FailurePolicy.FAIL_RELOAD: wasm_pb2.FAIL_RELOAD,
}


@dataclass(frozen=True)
class ModuleServerTls:
    """The roots that verify the module server and the SPIFFE id it must present."""

    trusted_ca_pem: str
    server_identity: str


@dataclass(frozen=True)
class ModuleDelivery:
    """How proxies get module bytes.

    ``mode`` applies to proxies that do not choose themselves (node metadata
    ``MODULE_DELIVERY``). ``LOCAL`` points Envoy at the module file meshext verified
    (``ResolvedModule.path``): right when Envoy runs on meshext's host. ``REMOTE``
    makes Envoy fetch ``server``'s ``/modules/sha256/<sha256>`` and check the sha256,
    each fetch bounded by ``fetch_timeout_seconds``.

    ``nack_on_code_cache_miss`` (remote only, on by default) makes Envoy reject a
    configuration whose module is not in its cache yet, instead of accepting it and
    leaving the filter failing when the fetch fails: the rejection, the stand-in
    module meanwhile and the re-offers are the control loop's
    (:mod:`meshext.server.fetch_retries`). Envoy then fetches once per offer (its
    ``retry_policy``, ``fetch_retries`` with backoff, applies only without it).
    Proxies reading local files (``LOCAL``) are never affected.
    """

    mode: DeliveryMode = DeliveryMode.LOCAL
    server: HostPort | None = None
    fetch_timeout_seconds: int = 30
    fetch_retries: int = 5
    retry_base_interval_ms: int = 500
    retry_max_interval_ms: int = 10_000
    tls: ModuleServerTls | None = None
    """How proxies verify the module server (HTTPS); ``None`` for plain HTTP."""
    nack_on_code_cache_miss: bool = True

    def stands_in(self, mode: DeliveryMode) -> bool:
        """Whether proxies in ``mode`` reject a module until fetched, and so run the
        stand-in module meanwhile."""
        return mode is DeliveryMode.REMOTE and self.nack_on_code_cache_miss

    @property
    def base_url(self) -> str | None:
        if self.server is None:
            return None
        return f"{'https' if self.tls else 'http'}://{self.server}"

    def mode_for(self, proxy: ProxyInfo) -> DeliveryMode:
        """The delivery mode of ``proxy``: its own choice, else ``mode``."""
        mode = proxy.module_delivery or self.mode
        if mode is DeliveryMode.REMOTE and self.server is None:
            raise GenerationError(
                f"proxy {proxy.node_id!r} needs modules delivered remotely "
                "but no module server address is configured"
            )
        return mode


def code_source(
    module: ResolvedModule, mode: DeliveryMode, delivery: ModuleDelivery
) -> base_pb2.AsyncDataSource:
    """Where Envoy reads the module's bytes."""
    if mode is DeliveryMode.LOCAL:
        return base_pb2.AsyncDataSource(local=base_pb2.DataSource(filename=module.path))
    base_url = delivery.base_url
    if base_url is None:
        raise GenerationError("remote module delivery needs a module server address")
    return base_pb2.AsyncDataSource(
        remote=base_pb2.RemoteDataSource(
            http_uri=http_uri_pb2.HttpUri(
                uri=module_url(base_url, module.sha256),
                cluster=names.MODULES_CLUSTER,
                timeout=duration_pb2.Duration(seconds=delivery.fetch_timeout_seconds),
            ),
            sha256=module.sha256,
            retry_policy=base_pb2.RetryPolicy(
                num_retries=wrappers_pb2.UInt32Value(value=delivery.fetch_retries),
                retry_back_off=backoff_pb2.BackoffStrategy(
                    base_interval=_millis(delivery.retry_base_interval_ms),
                    max_interval=_millis(delivery.retry_max_interval_ms),
                ),
            ),
        )
    )


def wasm_filter(
    planned: PlannedExtension,
    code: base_pb2.AsyncDataSource,
    *,
    nack_on_code_cache_miss: bool = False,
) -> Any:
    """The wasm filter of one extension: HTTP, or network for a NETWORK extension."""
    ext = planned.extension
    module = _module(planned)
    vm_config = wasm_pb2.VmConfig(
        vm_id=names.vm_id(module.sha256, ext.env, ext.host_env),
        runtime=V8_RUNTIME,
        code=code,
        nack_on_code_cache_miss=nack_on_code_cache_miss,
    )
    if ext.env:
        vm_config.environment_variables.key_values.update(dict(sorted(ext.env.items())))
    if ext.host_env:
        vm_config.environment_variables.host_env_keys.extend(ext.host_env)
    plugin = wasm_pb2.PluginConfig(
        name=ext.name,
        root_id=planned.root_id,
        vm_config=vm_config,
        configuration=pack(wrappers_pb2.StringValue(value=ext.config)),
        failure_policy=_FAILURE_POLICIES[ext.failure_policy],
    )
    if ext.layer is FilterLayer.NETWORK:
        return network_wasm_pb2.Wasm(config=plugin)
    return wasm_filter_pb2.Wasm(config=plugin)


def extension_config(
    planned: PlannedExtension, mode: DeliveryMode, delivery: ModuleDelivery
) -> Any:
    """The ECDS resource (``TypedExtensionConfig``) of one extension."""
    code = code_source(_module(planned), mode, delivery)
    wasm = wasm_filter(planned, code, nack_on_code_cache_miss=delivery.stands_in(mode))
    return extension_pb2.TypedExtensionConfig(
        name=names.extension_config_name(planned.key), typed_config=pack(wasm)
    )


def with_fetch_attempt(config: Any, attempt: int) -> Any:
    """``config`` (an extension's ECDS resource) with ``?attempt=<attempt>`` on its remote
    module URL: the same module, but a new resource version, so it can be offered again
    after the proxy rejected the previous attempt. Other resources are returned as is."""
    if attempt <= 0:
        return config
    type_url = str(config.typed_config.type_url)
    wasm_type = {
        WASM_FILTER_TYPE_URL: wasm_filter_pb2.Wasm,
        NETWORK_WASM_FILTER_TYPE_URL: network_wasm_pb2.Wasm,
    }.get(type_url)
    if wasm_type is None:
        return config
    wasm = wasm_type()
    config.typed_config.Unpack(wasm)
    remote = wasm.config.vm_config.code.remote
    if not remote.http_uri.uri:
        return config
    remote.http_uri.uri = remote.http_uri.uri.split("?", 1)[0] + f"?attempt={attempt}"
    return extension_pb2.TypedExtensionConfig(name=config.name, typed_config=pack(wasm))


def _module(planned: PlannedExtension) -> ResolvedModule:
    if planned.module is None:
        raise GenerationError(
            f"{planned.key}: no resolved module; proxies get only extensions whose image "
            "was pulled and verified"
        )
    return planned.module


def _millis(ms: int) -> Any:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)
