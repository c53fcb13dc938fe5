"""The root of meshext's exception tree.

Every adapter (registry, Kubernetes, gRPC, HTTP, file system) raises a subclass of
:class:`MeshextError` and chains the third-party error it translated as the cause,
so callers handle one family of errors and still see what went wrong underneath.
"""


class MeshextError(Exception):
    """Base class of every error meshext raises on purpose."""
