// SPDX-License-Identifier: GPL-2.0
/*
 * Process exec (data_type 59): tp_btf/sched_process_exec.
 *
 * Why this hook: it fires once per successful exec, after the new image is set up, in the
 * context of the process itself, so the new comm, creds and mm (argv) are in place and argv
 * is read from the new mm — not from the caller's pointers, which a racing thread could change
 * after sys_enter_execve. bprm->filename is the path as resolved by the kernel for the exec.
 * tp_btf gives typed access to (task, old_pid, bprm) without tracefs. Since: 5.5 (tp_btf).
 *
 * A set-uid exec that makes a non-root caller root is also reported as a cred change (604):
 * the caller's uid/euid are kept at sys_enter_execve (below) and compared here.
 */
#include "rampart.h"

SEC("raw_tp")
int rp_enter_execve(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct task_struct *t = rp_current();
	struct rp_pending p = {
		.nr = (__u32)ctx->args[1],
		.uid = (__u32)bpf_get_current_uid_gid(),
		.euid = t->cred->euid.val,
	};
	bpf_map_update_elem(&rp_pending, &tid, &p, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(rp_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 key = (__u32)old_pid;
	struct rp_pending *pend = bpf_map_lookup_elem(&rp_pending, &key);
	__u32 old_uid = (__u32)-1, old_euid = (__u32)-1;
	if (pend) {
		old_uid = pend->uid;
		old_euid = pend->euid;
		bpf_map_delete_elem(&rp_pending, &key);
	}

	struct rp_exec *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, p, DT_EXECVE);
	e->old_uid = old_uid;
	e->old_euid = old_euid;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));

	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	e->argv_len = len;
	if (len > RP_ARGV_LEN - 1)
		len = RP_ARGV_LEN - 1;
	len &= RP_ARGV_LEN - 1; /* a bound the verifier can see */
	e->argv_kept = 0;
	if (len > 0 && bpf_probe_read_user(e->argv, len, (void *)start) == 0)
		e->argv_kept = len;
	__u32 uid = e->h.uid, euid = e->h.euid;
	rp_submit(e);

	/* set-uid exec to root by a non-root caller */
	if (pend && old_uid != 0 && old_euid != 0 && (uid == 0 || euid == 0)) {
		struct rp_cred *c = rp_reserve(sizeof(*c));
		if (!c)
			return 0;
		rp_fill(&c->h, p, DT_CRED_CHANGE);
		c->nr = NR_EXECVE;
		c->old_uid = old_uid;
		c->old_euid = old_euid;
		rp_submit(c);
	}
	return 0;
}
