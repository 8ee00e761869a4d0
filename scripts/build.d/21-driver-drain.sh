#!/usr/bin/env bash
# Builds build/driver/librp_drain.so, the ring-buffer callback that copies records into the
# loader's batch buffer (driver/native/rp_drain.c). No-op when the output is up to date.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=driver/native/rp_drain.c
out=build/driver/librp_drain.so
if [ -f "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt "$0" ]; then
  exit 0
fi
mkdir -p build/driver
tmp="$out.tmp.$$"
gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$tmp" "$src"
mv -f "$tmp" "$out"
echo "[setup] built $out" >&2
