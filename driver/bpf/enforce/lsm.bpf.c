// SPDX-License-Identifier: GPL-2.0
/*
 * BPF LSM enforcement, used where the kernel loads LSM programs (CONFIG_BPF_LSM and `bpf` in
 * the active LSMs, and trampolines allowed): the call is refused with EPERM before it acts,
 * in every process the policy scopes, with no kill needed.
 *
 * bprm_check_security: runs inside execve once the file is opened and before the point of
 * no return, so the caller's execve fails with EPERM (Python raises PermissionError, Go's
 * exec.Command returns the error) instead of the child dying of SIGKILL.
 * socket_connect: every connect (TCP and UDP connect) with the address as passed; unconnected
 * UDP sendto is not seen here (the cgroup sendmsg programs cover it where they attach).
 * Since: 5.7 (BPF LSM). On our CI kernel these are refused at load (EPERM): see
 * notes/platform-facts.md §6; host_agent/enforce.py then falls back to connect.bpf.c and
 * exec.bpf.c.
 */
#include "exec_match.h"

SEC("lsm/bprm_check_security")
int BPF_PROG(rpe_lsm_exec, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 bit = 0;
	__u32 prot = rpe_protected_ancestor(t, &bit);
	if (!prot)
		return 0;
	const char *path = BPF_CORE_READ(bprm, filename);
	const char *real = (const char *)BPF_CORE_READ(bprm, file, f_path.dentry, d_name.name);
	__u32 policy = rpe_exec_denied(path, real, bit);
	if (!policy)
		return 0;
	rpe_count(RPE_HOOK_LSM_EXEC);
	struct rpe_event *e = rpe_reserve();
	if (e) {
		e->protected_pid = prot;
		e->hook = RPE_HOOK_LSM_EXEC;
		e->policy = policy;
		e->blocked = 1;
		rpe_fill_exec(e, t, path, 0); /* the old mm: argv of the new image is not set up */
		bpf_ringbuf_submit(e, 0);
	}
	return -RPE_EPERM;
}

SEC("lsm/socket_connect")
int BPF_PROG(rpe_lsm_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	__u32 tgid;
	struct rpe_proc *p = rpe_self_protected(&tgid);
	if (!p)
		return 0;
	__u16 family = BPF_CORE_READ(address, sa_family);
	__u32 words[4] = {};
	__u16 port;
	if (family == RPE_AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)address;
		words[0] = BPF_CORE_READ(in, sin_addr.s_addr);
		port = bpf_ntohs(BPF_CORE_READ(in, sin_port));
	} else if (family == RPE_AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)address;
		bpf_probe_read_kernel(words, 16, &in6->sin6_addr);
		port = bpf_ntohs(BPF_CORE_READ(in6, sin6_port));
	} else {
		return 0;
	}
	const struct rpe_net_rule *r = rpe_net_match(family, words, port, p->runtime_bit);
	if (!r)
		return 0;
	__u32 policy = r->policy;
	rpe_count(RPE_HOOK_LSM_CONNECT);
	struct rpe_event *e = rpe_reserve();
	if (e) {
		e->protected_pid = tgid;
		e->hook = RPE_HOOK_LSM_CONNECT;
		e->policy = policy;
		e->blocked = 1;
		e->family = family;
		e->port = port;
		__builtin_memcpy(e->addr, words, 16);
		e->start_time = p->start_time;
		bpf_ringbuf_submit(e, 0);
	}
	return -RPE_EPERM;
}
