#!/usr/bin/env bash
# Builds build/python/rampart_pyinject.so, the library rasp-attach injects into CPython
# targets (rasp/python/native/rampart_pyinject.c). No-op when the output is up to date.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=rasp/python/native/rampart_pyinject.c
out=build/python/rampart_pyinject.so
if [ -f "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt "$0" ]; then
  exit 0
fi
mkdir -p build/python
tmp="$out.tmp.$$"
gcc -shared -fPIC -O2 -Wall -Wextra -Werror -pthread -o "$tmp" "$src" -ldl
mv -f "$tmp" "$out"
echo "[setup] built $out" >&2
