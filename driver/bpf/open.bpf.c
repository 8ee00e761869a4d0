// SPDX-License-Identifier: GPL-2.0
/*
 * openat for writing (data_type 2, Elkeid's "open"; off by default: every write-open on the
 * host is a lot of events). Reported when the flags intersect rp_config.open_flags (the
 * loader sets O_WRONLY|O_RDWR|O_CREAT|O_TRUNC); user space may filter further by path.
 * Why the syscall entry: the path is only in the caller's argument; at exit it may be gone.
 * Since: raw_tp 4.17.
 */
#include "rampart.h"

SEC("raw_tp")
int rp_enter_openat(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	struct rp_config *c = rp_cfg();
	int flags = (int)rp_arg(ctx, 2);
	if (!c || !(flags & c->open_flags))
		return 0;
	struct rp_open *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_OPEN);
	e->flags = flags;
	e->mode = (__u32)rp_arg(ctx, 3);
	e->dfd = (int)rp_arg(ctx, 0);
	e->nr = NR_OPENAT;
	e->path[0] = 0;
	bpf_probe_read_user_str(e->path, sizeof(e->path), (const void *)rp_arg(ctx, 1));
	rp_submit(e);
	return 0;
}
