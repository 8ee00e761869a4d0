#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: apt packages, the .venv, build steps.
# Every dependency the project needs comes from here (CI runs `make setup` on a clean clone).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages: install only what is missing, `apt-get update` first when we do.
mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^\s*$/d' scripts/apt-packages.txt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python virtualenv at the repo root, with the project installed editable.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.rampart-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "pip: installing the project and its dev dependencies"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

# --- Build steps of the components (each is a no-op when up to date).
for step in scripts/build.d/*.sh; do
  [ -e "$step" ] || continue
  log "build: $step"
  bash "$step"
done
log "done"
