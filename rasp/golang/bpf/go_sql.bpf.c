// SPDX-License-Identifier: GPL-2.0
/*
 * database/sql: (*DB), (*Conn) and (*Tx) QueryContext / ExecContext / PrepareContext(recv,
 * ctx, query, args...): receiver ax, ctx bx+cx, the SQL text di+si. Query, QueryRow, Exec and
 * Prepare are thin wrappers that call the Context variants (often inlined into the caller, so
 * they are not hooked themselves: one event per statement).
 */
#include "go_detect.h"

SEC("uprobe")
int go_sql(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	__u32 rule = go_detect(ctx->r14, tgid, GO_KIND_SQL, ctx->di, ctx->si, 0);
	struct go_event *e = go_reserve(ctx, p, tgid, 1);
	if (e) {
		go_str(e, 0, ctx->di, ctx->si);
		go_verdict(e, rule);
		go_submit(e);
	}
	go_block(ctx, tgid, rule);
	return 0;
}
