#!/usr/bin/env bash
# Installs everything meshext needs on a fresh Debian machine, idempotently:
# Debian packages, the Python virtualenv, then each fragment in scripts/setup.d/
# (example extensions, Kubernetes test binaries, ...). Safe to run again: every
# step checks first and does nothing when its result is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

debian_packages=(
  docker-registry skopeo umoci apache2-utils openssl  # OCI registry and independent image tools
  clang lld wabt                                      # building example extensions to wasm32
  etcd-server                                         # storage for the test Kubernetes API server
  curl procps                                         # used by the quickstart and tests
  wrk                                                 # HTTP load generator of the benchmarks
)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian registry package starts a system service; meshext's tests run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
stamp=.venv/.meshext-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -x .venv/bin/python || ! -f $stamp || "$(cat $stamp)" != "$want" ]]; then
  echo "setup: creating the Python environment in .venv"
  "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

for fragment in scripts/setup.d/*.sh; do
  [[ -e $fragment ]] || continue
  bash "$fragment"
done
