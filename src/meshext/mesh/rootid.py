"""The root id of an extension: one rule for serving, describing, rendering for Istio
and migrating.

The proxy-wasm SDKs register their root context under a root id, and the proxy
creates the one its plugin configuration names. The C++ SDK's default is the empty
string; the Go SDK ignores the id; the AssemblyScript SDK registers the id its author
chose and aborts for any other; a C++ module given an id it did not register
silently runs a do-nothing context. So the id comes, in order, from:

1. the resource: the ``meshext.io/root-id`` annotation of a ServiceMeshExtension,
   ``pluginName`` of a WasmPlugin;
2. the image's ``manifest.yaml`` (``rootId``), so an author states it once;
3. otherwise ``""``, the id SDK-built modules register by default.

(Maistra used ``<name>_root``, which works only for modules written to expect it.)
"""

from __future__ import annotations

from typing import Final

from meshext.api.manifest import ExtensionManifest

DEFAULT_ROOT_ID: Final = ""

HOW_TO_SET: Final = (
    "set the root id the module registers with the meshext.io/root-id annotation "
    "(WasmPlugin: pluginName) or rootId in the image's manifest.yaml"
)


def effective_root_id(configured: str | None, manifest: ExtensionManifest | None) -> str:
    """The root id a proxy is configured with (see the module docstring)."""
    if configured is not None:
        return configured
    if manifest is not None and manifest.root_id is not None:
        return manifest.root_id
    return DEFAULT_ROOT_ID
