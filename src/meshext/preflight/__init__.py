"""The pre-flight: every (module, root id, VM config, plugin config) an extension
combines is started in a sandbox proxy-wasm host before any proxy receives it."""
