// SPDX-License-Identifier: GPL-2.0
/*
 * prctl(PR_SET_NAME) (data_type 157): a process renaming itself (malware hiding as
 * "[kworker/0:1]"); the cache also takes the new comm for pid trees. Other options are not
 * reported. Why the syscall entry: option and name are its arguments. Since: raw_tp 4.17.
 */
#include "rampart.h"

#define RP_PR_SET_NAME 15

SEC("raw_tp")
int rp_enter_prctl(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	int option = (int)rp_arg(ctx, 0);
	if (option != RP_PR_SET_NAME)
		return 0;
	struct rp_prctl *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_PRCTL);
	e->option = option;
	e->_pad = 0;
	e->name[0] = 0;
	bpf_probe_read_user_str(e->name, sizeof(e->name), (const void *)rp_arg(ctx, 1));
	rp_submit(e);
	return 0;
}
