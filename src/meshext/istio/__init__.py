"""Upstream Istio: ServiceMeshExtensions rendered as WasmPlugin or EnvoyFilter resources.

:mod:`~meshext.istio.render` holds the pure rendering functions used by the
Kubernetes controller; :mod:`~meshext.istio.migrate` converts manifests offline.
"""
