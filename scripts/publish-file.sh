#!/usr/bin/env bash
# publish-file.sh SRC DEST: put SRC at DEST by copy + rename, never by rewriting DEST.
#
# Running JVMs read the agent jar lazily (the bootstrap class path and the agent's loader
# keep it open and map it): a jar rewritten in place under a JVM crashed it with SIGBUS in
# libzip. The rename gives DEST a new inode; JVMs that opened the old one keep reading it,
# and the next attach gets the new file. The copy goes next to DEST (same filesystem).
set -euo pipefail
src=$1
dest=$2
dir=$(dirname "$dest")
mkdir -p "$dir"
tmp="$dir/.$(basename "$dest").$$"
cp "$src" "$tmp"
mv -f "$tmp" "$dest"
