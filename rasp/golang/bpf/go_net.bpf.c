// SPDX-License-Identifier: GPL-2.0
/*
 * Outbound connections and name lookups. net.(*Dialer).DialContext(d, ctx, network, address)
 * is under net.Dial, net.DialTimeout and http.Transport's default dialer: receiver ax,
 * ctx (an interface) bx+cx, network di+si, address r8+r9 ("host:port", before resolution).
 * net.(*Resolver).lookupIPAddr(r, ctx, network, host) is where Dial resolves names (same
 * registers); net.(*Resolver).LookupHost(r, ctx, host) takes the host in di+si.
 */
#include "go_detect.h"

/* (network, address) in di+si, r8+r9: the same record for both; the check reads the address
 * as host:port (DialContext) or as a bare host (lookupIPAddr) */
static __always_inline int go_dial_common(struct pt_regs *ctx, __u32 hostport)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	__u32 rule = go_detect(ctx->r14, tgid, GO_KIND_NET, ctx->r8, ctx->r9, hostport);
	struct go_event *e = go_reserve(ctx, p, tgid, 2);
	if (e) {
		go_str(e, 0, ctx->di, ctx->si);
		go_str(e, 1, ctx->r8, ctx->r9);
		go_verdict(e, rule);
		go_submit(e);
	}
	go_block(ctx, tgid, rule);
	return 0;
}

SEC("uprobe")
int go_dial(struct pt_regs *ctx)
{
	return go_dial_common(ctx, 1);
}

SEC("uprobe")
int go_lookup_ip(struct pt_regs *ctx)
{
	return go_dial_common(ctx, 0);
}

SEC("uprobe")
int go_lookup_host(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	__u32 rule = go_detect(ctx->r14, tgid, GO_KIND_NET, ctx->di, ctx->si, 0);
	struct go_event *e = go_reserve(ctx, p, tgid, 1);
	if (e) {
		go_str(e, 0, ctx->di, ctx->si);
		go_verdict(e, rule);
		go_submit(e);
	}
	go_block(ctx, tgid, rule);
	return 0;
}
