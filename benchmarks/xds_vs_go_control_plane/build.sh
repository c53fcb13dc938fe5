#!/usr/bin/env bash
# Builds the benchmark's Go programs (the go-control-plane peer and the load client)
# from the Go module proxy into a cache outside the repository, and prints the
# directory holding them:
#
#   $MESHEXT_CACHE/bench/xds-vs-go-control-plane/<hash of the Go sources>/{peer,loadclient}
#
# Quick when the binaries for the current sources exist. Binaries are built under a
# temporary name and renamed into place; concurrent runs serialise on a lock.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${MESHEXT_CACHE:-$HOME/.cache/meshext}/bench/xds-vs-go-control-plane"
hash="$(cd "$here" && cat go.mod go.sum $(find cmd -name '*.go' | sort) | sha256sum | cut -c1-16)"
out="$cache_root/$hash"
if [[ -x $out/peer && -x $out/loadclient ]]; then
    echo "$out"
    exit 0
fi
mkdir -p "$out"
exec 9>"$cache_root/.lock"
flock 9
if [[ -x $out/peer && -x $out/loadclient ]]; then
    echo "$out"
    exit 0
fi
go_bin="$(command -v go || echo /usr/local/go/bin/go)"
[[ -x $go_bin ]] || { echo "build.sh: the go command is needed (Go >= 1.26)" >&2; exit 1; }
for tool in peer loadclient; do
    tmp="$out/$tool.tmp.$$"
    (cd "$here" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly -buildvcs=false" \
        "$go_bin" build -p 2 -o "$tmp" "./cmd/$tool") || { rm -f "$tmp"; exit 1; }
    mv -f "$tmp" "$out/$tool"
done
echo "$out"
