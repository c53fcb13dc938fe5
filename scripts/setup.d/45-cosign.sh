#!/usr/bin/env bash
# Ensures the cosign command used by the signature tests exists in a cache
# outside the repository, building it from the Go module proxy when missing:
#
#   $MESHEXT_CACHE/cosign/<cosign version>/bin/cosign   (tools/cosign)
#
# MESHEXT_CACHE defaults to ~/.cache/meshext. The version comes from
# tools/cosign/go.mod, so bumping it there selects a new cache entry.
#
# On success stdout carries one `cosign=path` line; progress goes to stderr.
# When the binary is cached the script only checks that it exists. The binary
# is written under a temporary name and renamed into place once it runs, so an
# interrupted build never leaves a truncated file; concurrent runs serialise on
# a lock.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_root="${MESHEXT_CACHE:-$HOME/.cache/meshext}"
mod_dir="$repo_root/tools/cosign"
module=github.com/sigstore/cosign/v2

log() { printf '[45-cosign] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

version="$(awk -v m="$module" '
    $1 == "require" && $2 == m && $3 ~ /^v[0-9]/ { print $3; exit }
    $1 == m && $2 ~ /^v[0-9]/ { print $2; exit }
' "$mod_dir/go.mod")"
[[ -n "$version" ]] || die "no version of $module in $mod_dir/go.mod"

bin_dir="$cache_root/cosign/$version/bin"
cosign="$bin_dir/cosign"

if [[ -x "$cosign" ]]; then
    printf 'cosign=%s\n' "$cosign"
    exit 0
fi

mkdir -p "$bin_dir"
exec 9>"$cache_root/.45-cosign.lock"
flock 9
# Holding the lock, a *.tmp.* file is left over from a run that was killed.
rm -f -- "$bin_dir"/*.tmp.*

if [[ ! -x "$cosign" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_bin="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_bin=/usr/local/go/bin/go
    else
        die "the go command is needed to build cosign (Go >= 1.26)"
    fi
    tmp="$cosign.tmp.$$"
    build_pgid=""
    on_signal() {
        if [[ -n "$build_pgid" ]]; then
            kill -TERM -- "-$build_pgid" 2>/dev/null || true
            wait "$build_pgid" 2>/dev/null || true
        fi
        rm -f -- "$tmp"
        trap - EXIT
        exit "$1"
    }
    trap 'rm -f -- "$tmp"' EXIT
    trap 'on_signal 130' INT
    trap 'on_signal 143' TERM
    log "building $module/cmd/cosign $version -> $cosign"
    start=$SECONDS
    # go.sum must already cover every module (-mod=readonly); the toolchain is
    # the local one; -p 2 keeps the machine usable. The version stamp is the
    # one upstream releases inject, so `cosign version` reports it.
    (
        cd "$mod_dir"
        exec setsid env GOTOOLCHAIN=local CGO_ENABLED=0 \
            GOFLAGS="-trimpath -mod=readonly -buildvcs=false" \
            "$go_bin" build -p 2 \
            -ldflags="-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$version" \
            -o "$tmp" "$module/cmd/cosign"
    ) &
    build_pgid=$!
    wait "$build_pgid" || die "go build $module/cmd/cosign failed"
    build_pgid=""
    "$tmp" version >/dev/null 2>&1 || die "freshly built cosign does not run"
    mv -f -- "$tmp" "$cosign"
    log "built cosign in $((SECONDS - start))s ($(du -h "$cosign" | cut -f1))"
fi

printf 'cosign=%s\n' "$cosign"
