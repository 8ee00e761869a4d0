#!/usr/bin/env bash
# Test-only npm packages for the Node.js victim apps (Express). The probe itself has no npm
# dependencies. Idempotent: `npm ci` only when package-lock.json changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/../../tests/apps/nodejs"
stamp=node_modules/.rampart-installed
if [ -f "$stamp" ] && [ "$stamp" -nt package-lock.json ]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
touch "$stamp"
