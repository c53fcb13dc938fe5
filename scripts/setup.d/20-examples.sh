#!/usr/bin/env bash
# Builds the example extensions (examples/extensions/build/*.wasm) with clang and lld
# when a module is missing or older than its sources; quick and silent otherwise.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
examples="$root/examples/extensions"

for tool in clang wasm-ld make; do
  command -v "$tool" >/dev/null || { echo "[20-examples] error: $tool not found (Debian: clang lld make)" >&2; exit 1; }
done
if make -s -q -C "$examples" all 2>/dev/null; then
  exit 0
fi
echo "[20-examples] building example extensions" >&2
make -s -C "$examples" all >&2
