#!/usr/bin/env bash
# Build the Go probe's uprobe programs (rasp/golang/bpf/*.bpf.c), CO-RE against the
# build/vmlinux.h that 20-driver-bpf.sh generates, linked into build/bpf/golang.bpf.o with
# bpftool's static linker (go_http.bpf.c defines the shared maps, so it goes first).
# A no-op when the object is newer than every source.
set -euo pipefail
cd "$(dirname "$0")/../.."

src=rasp/golang/bpf
out=build/bpf
obj=$out/golang.bpf.o
log() { printf '[go-bpf] %s\n' "$*" >&2; }

if [ ! -s build/vmlinux.h ]; then
  log "no build/vmlinux.h (no BTF on this kernel?): the Go probe cannot be built"
  exit 0
fi
mkdir -p "$out"
newest=$(ls -t "$src"/*.bpf.c "$src"/*.h build/vmlinux.h "$0" | head -1)
if [ -f "$obj" ] && [ "$obj" -nt "$newest" ]; then
  exit 0
fi
parts=()
for c in "$src"/go_http.bpf.c $(ls "$src"/*.bpf.c | grep -v /go_http.bpf.c); do
  o=$out/$(basename "${c%.c}").o
  clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I build -I "$src" -c "$c" -o "$o"
  parts+=("$o")
done
bpftool gen object "$obj.tmp" "${parts[@]}"
mv "$obj.tmp" "$obj"
log "built $obj from ${#parts[@]} programs"
