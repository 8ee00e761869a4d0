// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel module loads (data_type 603): init_module / finit_module at syscall entry.
 * Elkeid hooks do_init_module (a kprobe, absent here); the syscall entry also sees attempts
 * on kernels built without module support (ours), where the call then fails with ENOSYS —
 * an attempt to load a module is worth knowing either way. For finit_module the file name
 * is the fd's dentry name (no path walk). Since: raw_tp 4.17.
 */
#include "rampart.h"

static __always_inline int rp_module(struct bpf_raw_tracepoint_args *ctx, __u32 nr)
{
	if (rp_compat())
		return 0;
	struct rp_module *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_LOAD_MODULE);
	e->nr = nr;
	e->name[0] = 0;
	if (nr == NR_FINIT_MODULE) {
		e->fd = (int)rp_arg(ctx, 0);
		e->len = 0;
		bpf_probe_read_user_str(e->args, sizeof(e->args), (const void *)rp_arg(ctx, 1));
		struct file *f = rp_fd_file(e->fd);
		if (f) {
			const unsigned char *n = BPF_CORE_READ(f, f_path.dentry, d_name.name);
			bpf_probe_read_kernel_str(e->name, sizeof(e->name), n);
		}
	} else {
		e->fd = -1;
		e->len = rp_arg(ctx, 1);
		bpf_probe_read_user_str(e->args, sizeof(e->args), (const void *)rp_arg(ctx, 2));
	}
	rp_submit(e);
	return 0;
}

SEC("raw_tp")
int rp_enter_init_module(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_module(ctx, NR_INIT_MODULE);
}

SEC("raw_tp")
int rp_enter_finit_module(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_module(ctx, NR_FINIT_MODULE);
}
