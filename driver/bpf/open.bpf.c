// SPDX-License-Identifier: GPL-2.0
/*
 * openat (data_type 2, Elkeid's "open"; off by default: every write-open on the host is a
 * lot of events). Reported when the flags intersect rp_config.open_flags (the loader sets
 * O_WRONLY|O_RDWR|O_CREAT|O_TRUNC), or, whatever the flags, when the path starts with one of
 * the prefixes in rp_open_paths (`driver_open_paths`: /etc/shadow, /root/.ssh/, ...).
 * Why the syscall entry: the path is only in the caller's argument; at exit it may be gone.
 * The path is the one the caller passed (relative to its cwd or dfd when not absolute), so a
 * prefix only matches absolute paths. Since: raw_tp 4.17.
 */
#include "rampart.h"

static __always_inline int rp_prefix_match(const char *path, __u32 n)
{
	for (__u32 i = 0; i < RP_OPEN_PREFIXES; i++) {
		if (i >= n)
			break;
		__u32 k = i;
		struct rp_prefix *p = bpf_map_lookup_elem(&rp_open_paths, &k);
		if (!p)
			break;
		__u32 len = p->len;
		if (len == 0 || len > RP_PREFIX_LEN)
			continue;
		int same = 1;
		for (__u32 j = 0; j < RP_PREFIX_LEN; j++) {
			if (j >= len)
				break;
			if (path[j] != p->s[j]) {
				same = 0;
				break;
			}
		}
		if (same)
			return 1;
	}
	return 0;
}

SEC("raw_tp")
int rp_enter_openat(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	struct rp_config *c = rp_cfg();
	if (!c)
		return 0;
	int flags = (int)rp_arg(ctx, 2);
	int write = flags & c->open_flags;
	if (!write && !c->open_prefixes)
		return 0;
	__u32 zero = 0;
	struct rp_path_buf *buf = bpf_map_lookup_elem(&rp_scratch, &zero);
	if (!buf)
		return 0;
	buf->s[0] = 0;
	bpf_probe_read_user_str(buf->s, sizeof(buf->s), (const void *)rp_arg(ctx, 1));
	if (!write && !rp_prefix_match(buf->s, c->open_prefixes))
		return 0;

	struct rp_open *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_OPEN);
	e->flags = flags;
	e->mode = (__u32)rp_arg(ctx, 3);
	e->dfd = (int)rp_arg(ctx, 0);
	e->nr = NR_OPENAT;
	__builtin_memcpy(e->path, buf->s, sizeof(e->path));
	rp_submit(e);
	return 0;
}
