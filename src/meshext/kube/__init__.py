"""meshext on Kubernetes: CRDs, the conversion webhook, and the controller.

Layers, each using only the ones above it:

* ``errors``, ``resources``, ``client`` - the API server adapter: typed REST calls on
  raw JSON objects, every failure translated into :mod:`meshext.kube.errors`;
* ``crds``, ``webhook``, ``certs`` - the CRDs generated from :mod:`meshext.api`'s
  models, and the v1alpha1⇄v1 conversion they point at;
* ``watching``, ``workqueue``, ``leader`` - list+watch caches, a per-key work queue,
  Lease-based leader election: the machinery, knowing nothing of extensions;
* ``secrets``, ``status``, ``source`` - adapters to meshext's protocols
  (PullSecretStore, StatusSink, ConfigSource);
* ``controller``, ``http`` - the reconciler tying it together, and its HTTP
  endpoints (health, modules).
"""
