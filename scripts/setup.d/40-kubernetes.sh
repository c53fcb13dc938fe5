#!/usr/bin/env bash
# Ensures the Kubernetes control-plane binaries used by the kube tests exist in
# a cache outside the repository, building them from the Go module proxy when
# they are missing:
#
#   $MESHEXT_CACHE/k8s/<k8s version>/bin/kube-apiserver   (tools/k8s)
#   $MESHEXT_CACHE/k8s/<k8s version>/bin/kubectl          (tools/k8s)
#   $MESHEXT_CACHE/k8s/<k8s version>/bin/etcd             (tools/etcd)
#   $MESHEXT_CACHE/istio/<istio version>/crd-all.gen.yaml (tools/k8s/istio-crds.env)
#
# MESHEXT_CACHE defaults to ~/.cache/meshext. Versions come from the go.mod
# files under tools/, so bumping a version there selects a new cache entry.
#
# On success stdout carries one `name=path` line per artefact; progress and
# timings go to stderr. When everything is cached the script only checks file
# existence (no Go invocation) and returns immediately. Every artefact is
# written under a temporary name and renamed into place, so an interrupted run
# never leaves a truncated binary behind; concurrent runs serialise on a lock.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_root="${MESHEXT_CACHE:-$HOME/.cache/meshext}"
k8s_mod_dir="$repo_root/tools/k8s"
etcd_mod_dir="$repo_root/tools/etcd"

