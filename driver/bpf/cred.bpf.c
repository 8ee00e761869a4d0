// SPDX-License-Identifier: GPL-2.0
/*
 * Credential change to root (data_type 604): setuid/setreuid/setresuid/setfsuid that take a
 * process whose real and effective uid were both non-zero to uid 0 or euid 0. (A set-uid exec
 * to root is reported from exec.bpf.c.) Elkeid hooks commit_creds, which also sees kernel
 * exploits that bypass the syscalls; no kprobe here, so we compare the creds around the
 * syscalls: enter keeps them, exit compares. Since: raw_tp 4.17.
 */
#include "rampart.h"

SEC("raw_tp")
int rp_enter_setuid(struct bpf_raw_tracepoint_args *ctx)
{
	if (rp_compat())
		return 0;
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u32 euid = rp_current()->cred->euid.val;
	if (uid == 0 || euid == 0)
		return 0; /* already root: nothing to gain */
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct rp_pending p = {.nr = (__u32)ctx->args[1], .uid = uid, .euid = euid};
	bpf_map_update_elem(&rp_pending, &tid, &p, BPF_ANY);
	return 0;
}

SEC("raw_tp")
int rp_exit_setuid(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct rp_pending *p = bpf_map_lookup_elem(&rp_pending, &tid);
	if (!p)
		return 0;
	__u32 nr = p->nr, old_uid = p->uid, old_euid = p->euid;
	bpf_map_delete_elem(&rp_pending, &tid);

	struct task_struct *t = rp_current();
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u32 euid = t->cred->euid.val;
	if (uid != 0 && euid != 0)
		return 0;
	struct rp_cred *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, t, DT_CRED_CHANGE);
	e->nr = nr;
	e->old_uid = old_uid;
	e->old_euid = old_euid;
	e->_pad = 0;
	rp_submit(e);
	return 0;
}
