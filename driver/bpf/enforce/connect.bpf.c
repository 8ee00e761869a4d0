// SPDX-License-Identifier: GPL-2.0
/*
 * Denied destinations for protected processes, on kernels without BPF LSM:
 * cgroup/connect4 + connect6 (TCP, and UDP connect) and cgroup/sendmsg4 + sendmsg6 (UDP
 * sendto/sendmsg without connect), attached to the cgroup-v2 root so every process is seen.
 *
 * Why here: kprobes and bpf_override_return are absent and LSM/fmod_ret programs are refused
 * on our kernels (notes/platform-facts.md §6); cgroup sock_addr programs run before the
 * kernel acts on the address and returning 0 makes the syscall fail with EPERM, in the
 * caller, for the caller only (the map is keyed by tgid). The user's address is read from
 * the context (user_ip4/user_ip6/user_port), exactly as the caller passed it.
 * Since: connect 4.17, sendmsg 4.18, bpf_get_current_pid_tgid in cgroup programs 5.x
 * (present on every kernel with BPF links on cgroups, 5.7).
 */
#include "enforce.h"

static __always_inline int rpe_sock_addr(struct bpf_sock_addr *ctx, __u16 family, __u32 hook)
{
	__u32 tgid;
	struct rpe_proc *p = rpe_self_protected(&tgid);
	if (!p)
		return 1;
	__u32 words[4] = {};
	if (family == RPE_AF_INET) {
		words[0] = ctx->user_ip4;
	} else {
		words[0] = ctx->user_ip6[0];
		words[1] = ctx->user_ip6[1];
		words[2] = ctx->user_ip6[2];
		words[3] = ctx->user_ip6[3];
	}
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	const struct rpe_net_rule *r = rpe_net_match(family, words, port, p->runtime_bit);
	if (!r)
		return 1;
	__u32 policy = r->policy;
	rpe_count(hook);
	struct rpe_event *e = rpe_reserve();
	if (e) {
		e->protected_pid = tgid;
		e->hook = hook;
		e->policy = policy;
		e->blocked = 1;
		e->family = family;
		e->port = port;
		__builtin_memcpy(e->addr, words, 16);
		e->start_time = p->start_time;
		bpf_ringbuf_submit(e, 0);
	}
	return 0; /* the caller gets EPERM */
}

SEC("cgroup/connect4")
int rpe_connect4(struct bpf_sock_addr *ctx)
{
	return rpe_sock_addr(ctx, RPE_AF_INET, RPE_HOOK_CONNECT4);
}

SEC("cgroup/connect6")
int rpe_connect6(struct bpf_sock_addr *ctx)
{
	return rpe_sock_addr(ctx, RPE_AF_INET6, RPE_HOOK_CONNECT6);
}

SEC("cgroup/sendmsg4")
int rpe_sendmsg4(struct bpf_sock_addr *ctx)
{
	return rpe_sock_addr(ctx, RPE_AF_INET, RPE_HOOK_SENDMSG4);
}

SEC("cgroup/sendmsg6")
int rpe_sendmsg6(struct bpf_sock_addr *ctx)
{
	return rpe_sock_addr(ctx, RPE_AF_INET6, RPE_HOOK_SENDMSG6);
}
