// SPDX-License-Identifier: GPL-2.0
/*
 * os/exec.(*Cmd).Start(c): every exec.Command(...).Run/Output/Start goes through it, before
 * the fork (syscall.forkExec would also see os.StartProcess users, but not which Cmd). The
 * receiver is in ax; Cmd.Path is a string and Cmd.Args a slice of strings (pointer, length,
 * capacity). Path goes in slot 0, then Args[0..6]; `num` holds len(Args).
 */
#include "go_detect.h"

SEC("uprobe")
int go_cmd_start(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *p = go_proc_of(tgid);
	if (!p)
		return 0;
	__u64 cmd = ctx->ax;
	__u64 args[2] = {0, 0}; /* slice data pointer, length */
	bpf_probe_read_user(args, sizeof(args), (void *)(cmd + p->cmd_args));
	__u32 rule = go_detect(ctx->r14, tgid, GO_KIND_CMD, args[0], args[1], 0);
	struct go_event *e = go_reserve(ctx, p, tgid, GO_SLOTS);
	if (!e) {
		go_block(ctx, tgid, rule);
		return 0;
	}
	go_verdict(e, rule);
	go_str_at(e, 0, cmd + p->cmd_path);
	e->num = (__s64)args[1];
#pragma unroll
	for (__u32 i = 0; i < GO_ARGV_MAX; i++) {
		if (i >= args[1])
			break;
		go_str_at(e, i + 1, args[0] + i * 16);
	}
	go_submit(e);
	go_block(ctx, tgid, rule);
	return 0;
}
