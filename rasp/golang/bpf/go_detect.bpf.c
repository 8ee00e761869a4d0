// SPDX-License-Identifier: GPL-2.0
/*
 * The maps of the in-kernel detection check (go_detect.h), and the end of a connection:
 * net/http.(*conn).serve.func1 is conn.serve's deferred function (the one that recovers a
 * handler's panic), run on the connection's goroutine when the connection ends, normally or
 * after a panic. A handler that panicked never reached finishRequest, so its goroutine's
 * go_requests entry would outlive it and a reused goroutine (g) would look like one serving a
 * request: the entry is removed here, so a block (a panic) only ever happens under that
 * recover. One hit per connection, not per request.
 */
#define GO_DETECT_DEFINE_MAPS
#include "go_detect.h"

SEC("uprobe")
int go_conn_done(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_gkey key = {.tgid = tgid, .g = ctx->r14};
	bpf_map_delete_elem(&go_requests, &key);
	return 0;
}
