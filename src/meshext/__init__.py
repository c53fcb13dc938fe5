"""meshext: deploys WebAssembly (proxy-wasm) extensions to the Envoy proxies of a service mesh."""

__version__ = "0.1.0"
