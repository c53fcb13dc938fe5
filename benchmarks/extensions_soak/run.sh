#!/usr/bin/env bash
# Runs the extensions soak benchmark: installs wrk (Debian) if missing, builds the
# example modules, then runs soak.py with any arguments given (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if ! command -v wrk >/dev/null; then
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
bash "$root/scripts/setup.d/20-examples.sh"
exec "$root/.venv/bin/python" "$root/benchmarks/extensions_soak/soak.py" "$@"
