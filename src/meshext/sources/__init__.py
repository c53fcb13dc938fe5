"""Where resources come from: a folder of YAML files, or a Kubernetes API server."""
