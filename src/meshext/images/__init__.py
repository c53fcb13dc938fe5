"""Extension images: references, registry access, image formats and the module cache.

=============  ==========================================================================
module         what it does
=============  ==========================================================================
reference      parse ``spec.image`` (registry, ``oci-layout:``, ``file:``)
config         RegistryConfig (TLS, plain-HTTP hosts, credentials), Limits, RetryPolicy
auth           docker config / ``.dockerconfigjson`` credentials, auth challenges
secrets        pull Secrets from a folder of YAML, the docker ``config.json`` fallback
errors         the error tree, each error retryable or permanent
client         async OCI distribution client: pull, push, challenge auth, verification
oci            media types, descriptors, manifests, indexes, platform choice
source         one interface over a registry repository and an OCI image layout
formats        the four ways a module is packed, and reading each
archive        applying tar layers (whiteouts) and refusing unsafe entries and bombs
checks         wasm magic, wasmtime compile, ``proxy_abi_version_*`` export
cache          the content-addressed module cache, single-flight, LRU eviction
pull           the one path by which a module enters the cache
resolver       ImageResolver: extension → Resolution, with pull policies and retries
build, push    ``meshext image build`` / ``push``: reproducible images, layout → registry
=============  ==========================================================================

Only :mod:`reference` is light; import the others where they are used.
"""
