#!/usr/bin/env bash
# Builds the CPython probe's C accelerator (rasp/python/native/rampart_accel.c) into the probe
# package, as rampart_probe/_accel<EXT_SUFFIX>, for each interpreter the repo uses (the .venv
# Python and /usr/bin/python3). It lives in the package so that it travels with it wherever
# the probe goes (rasp-attach, injector/container.py). Interpreters of another version keep
# the pure-Python path; so does any interpreter whose import of the file fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=rasp/python/native/rampart_accel.c
pkg=rasp/python/rampart_probe
for py in .venv/bin/python /usr/bin/python3; do
  [ -x "$py" ] || continue
  read -r ver suffix inc < <("$py" -c 'import sys, sysconfig as s; print("%d.%d" % sys.version_info[:2], s.get_config_var("EXT_SUFFIX"), s.get_paths()["include"])')
  if [ "$ver" != "3.11" ] || [ ! -f "$inc/Python.h" ]; then
    echo "[setup] $py is CPython $ver (or has no headers): pure-Python probe path" >&2
    continue
  fi
  out="$pkg/_accel$suffix"
  if [ ! -f "$out" ] || [ "$src" -nt "$out" ] || [ "$0" -nt "$out" ]; then
    tmp="$out.tmp.$$"
    gcc -shared -fPIC -O2 -Wall -Wextra -Werror -fvisibility=hidden -I"$inc" -o "$tmp" "$src"
    mv -f "$tmp" "$out"
    echo "[setup] built $out ($py)" >&2
  fi
  # the same ABI tag can come from two builds of 3.11: check that this interpreter loads it
  if ! "$py" -c "import sys; sys.path.insert(0, 'rasp/python'); import rampart_probe._accel" 2>/dev/null; then
    echo "[setup] $py cannot load $out: it will use the pure-Python path" >&2
  fi
done
