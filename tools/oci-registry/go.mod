// Build-only module for the test registry with the OCI 1.1 referrers API;
// scripts/setup.d/46-oci-registry.sh builds it into a cache outside the
// repository.
module meshext/tools/oci-registry

go 1.26.0

require github.com/google/go-containerregistry v0.21.6
