// SPDX-License-Identifier: GPL-2.0
/*
 * mount (data_type 165): mount(2) at syscall entry — device, target dir, fs type, flags as the
 * caller passed them. Elkeid hooks security_sb_mount (a kprobe, absent here). The new mount
 * API (fsopen/fsmount/move_mount) is not covered. Since: raw_tp 4.17.
 */
#include "rampart.h"

SEC("raw_tp")
int rp_enter_mount(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	struct rp_mount *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_MOUNT);
	e->dev[0] = e->dir[0] = e->fstype[0] = 0;
	bpf_probe_read_user_str(e->dev, sizeof(e->dev), (const void *)rp_arg(ctx, 0));
	bpf_probe_read_user_str(e->dir, sizeof(e->dir), (const void *)rp_arg(ctx, 1));
	bpf_probe_read_user_str(e->fstype, sizeof(e->fstype), (const void *)rp_arg(ctx, 2));
	e->flags = rp_arg(ctx, 3);
	rp_submit(e);
	return 0;
}
