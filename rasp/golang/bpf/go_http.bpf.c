// SPDX-License-Identifier: GPL-2.0
/*
 * Request context for the Go probe. net/http's per-connection goroutine calls
 * serverHandler.ServeHTTP(sh, rw, req) once per request and runs the handler on the same
 * goroutine, so the goroutine (r14) identifies the request while the handler runs: record it
 * in go_requests and emit the request (method, path, raw query, remote address, host) once;
 * sink records then carry its id. (*response).finishRequest runs after the handler returns, on
 * the same goroutine, before it reads the next request: the entry is removed there, so a
 * reused goroutine does not carry a stale request. Goroutines the handler starts itself are
 * not linked to the request (a known limit). Uprobes on Go: since 3.5 (pid-filtered perf
 * uprobe), attach cookies since 5.15.
 * Arguments (ABIInternal): serverHandler is one pointer (ax); rw, an interface, is bx+cx;
 * req is di.
 */
#define GO_DEFINE_MAPS
#include "gorasp.h"

SEC("uprobe")
int go_serve_http(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!go_proc_of(tgid))
		return 0;
	struct go_gkey key = {.tgid = tgid, .g = ctx->r14};
	struct go_req r = {.id = bpf_ktime_get_ns(), .req = ctx->di, .sent = 0};
	bpf_map_update_elem(&go_requests, &key, &r, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_finish_request(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_gkey key = {.tgid = tgid, .g = ctx->r14};
	bpf_map_delete_elem(&go_requests, &key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
