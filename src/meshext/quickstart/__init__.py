"""The quickstart: meshext, a demo application and its Envoy sidecar on one machine."""
