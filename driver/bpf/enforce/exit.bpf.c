// SPDX-License-Identifier: GPL-2.0
/*
 * A protected process that exits leaves the protected set at once, in the kernel, so a pid
 * the kernel hands out again is never born protected (the agent also unprotects when the
 * probe goes; this covers the window before it hears, and a crashed agent).
 *
 * Why tp_btf/sched_process_exit: it runs for every exiting task in its own context; the
 * entry is removed when the thread-group leader exits (tid == tgid), whose pid is the key.
 * Since: tp_btf 5.5.
 */
#include "enforce.h"

SEC("tp_btf/sched_process_exit")
int BPF_PROG(rpe_exit, struct task_struct *p)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if ((__u32)pid_tgid != tgid)
		return 0;
	bpf_map_delete_elem(&rpe_protected, &tgid);
	return 0;
}
