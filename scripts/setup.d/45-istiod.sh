#!/usr/bin/env bash
# Ensures istiod's discovery server, pilot-discovery, exists in a cache outside
# the repository, building it from the Go module proxy when it is missing:
#
#   $MESHEXT_CACHE/istio/<istio version>/bin/pilot-discovery   (tools/istiod)
#
# The Istio end-to-end tests run it against the suite's kube-apiserver. The
# version is the istio.io/istio snapshot that tools/k8s/istio-crds.env names
# (the CRDs the kube tests install); the script refuses to build when
# tools/istiod/go.mod pins a different one. MESHEXT_CACHE defaults to
# ~/.cache/meshext.
#
# On success stdout carries one `name=path` line; progress and timings go to
# stderr. When the binary is cached the script only checks that it exists (no
# Go invocation). The binary is written under a temporary name and renamed
# into place, so an interrupted run never leaves a truncated file behind;
# concurrent runs serialise on a lock.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_root="${MESHEXT_CACHE:-$HOME/.cache/meshext}"
mod_dir="$repo_root/tools/istiod"

log() { printf '[45-istiod] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=../../tools/k8s/istio-crds.env
source "$repo_root/tools/k8s/istio-crds.env"
: "${ISTIO_MODULE:?}" "${ISTIO_VERSION:?}"

pinned="$(awk -v m="$ISTIO_MODULE" '
    $1 == "require" && $2 == m && $3 ~ /^v[0-9]/ { print $3; exit }
    $1 == m && $2 ~ /^v[0-9]/ { print $2; exit }
' "$mod_dir/go.mod")"
[[ "$pinned" == "$ISTIO_VERSION" ]] \
    || die "tools/istiod/go.mod pins $ISTIO_MODULE '$pinned', tools/k8s/istio-crds.env names '$ISTIO_VERSION'"

bin_dir="$cache_root/istio/$ISTIO_VERSION/bin"
pilot="$bin_dir/pilot-discovery"

report() { printf 'pilot-discovery=%s\n' "$pilot"; }

if [[ -x "$pilot" ]]; then
    report
    exit 0
fi

mkdir -p "$bin_dir"
exec 9>"$cache_root/.45-istiod.lock"
flock 9
# Holding the lock, any *.tmp.* file is left over from a run that was killed.
rm -f -- "$bin_dir"/*.tmp.*
if [[ -x "$pilot" ]]; then
    report
    exit 0
fi

tmp="$pilot.tmp.$$"
build_pgid=""
trap 'rm -f -- "$tmp"' EXIT
# The build runs in its own process group; on INT/TERM stop the whole group so
# no compiler or linker outlives the script.
on_signal() {
    if [[ -n "$build_pgid" ]]; then
        kill -TERM -- "-$build_pgid" 2>/dev/null || true
        wait "$build_pgid" 2>/dev/null || true
    fi
    rm -f -- "$tmp"
    trap - EXIT
    exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

if command -v go >/dev/null 2>&1; then
    go_bin="$(command -v go)"
elif [[ -x /usr/local/go/bin/go ]]; then
    go_bin=/usr/local/go/bin/go
else
    die "the go command is needed to build pilot-discovery (Go >= 1.26)"
fi

log "building istio.io/istio/pilot/cmd/pilot-discovery@$ISTIO_VERSION -> $pilot"
start=$SECONDS
# go.sum must already cover every module (-mod=readonly); the toolchain is the
# local one; -p 2 bounds parallel compiles so the machine stays usable.
(
    cd "$mod_dir"
    exec setsid env GOTOOLCHAIN=local CGO_ENABLED=0 \
        GOFLAGS="-trimpath -mod=readonly -buildvcs=false" \
        "$go_bin" build -p 2 -ldflags="-s -w" -o "$tmp" istio.io/istio/pilot/cmd/pilot-discovery
) &
build_pgid=$!
wait "$build_pgid" || die "go build pilot-discovery failed"
build_pgid=""
"$tmp" version >/dev/null 2>&1 || die "freshly built pilot-discovery does not run"
mv -f -- "$tmp" "$pilot"
log "built pilot-discovery in $((SECONDS - start))s ($(du -h "$pilot" | cut -f1))"
report
