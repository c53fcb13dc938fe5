"""Workload identity: SPIFFE ids, meshext's certificate authority, credentials on disk,
and the check that binds an xDS stream to the identity its peer certificate proves."""
