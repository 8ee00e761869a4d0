// SPDX-License-Identifier: GPL-2.0
/*
 * Syscall dispatch: one raw_tp program on sys_enter and one on sys_exit tail-call the handler
 * registered for the syscall number in rp_enter_calls / rp_exit_calls (the loader fills them
 * with the enabled handlers only; an empty slot costs one failed tail call).
 *
 * Why raw_tp/sys_enter and not the syscalls/sys_enter_<name> tracepoints: those are ftrace
 * events, whose ids libbpf reads from tracefs, and tracefs is not mounted on every host (it is
 * not on ours); raw tracepoints attach by name with no tracefs. Every syscall already passes
 * the sys_enter tracepoint once any syscall tracepoint is enabled, so the cost is the same kind.
 * fentry/kprobe are refused or absent on our kernels (notes/platform-facts.md §6).
 * Since: raw_tp 4.17, tail calls from raw_tp 4.17; ring buffer (used by handlers) 5.8.
 */
#define RP_DEFINE_MAPS
#include "rampart.h"

static __always_inline int rp_from_self(void)
{
	struct rp_config *c = rp_cfg();
	return c && c->self_pid == (__u32)(bpf_get_current_pid_tgid() >> 32);
}

SEC("raw_tp/sys_enter")
int rp_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 nr = (__u32)ctx->args[1];
	if (nr >= 512 || rp_from_self())
		return 0;
	bpf_tail_call(ctx, &rp_enter_calls, nr);
	return 0;
}

SEC("raw_tp/sys_exit")
int rp_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	/* The number from the saved registers (orig_ax), then the handler registered for it; an
	 * empty slot costs one failed tail call. This used to look up rp_pending first (only
	 * syscalls whose enter left state went on), which cost every syscall exit a hash lookup
	 * and every connect/bind an LRU update and delete: the handlers that need state now look
	 * it up themselves, and connect/bind read their arguments here (network.bpf.c). */
	__u32 nr = rp_nr(ctx);
	if (nr >= 512 || rp_from_self())
		return 0;
	bpf_tail_call(ctx, &rp_exit_calls, nr);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

/* Every record type, so that they are all in the object's BTF: the loader checks its ctypes
 * mirrors against them (driver/btfcheck.py). Lives in a section libbpf does not load. */
struct rp_layouts {
	struct rp_exec exec;
	struct rp_fork fork;
	struct rp_exit exit;
	struct rp_sock sock;
	struct rp_dns dns;
	struct rp_ptrace ptrace;
	struct rp_memfd memfd;
	struct rp_module module;
	struct rp_mount mount;
	struct rp_cred cred;
	struct rp_prctl prctl;
	struct rp_open open;
	struct rp_config config;
};
struct rp_layouts rp_layouts SEC(".rp_layouts") __attribute__((used));
