// SPDX-License-Identifier: GPL-2.0
/*
 * Process fork (data_type 57, our number: the x86-64 fork syscall): tp_btf/sched_process_fork.
 *
 * Why this hook: it fires for every fork/vfork/clone after the child exists, with both tasks,
 * so the process cache learns the child (pid, parent, start time) before the child can exec
 * or connect to the agent. New threads (CLONE_THREAD) are skipped: they are not processes.
 * Not stored by default: it feeds the cache. Since: 5.5 (tp_btf).
 */
#include "rampart.h"

SEC("tp_btf/sched_process_fork")
int BPF_PROG(rp_fork, struct task_struct *parent, struct task_struct *child)
{
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	struct rp_fork *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, parent, DT_FORK);
	e->child_pid = BPF_CORE_READ(child, tgid);
	e->child_ppid = BPF_CORE_READ(child, real_parent, tgid);
	e->child_start_time = BPF_CORE_READ(child, start_boottime);
	rp_submit(e);
	return 0;
}
