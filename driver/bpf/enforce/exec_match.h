/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Exec matching shared by the tracepoint (exec.bpf.c) and the LSM (lsm.bpf.c) programs:
 * which protected process stands behind this exec, and which rule denies the program.
 */
#ifndef RPE_EXEC_MATCH_H
#define RPE_EXEC_MATCH_H
#include "enforce.h"

/*
 * The protected process this task belongs to: itself or one of RPE_DEPTH ancestors. Commands
 * run in a forked child with a new tgid (Python subprocess, Go exec.Command, a shell in
 * between), so the caller's own tgid is not enough. start_time must match where set, so a
 * recycled pid is never taken for the process that was protected.
 */
static __always_inline __u32 rpe_protected_ancestor(struct task_struct *t, __u32 *runtime_bit)
{
	struct rpe_conf *c = rpe_cfg();
	__u64 tick = c && c->tick_ns ? c->tick_ns : 10000000;
	for (int i = 0; i < RPE_DEPTH; i++) {
		if (!t)
			return 0;
		__u32 tgid = BPF_CORE_READ(t, tgid);
		if (tgid <= 1)
			return 0;
		struct rpe_proc *p = bpf_map_lookup_elem(&rpe_protected, &tgid);
		if (p) {
			__u64 st = BPF_CORE_READ(t, group_leader, start_boottime);
			/* the agent knows the start time in clock ticks (/proc/<pid>/stat) */
			if (!p->start_time || p->start_time == st / tick) {
				*runtime_bit = p->runtime_bit;
				return tgid;
			}
		}
		t = BPF_CORE_READ(t, real_parent);
	}
	return 0;
}

static __always_inline int rpe_applies(__u32 runtimes, __u32 bit)
{
	return !runtimes || (runtimes & bit);
}

struct rpe_base_ctx {
	const char *s;
	__u32 n;
	__u32 base;
};

static long rpe_base_step(__u64 i, void *data)
{
	struct rpe_base_ctx *c = data;
	if (i >= c->n)
		return 1;
	if (c->s[i & (RPE_PATH_LEN - 1)] == '/')
		c->base = i + 1;
	return 0;
}

struct rpe_prefix_ctx {
	const char *s;
	__u32 n;
	__u32 policy;
	__u32 bit;
};

static long rpe_prefix_step(__u64 i, void *data)
{
	struct rpe_prefix_ctx *c = data;
	if (i >= c->n)
		return 1;
	__u32 k = i;
	struct rpe_prefix *p = bpf_map_lookup_elem(&rpe_exec_prefix, &k);
	if (!p || !p->len || !rpe_applies(p->runtimes, c->bit))
		return 0;
	for (__u32 j = 0; j < RPE_NAME_LEN; j++) {
		if (j >= p->len)
			break;
		if (p->s[j] != c->s[j])
			return 0;
	}
	c->policy = p->policy;
	return 1;
}

/*
 * The rule denying `path` (the kernel's bprm->filename) or `real` (the name of the file
 * actually opened, symlinks resolved: /bin/sh -> dash), or 0 when none. Exact path first,
 * then basenames, then path prefixes.
 */
static __always_inline __u32 rpe_exec_denied(const char *path, const char *real, __u32 bit)
{
	__u32 k0 = 0;
	struct rpe_scratch *s = bpf_map_lookup_elem(&rpe_scratch, &k0);
	if (!s)
		return 0;
	__builtin_memset(s->path.s, 0, sizeof(s->path.s));
	long n = bpf_probe_read_kernel_str(s->path.s, sizeof(s->path.s), path);
	if (n <= 0)
		return 0;
	struct rpe_verdict *v = bpf_map_lookup_elem(&rpe_exec_paths, &s->path);
	if (v && rpe_applies(v->runtimes, bit))
		return v->policy;

	/* basename of the path as asked for (bpf_loop: verified once, not per character) */
	struct rpe_base_ctx bc = {.s = s->path.s, .n = (__u32)n, .base = 0};
	bpf_loop(RPE_PATH_LEN, rpe_base_step, &bc, 0);
	__u32 base = bc.base;
	__builtin_memset(s->name.s, 0, sizeof(s->name.s));
	bpf_probe_read_kernel_str(s->name.s, sizeof(s->name.s),
				  s->path.s + (base & (RPE_PATH_LEN - 1)));
	v = bpf_map_lookup_elem(&rpe_exec_names, &s->name);
	if (v && rpe_applies(v->runtimes, bit))
		return v->policy;
	if (real) {
		__builtin_memset(s->name.s, 0, sizeof(s->name.s));
		bpf_probe_read_kernel_str(s->name.s, sizeof(s->name.s), real);
		v = bpf_map_lookup_elem(&rpe_exec_names, &s->name);
		if (v && rpe_applies(v->runtimes, bit))
			return v->policy;
	}

	struct rpe_conf *c = rpe_cfg();
	struct rpe_prefix_ctx pc = {.s = s->path.s, .n = c ? c->prefixes : 0, .policy = 0, .bit = bit};
	bpf_loop(RPE_PREFIXES, rpe_prefix_step, &pc, 0);
	if (pc.policy)
		return pc.policy;
	return 0;
}

/* Fill an exec block record: filename and as much argv as the new mm holds. */
static __always_inline void rpe_fill_exec(struct rpe_event *e, struct task_struct *t,
					  const char *path, int read_argv)
{
	e->ppid = BPF_CORE_READ(t, real_parent, tgid);
	e->start_time = BPF_CORE_READ(t, group_leader, start_boottime);
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), path);
	if (!read_argv)
		return;
	struct mm_struct *mm = BPF_CORE_READ(t, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	e->argv_len = len;
	if (len > RPE_ARGV_LEN - 1)
		len = RPE_ARGV_LEN - 1;
	len &= RPE_ARGV_LEN - 1;
	if (len > 0 && bpf_probe_read_user(e->argv, len, (void *)start) != 0)
		e->argv_len = 0;
}
#endif
