#!/usr/bin/env bash
# Build the kernel-enforcement programs (driver/bpf/enforce/*.bpf.c) into one object,
# build/bpf/enforce.bpf.o, separate from the driver's: host_agent/enforce.py loads it with
# the driver off too, and picks BPF LSM or cgroup + tracepoint programs in it at start.
# Uses build/vmlinux.h from 20-driver-bpf.sh. A no-op when the object is newer than its sources.
set -euo pipefail
cd "$(dirname "$0")/../.."

src=driver/bpf/enforce
out=build/bpf
obj=$out/enforce.bpf.o
log() { printf '[enforce-bpf] %s\n' "$*" >&2; }

if [ ! -s build/vmlinux.h ]; then
  log "no build/vmlinux.h (no BTF here): kernel enforcement not built, the agent runs without it"
  exit 0
fi
mkdir -p "$out/enforce"
newest=$(ls -t "$src"/*.bpf.c "$src"/*.h build/vmlinux.h "$0" | head -1)
if [ -f "$obj" ] && [ "$obj" -nt "$newest" ]; then
  exit 0
fi
# maps.bpf.c defines the shared maps: the linker wants the definition before the externs
parts=()
for c in "$src"/maps.bpf.c $(ls "$src"/*.bpf.c | grep -v /maps.bpf.c); do
  o=$out/enforce/$(basename "${c%.c}").o
  clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I build -I "$src" -c "$c" -o "$o"
  parts+=("$o")
done
bpftool gen object "$obj.tmp" "${parts[@]}"
mv "$obj.tmp" "$obj"
log "built $obj from ${#parts[@]} programs"
