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
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	__u64 req = ctx->di;
	__u64 url = 0;
	bpf_probe_read_user(&url, sizeof(url), (void *)(req + p->req_url));
	struct go_event *e = go_reserve(ctx, tgid);
	if (!e)
		return 0;
	__u64 id = bpf_ktime_get_ns();
	struct go_gkey key = {.tgid = tgid, .g = ctx->r14};
	bpf_map_update_elem(&go_requests, &key, &id, BPF_ANY);
	e->req_id = id;
	go_str_at(e, 0, req + p->req_method);
	if (url) {
		go_str_at(e, 1, url + p->url_path);
		go_str_at(e, 2, url + p->url_query);
	} else {
		go_str(e, 1, 0, 0);
		go_str(e, 2, 0, 0);
	}
	go_str_at(e, 3, req + p->req_remote);
	go_str_at(e, 4, req + p->req_host);
	go_submit(e);
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
