// SPDX-License-Identifier: GPL-2.0
/*
 * File sinks. os.OpenFile(name, flag, perm) is where os.Open, os.Create, os.ReadFile and
 * os.WriteFile end up (name: ax+bx, flag: cx). os.Remove(name) and os.RemoveAll(path) take one
 * string (ax+bx; RemoveAll is hooked at os.removeAll when the exported wrapper was inlined
 * away), os.Rename(old, new) two (ax+bx, cx+di; os.rename likewise).
 */
#include "go_detect.h"

SEC("uprobe")
int go_open_file(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	__u32 rule = go_detect(ctx->r14, tgid, GO_KIND_FILE, ctx->ax, ctx->bx, 0);
	struct go_event *e = go_reserve(ctx, p, tgid, 1);
	if (e) {
		go_str(e, 0, ctx->ax, ctx->bx);
		e->num = (__s64)ctx->cx;
		go_verdict(e, rule);
		go_submit(e);
	}
	go_block(ctx, tgid, rule);
	return 0;
}

SEC("uprobe")
int go_path1(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	__u32 rule = go_detect(ctx->r14, tgid, GO_KIND_FILE, ctx->ax, ctx->bx, 0);
	struct go_event *e = go_reserve(ctx, p, tgid, 1);
	if (e) {
		go_str(e, 0, ctx->ax, ctx->bx);
		go_verdict(e, rule);
		go_submit(e);
	}
	go_block(ctx, tgid, rule);
	return 0;
}

SEC("uprobe")
int go_path2(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	/* the new name is where a traversal lands (the old one must exist already) */
	__u32 rule = go_detect(ctx->r14, tgid, GO_KIND_FILE, ctx->cx, ctx->di, 0);
	struct go_event *e = go_reserve(ctx, p, tgid, 2);
	if (e) {
		go_str(e, 0, ctx->ax, ctx->bx);
		go_str(e, 1, ctx->cx, ctx->di);
		go_verdict(e, rule);
		go_submit(e);
	}
	go_block(ctx, tgid, rule);
	return 0;
}
