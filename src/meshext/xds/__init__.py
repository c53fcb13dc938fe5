"""xDS serving, generic over resources: snapshots, their cache, the ADS protocol, the server.

* :mod:`meshext.xds.types`: type URLs, complete vs per-name types, the push order.
* :mod:`meshext.xds.snapshot`: immutable snapshots versioned by content hash.
* :mod:`meshext.xds.cache`: the current snapshot per node, watching it and waiting for the next.
* :mod:`meshext.xds.protocol`: state-of-the-world and delta streams as state machines.
* :mod:`meshext.xds.wire`: responses assembled from parts serialized once.
* :mod:`meshext.xds.server`: the gRPC ADS server driving those machines.

Nothing here knows about extensions: callers build Envoy resources and hand them over
as snapshots, and learn through :class:`~meshext.xds.server.StreamEvents` which proxy
accepted or rejected which resource.
"""
