// SPDX-License-Identifier: GPL-2.0
/*
 * Denied programs for protected processes, without BPF LSM: tp_btf/sched_process_exec kills
 * the exec'ing task with bpf_send_signal(SIGKILL) when it descends from a protected process
 * and the program is denied.
 *
 * Why sched_process_exec and not sys_enter_execve: it fires once per *successful* exec, with
 * bprm->filename as the kernel resolved it and bprm->file (the file actually opened, so a
 * symlink like /bin/sh -> dash is seen by its real name too); the caller's filename pointer
 * is not re-read from user memory, so a racing thread (or the vfork parent sharing the memory)
 * cannot swap the path after the check; PATH searches (execvp trying each directory) do not
 * trigger on the misses; one hook serves execve and execveat. The kill is still in time: the
 * tracepoint runs inside execve before the return to user space, and SIGKILL is acted on at
 * that return, so not one instruction of the new image runs. The parent sees its child die
 * of signal 9 (the exec itself "succeeded", so it cannot get EPERM: that needs BPF LSM).
 * Since: tp_btf 5.5, bpf_send_signal from tracing programs 5.3, bpf_get_current_task_btf 5.11.
 */
#include "exec_match.h"

SEC("tp_btf/sched_process_exec")
int BPF_PROG(rpe_exec_kill, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 bit = 0;
	__u32 prot = rpe_protected_ancestor(p, &bit);
	if (!prot)
		return 0;
	struct rpe_conf *c = rpe_cfg();
	if (c && c->agent_pid && BPF_CORE_READ(p, tgid) == c->agent_pid)
		return 0;
	const char *path = BPF_CORE_READ(bprm, filename);
	const char *real = (const char *)BPF_CORE_READ(bprm, file, f_path.dentry, d_name.name);
	__u32 policy = rpe_exec_denied(path, real, bit);
	if (!policy)
		return 0;
	bpf_send_signal(RPE_SIGKILL);
	rpe_count(RPE_HOOK_EXEC_KILL);
	struct rpe_event *e = rpe_reserve();
	if (e) {
		e->protected_pid = prot;
		e->hook = RPE_HOOK_EXEC_KILL;
		e->policy = policy;
		e->blocked = 1;
		rpe_fill_exec(e, p, path, 1);
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}
