// SPDX-License-Identifier: GPL-2.0
/*
 * Process exit (data_type 60, our number: the x86-64 exit syscall): tp_btf/sched_process_exit.
 *
 * Why this hook: every task passes it in do_exit, whatever killed it. Only the thread-group
 * leader is reported (one event per process). The cache keeps the entry a while after it, so
 * events of a process that just exited can still be enriched. Not stored by default.
 * Since: 5.5 (tp_btf).
 */
#include "rampart.h"

SEC("tp_btf/sched_process_exit")
int BPF_PROG(rp_exit, struct task_struct *p)
{
	if (BPF_CORE_READ(p, pid) != BPF_CORE_READ(p, tgid))
		return 0;
	struct rp_exit *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, p, DT_EXIT);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	rp_submit(e);
	return 0;
}
