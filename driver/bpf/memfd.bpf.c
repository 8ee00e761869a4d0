// SPDX-License-Identifier: GPL-2.0
/*
 * memfd_create (data_type 356): an anonymous in-memory file, the usual first step of fileless
 * execution (write an ELF into it, exec /proc/self/fd/N). The name is the caller's label.
 * Why the syscall entry: name and flags are its arguments. Since: raw_tp 4.17.
 */
#include "rampart.h"

SEC("raw_tp")
int rp_enter_memfd_create(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	struct rp_memfd *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_MEMFD_CREATE);
	e->flags = (__u32)rp_arg(ctx, 1);
	e->_pad = 0;
	bpf_probe_read_user_str(e->name, sizeof(e->name), (const void *)rp_arg(ctx, 0));
	rp_submit(e);
	return 0;
}
