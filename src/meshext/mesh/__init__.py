"""The mesh model and the pure planning functions: which extensions run on a workload,
in which order, and where they sit among the mesh's own filters."""
