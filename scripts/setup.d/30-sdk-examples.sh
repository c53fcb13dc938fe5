#!/usr/bin/env bash
# Builds the example extensions written against real proxy-wasm SDKs into
# examples/sdk/build/<name>.wasm, when a module is missing or older than its sources:
#
#   go-header-append.wasm   the Go SDK (github.com/proxy-wasm/proxy-wasm-go-sdk, from the
#                           Go module proxy), Go's wasip1 target, -buildmode=c-shared
#   as-header-append.wasm   the AssemblyScript SDK (@solo-io/proxy-runtime and
#                           assemblyscript, from npm)
#
# Downloads are cached under ${MESHEXT_CACHE:-~/.cache/meshext}/sdk (Go's module
# cache; node_modules per package.json content), so a rebuild needs no network.
# Modules are written under a temporary name and renamed into place; concurrent
# runs serialise on a lock. Quick and silent when everything is up to date.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sdk="$root/examples/sdk"
build="$sdk/build"
cache="${MESHEXT_CACHE:-$HOME/.cache/meshext}/sdk"

log() { printf '[30-sdk-examples] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# True when $1 exists and is newer than every file below $2.
fresh() {
    [[ -s "$1" ]] || return 1
    [[ -z "$(find "$2" -newer "$1" -type f -not -path '*/node_modules/*' -print -quit)" ]]
}

go_module="$build/go-header-append.wasm"
as_module="$build/as-header-append.wasm"
if fresh "$go_module" "$sdk/go-header-append" && fresh "$as_module" "$sdk/as-header-append"; then
    exit 0
fi

command -v go >/dev/null || die "go not found (Go 1.24 or newer is needed for GOOS=wasip1 -buildmode=c-shared)"
command -v npm >/dev/null || die "npm not found (Debian: npm)"
mkdir -p "$build" "$cache"
exec 9>"$cache/.lock"
flock 9

if ! fresh "$go_module" "$sdk/go-header-append"; then
    log "building go-header-append with the proxy-wasm Go SDK"
    (
        cd "$sdk/go-header-append"
        GOMODCACHE="$cache/go-mod" GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
            GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o "$go_module.tmp" .
    )
    mv "$go_module.tmp" "$go_module"
fi

if ! fresh "$as_module" "$sdk/as-header-append"; then
    log "building as-header-append with the AssemblyScript SDK"
    key="$(sha256sum "$sdk/as-header-append/package.json" | cut -c1-16)"
    work="$cache/as-header-append/$key"
    if [[ ! -x "$work/node_modules/.bin/asc" ]]; then
        rm -rf "$work.tmp"
        mkdir -p "$work.tmp"
        cp "$sdk/as-header-append/package.json" "$work.tmp/"
        (cd "$work.tmp" && npm install --no-audit --no-fund --loglevel=error >&2)
        rm -rf "$work"
        mv "$work.tmp" "$work"
    fi
    rm -rf "$work/assembly"
    cp -r "$sdk/as-header-append/assembly" "$work/assembly"
    (
        cd "$work"
        node_modules/.bin/asc assembly/index.ts -b "$as_module.tmp" \
            --use abort=abort_proc_exit -O3 2>&1 | grep -v '^$' >&2 || true
    )
    [[ -s "$as_module.tmp" ]] || die "asc produced no module"
    mv "$as_module.tmp" "$as_module"
fi