log() { printf '[40-kubernetes] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Version of a required module, read from a go.mod without invoking Go.
module_version() {
    local gomod="$1" module="$2" version
    version="$(awk -v m="$module" '
        $1 == "require" && $2 == m && $3 ~ /^v[0-9]/ { print $3; exit }
        $1 == m && $2 ~ /^v[0-9]/ { print $2; exit }
    ' "$gomod")"
    [[ -n "$version" ]] || die "no version of $module in $gomod"
    printf '%s\n' "$version"
}

k8s_version="$(module_version "$k8s_mod_dir/go.mod" k8s.io/kubernetes)"
etcd_version="$(module_version "$etcd_mod_dir/go.mod" go.etcd.io/etcd/server/v3)"
# shellcheck source=../../tools/k8s/istio-crds.env
source "$k8s_mod_dir/istio-crds.env"
: "${ISTIO_MODULE:?}" "${ISTIO_VERSION:?}" "${ISTIO_SUM:?}" "${ISTIO_CRD_PATH:?}"

bin_dir="$cache_root/k8s/$k8s_version/bin"
istio_dir="$cache_root/istio/$ISTIO_VERSION"
kube_apiserver="$bin_dir/kube-apiserver"
kubectl="$bin_dir/kubectl"
etcd="$bin_dir/etcd"
istio_crds="$istio_dir/crd-all.gen.yaml"

report() {
    printf 'kube-apiserver=%s\n' "$kube_apiserver"
    printf 'kubectl=%s\n' "$kubectl"
    printf 'etcd=%s\n' "$etcd"
    printf 'istio-crds=%s\n' "$istio_crds"
}

all_present() {
    [[ -x "$kube_apiserver" && -x "$kubectl" && -x "$etcd" && -s "$istio_crds" ]]
}

if all_present; then
    report
    exit 0
fi

mkdir -p "$bin_dir" "$istio_dir"

# One builder at a time; whoever waited re-checks what is still missing.
exec 9>"$cache_root/.40-kubernetes.lock"
flock 9
# Holding the lock, any *.tmp.* file is left over from a run that was killed.
rm -f -- "$bin_dir"/*.tmp.* "$istio_dir"/*.tmp.*

tmp_files=()
build_pgid=""
cleanup() {
    local f
    for f in "${tmp_files[@]+"${tmp_files[@]}"}"; do
        rm -f -- "$f"
    done
}
# A build runs in its own process group (see build_tool); on INT/TERM stop
# the whole group, so no compiler or linker outlives the script, then remove
# partial outputs.
on_signal() {
    if [[ -n "$build_pgid" ]]; then
        kill -TERM -- "-$build_pgid" 2>/dev/null || true
        wait "$build_pgid" 2>/dev/null || true
    fi
    cleanup
    trap - EXIT
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

find_go() {
    if command -v go >/dev/null 2>&1; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        printf '%s\n' /usr/local/go/bin/go
    else
        die "the go command is needed to build the Kubernetes binaries (Go >= 1.26)"
    fi
}

go_bin=""

# build_tool <module dir> <package> <destination> [extra -ldflags...]
build_tool() {
    local mod_dir="$1" pkg="$2" dest="$3"
    shift 3
    local ldflags="-s -w${*:+ $*}"
    local tmp="$dest.tmp.$$"
    tmp_files+=("$tmp")
    [[ -n "$go_bin" ]] || go_bin="$(find_go)"
    log "building $pkg -> $dest"
    local start=$SECONDS
    # The module proxy and checksum database come from the user's environment;
    # the toolchain is always the local one, and go.sum must already cover
    # every module (-mod=readonly), which keeps builds reproducible. -p 2
    # bounds parallel compiles so the machine stays usable.
    (
        cd "$mod_dir"
        exec setsid env GOTOOLCHAIN=local CGO_ENABLED=0 \
            GOFLAGS="-trimpath -mod=readonly -buildvcs=false" \
            "$go_bin" build -p 2 -ldflags="$ldflags" -o "$tmp" "$pkg"
    ) &
    build_pgid=$!
    wait "$build_pgid" || die "go build $pkg failed"
    build_pgid=""
    "$tmp" --version >/dev/null 2>&1 || "$tmp" version --client >/dev/null 2>&1 \
        || die "freshly built $pkg does not run"
    mv -f -- "$tmp" "$dest"
    log "built $(basename "$dest") in $((SECONDS - start))s ($(du -h "$dest" | cut -f1))"
}

# Version stamps that the upstream release process injects; without them the
# binaries report v0.0.0-master.
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_stamp=()
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_stamp+=(
        "-X $pkg.gitVersion=$k8s_version"
        "-X $pkg.gitMajor=1"
        "-X $pkg.gitMinor=$k8s_minor"
        "-X $pkg.gitTreeState=clean"
    )
done

[[ -x "$kube_apiserver" ]] || build_tool "$k8s_mod_dir" k8s.io/kubernetes/cmd/kube-apiserver "$kube_apiserver" "${k8s_stamp[@]}"
[[ -x "$kubectl" ]] || build_tool "$k8s_mod_dir" k8s.io/kubernetes/cmd/kubectl "$kubectl" "${k8s_stamp[@]}"
[[ -x "$etcd" ]] || build_tool "$etcd_mod_dir" go.etcd.io/etcd/server/v3 "$etcd" \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"

if [[ ! -s "$istio_crds" ]]; then
    [[ -n "$go_bin" ]] || go_bin="$(find_go)"
    log "fetching $ISTIO_MODULE@$ISTIO_VERSION for $ISTIO_CRD_PATH"
    # Run outside any module so the download does not touch tools/*/go.mod.
    dl_json="$(cd / && env GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go_bin" mod download -json "$ISTIO_MODULE@$ISTIO_VERSION")"
    mod_dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl_json")"
    mod_sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl_json")"
    [[ "$mod_sum" == "$ISTIO_SUM" ]] \
        || die "$ISTIO_MODULE@$ISTIO_VERSION has sum '$mod_sum', expected '$ISTIO_SUM'"
    [[ -s "$mod_dir/$ISTIO_CRD_PATH" ]] || die "$ISTIO_CRD_PATH not found in $mod_dir"
    tmp="$istio_crds.tmp.$$"
    tmp_files+=("$tmp")
    cp -- "$mod_dir/$ISTIO_CRD_PATH" "$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$istio_crds"
fi

all_present || die "some artefacts are still missing"
report
