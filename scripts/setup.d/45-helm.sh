#!/usr/bin/env bash
# Ensures the helm command used by the Helm chart test exists in a cache outside
# the repository, building it from the Go module proxy when it is missing:
#
#   $MESHEXT_CACHE/helm/<helm version>/bin/helm   (tools/helm)
#
# MESHEXT_CACHE defaults to ~/.cache/meshext; the version comes from
# tools/helm/go.mod. Prints `helm=<path>` on success. Quick when present (no Go
# invocation); the binary is written under a temporary name and renamed into
# place; concurrent runs serialise on a lock.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_root="${MESHEXT_CACHE:-$HOME/.cache/meshext}"
mod_dir="$repo_root/tools/helm"

log() { printf '[45-helm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

version="$(awk '$1 == "helm.sh/helm/v4" && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod_dir/go.mod")"
[[ -n "$version" ]] || die "no version of helm.sh/helm/v4 in $mod_dir/go.mod"
bin_dir="$cache_root/helm/$version/bin"
helm="$bin_dir/helm"

if [[ -x "$helm" ]]; then
    printf 'helm=%s\n' "$helm"
    exit 0
fi

mkdir -p "$bin_dir"
exec 9>"$cache_root/.45-helm.lock"
flock 9
rm -f -- "$bin_dir"/*.tmp.*
if [[ ! -x "$helm" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_bin="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_bin=/usr/local/go/bin/go
    else
        die "the go command is needed to build helm (Go >= 1.26)"
    fi
    tmp="$helm.tmp.$$"
    trap 'rm -f -- "$tmp"' EXIT
    log "building helm $version -> $helm"
    start=$SECONDS
    (
        cd "$mod_dir"
        exec env GOTOOLCHAIN=local CGO_ENABLED=0 \
            GOFLAGS="-trimpath -mod=readonly -buildvcs=false" \
            "$go_bin" build -p 2 -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version" \
            -o "$tmp" helm.sh/helm/v4/cmd/helm
    ) || die "go build helm failed"
    "$tmp" version >/dev/null 2>&1 || die "freshly built helm does not run"
    mv -f -- "$tmp" "$helm"
    log "built helm in $((SECONDS - start))s"
fi
printf 'helm=%s\n' "$helm"
