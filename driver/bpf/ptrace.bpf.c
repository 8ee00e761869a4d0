// SPDX-License-Identifier: GPL-2.0
/*
 * ptrace (data_type 101): PTRACE_ATTACH, PTRACE_SEIZE and the POKE requests, the ones that
 * take over or write into another process (injection). Elkeid reports POKETEXT/POKEDATA only;
 * attach is where every injector starts, so we report it too. PEEK*, CONT, DETACH... are not.
 * Why the syscall entry: the request and target are its arguments, nothing else to read.
 * Since: raw_tp 4.17 (dispatch.bpf.c).
 */
#include "rampart.h"

#define RP_PTRACE_POKETEXT 4
#define RP_PTRACE_POKEDATA 5
#define RP_PTRACE_POKEUSR 6
#define RP_PTRACE_ATTACH 16
#define RP_PTRACE_SEIZE 0x4206

SEC("raw_tp")
int rp_enter_ptrace(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	long req = (long)rp_arg(ctx, 0);
	if (req != RP_PTRACE_ATTACH && req != RP_PTRACE_SEIZE && req != RP_PTRACE_POKETEXT &&
	    req != RP_PTRACE_POKEDATA && req != RP_PTRACE_POKEUSR)
		return 0;
	struct rp_ptrace *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_PTRACE);
	e->request = req;
	e->target_pid = (long)rp_arg(ctx, 1);
	e->addr = rp_arg(ctx, 2);
	e->data = rp_arg(ctx, 3);
	rp_submit(e);
	return 0;
}
