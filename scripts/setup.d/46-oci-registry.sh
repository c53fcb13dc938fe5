#!/usr/bin/env bash
# Ensures the OCI 1.1 test registry (tools/oci-registry: go-containerregistry's
# pkg/registry with the referrers API, serving TLS on loopback) exists in a
# cache outside the repository, building it from the Go module proxy when
# missing:
#
#   $MESHEXT_CACHE/oci-registry/<hash>/bin/oci-registry
#
# MESHEXT_CACHE defaults to ~/.cache/meshext. <hash> is the SHA-256 (first 16
# hex digits) of main.go, go.mod and go.sum, so any change to the source or
# the pinned module selects a new cache entry.
#
# On success stdout carries one `oci-registry=path` line; progress goes to
# stderr. When the binary is cached the script only checks that it exists. The
# binary is written under a temporary name and renamed into place once it
# runs, so an interrupted build never leaves a truncated file; concurrent runs
# serialise on a lock.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_root="${MESHEXT_CACHE:-$HOME/.cache/meshext}"
src_dir="$repo_root/tools/oci-registry"

log() { printf '[46-oci-registry] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for file in main.go go.mod go.sum; do
    [[ -f "$src_dir/$file" ]] || die "missing $src_dir/$file"
done
hash="$(cd "$src_dir" && cat main.go go.mod go.sum | sha256sum | cut -c1-16)"

bin_dir="$cache_root/oci-registry/$hash/bin"
binary="$bin_dir/oci-registry"

if [[ -x "$binary" ]]; then
    printf 'oci-registry=%s\n' "$binary"
    exit 0
fi

mkdir -p "$bin_dir"
exec 9>"$cache_root/.46-oci-registry.lock"
flock 9
# Holding the lock, a *.tmp.* file is left over from a run that was killed.
rm -f -- "$bin_dir"/*.tmp.*

if [[ ! -x "$binary" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_bin="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_bin=/usr/local/go/bin/go
    else
        die "the go command is needed to build the OCI test registry (Go >= 1.26)"
    fi
    tmp="$binary.tmp.$$"
    trap 'rm -f -- "$tmp"' EXIT
    log "building tools/oci-registry -> $binary"
    start=$SECONDS
    # go.sum must already cover every module (-mod=readonly); -p 2 keeps the
    # machine usable.
    (
        cd "$src_dir"
        exec env GOTOOLCHAIN=local CGO_ENABLED=0 \
            GOFLAGS="-trimpath -mod=readonly -buildvcs=false" \
            "$go_bin" build -p 2 -ldflags="-s -w" -o "$tmp" .
    ) || die "go build tools/oci-registry failed"
    "$tmp" -h >/dev/null 2>&1 || [[ $? -eq 2 ]] || die "freshly built oci-registry does not run"
    mv -f -- "$tmp" "$binary"
    log "built oci-registry in $((SECONDS - start))s ($(du -h "$binary" | cut -f1))"
fi

printf 'oci-registry=%s\n' "$binary"
