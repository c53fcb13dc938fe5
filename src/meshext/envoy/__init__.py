"""Envoy resource generation: what a workload plan becomes in an Envoy proxy.

- :mod:`~meshext.envoy.node`: the node metadata a proxy sends and :func:`proxy_from_node`.
- :mod:`~meshext.envoy.sidecar`: :func:`proxy_resources`, the pure generator of a proxy's
  listeners, clusters and extension configs (ECDS), and :class:`EnvoyResources`.
- :mod:`~meshext.envoy.wasm`: one extension as an ECDS resource holding a wasm filter,
  and :class:`ModuleDelivery` (local file or remote fetch from the module server).
- :mod:`~meshext.envoy.bootstrap`: the bootstrap a proxy starts from.
- :mod:`~meshext.envoy.files`: the same resources as files Envoy watches, for running
  a proxy without an xDS server.
- :mod:`~meshext.envoy.names`: the stable names of every generated resource.

See ``docs/envoy.md`` for the chain meshext builds and why.
"""
