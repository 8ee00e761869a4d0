// SPDX-License-Identifier: GPL-2.0
/*
 * Request context for the Go probe, one uprobe hit per request. net/http's per-connection
 * goroutine calls serverHandler.ServeHTTP(sh, rw, req) once per request and runs the handler
 * on the same goroutine, so the goroutine (r14) identifies the request while the handler runs:
 * store it in go_requests; the first sink in it emits the request (method, path, raw query,
 * remote address, host) and sink records carry its id. Nothing is hooked at the request's
 * end: a keep-alive connection serves its requests one after the other on its goroutine, so
 * the next ServeHTTP overwrites the entry, and a sink that runs after the handler returned
 * (or on a goroutine that reuses the g struct) is told apart at the sink, lazily
 * (gorasp.h go_req_live). Goroutines the handler starts itself are not linked to the request
 * (a known limit). Uprobes on Go: since 3.5 (pid-filtered perf uprobe), attach cookies 5.15.
 * Arguments (ABIInternal): serverHandler is one pointer (ax); rw, an interface, is bx (itab)
 * + cx (data: the *response); req is di.
 */
#define GO_DEFINE_MAPS
#include "gorasp.h"

SEC("uprobe")
int go_serve_http(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	struct go_gkey key = {.tgid = tgid, .g = ctx->r14};
	__u64 goid = 0;
	if (p->g_goid)
		bpf_probe_read_user(&goid, sizeof(goid), (void *)(ctx->r14 + p->g_goid));
	/* A keep-alive connection's goroutine already has its entry: rewrite it in place (only
	 * this goroutine uses it, and it runs on one thread at a time) rather than update the LRU
	 * map, which allocates a node each time (bench/go_overhead.py: per-hit figures). The id
	 * is taken when the first sink emits the request (go_reserve): none here. */
	struct go_req *r = bpf_map_lookup_elem(&go_requests, &key);
	if (r) {
		r->req = ctx->di;
		r->resp = ctx->cx;
		r->goid = goid;
		r->sent = 0;
		return 0;
	}
	struct go_req fresh = {.req = ctx->di, .resp = ctx->cx, .goid = goid};
	bpf_map_update_elem(&go_requests, &key, &fresh, BPF_ANY);
	return 0;
}

/* Does nothing: bench/go_overhead.py attaches it to measure what a uprobe hit costs before
 * any work of ours (the floor under every program here). */
SEC("uprobe")
int go_empty(struct pt_regs *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
