#!/usr/bin/env bash
# Build the eBPF driver: vmlinux.h from this kernel's BTF, each driver/bpf/*.bpf.c compiled
# CO-RE with clang, then all of them linked into one object (build/bpf/rampart.bpf.o) with
# bpftool's static linker, so the programs share one ring buffer and one tail-call table.
# A no-op when the object is newer than every source. Outputs live in build/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."

src=driver/bpf
out=build/bpf
obj=$out/rampart.bpf.o
log() { printf '[driver-bpf] %s\n' "$*" >&2; }

if [ ! -r /sys/kernel/btf/vmlinux ]; then
  log "no /sys/kernel/btf/vmlinux: this kernel has no BTF, the driver cannot be built (the agent falls back to /proc)"
  exit 0
fi
mkdir -p "$out"

# vmlinux.h: regenerate when the running kernel changes
stamp=$out/vmlinux.release
if [ ! -s build/vmlinux.h ] || [ "$(cat "$stamp" 2>/dev/null)" != "$(uname -r)" ]; then
  log "vmlinux.h from /sys/kernel/btf/vmlinux ($(uname -r))"
  bpftool btf dump file /sys/kernel/btf/vmlinux format c > build/vmlinux.h.tmp
  mv build/vmlinux.h.tmp build/vmlinux.h
  uname -r > "$stamp"
fi

newest=$(ls -t "$src"/*.bpf.c "$src"/*.h build/vmlinux.h "$0" | head -1)
if [ -f "$obj" ] && [ "$obj" -nt "$newest" ]; then
  exit 0
fi

# dispatch.bpf.c defines the shared maps: the linker wants the definition before the externs
parts=()
for c in "$src"/dispatch.bpf.c $(ls "$src"/*.bpf.c | grep -v /dispatch.bpf.c); do
  o=$out/$(basename "${c%.c}").o
  clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I build -I "$src" -c "$c" -o "$o"
  parts+=("$o")
done
bpftool gen object "$obj.tmp" "${parts[@]}"
mv "$obj.tmp" "$obj"
log "built $obj from ${#parts[@]} programs"
