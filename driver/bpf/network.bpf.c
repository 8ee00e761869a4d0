// SPDX-License-Identifier: GPL-2.0
/*
 * connect (data_type 42) and bind (49): syscall enter keeps (fd, sockaddr pointer), syscall
 * exit reads the sockaddr and reports it with the result (Elkeid's `res`), so a refused
 * connect is told apart from one that went through (-EINPROGRESS for non-blocking sockets).
 *
 * Why the syscall and not tcp_v4_connect & co.: kprobes are absent on our kernels, and the
 * syscall sees every family and protocol (UDP "connect" included) with the caller's address
 * as it asked for it. The sockaddr is read at exit from the caller's memory, which the caller
 * cannot have freed while blocked in the call. Since: raw_tp 4.17 (dispatch.bpf.c).
 */
#include "rampart.h"

static __always_inline int rp_sock_enter(struct bpf_raw_tracepoint_args *ctx, __u32 nr)
{
	if (rp_compat())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct rp_pending p = {
		.nr = nr,
		.arg0 = rp_arg(ctx, 0),
		.arg1 = rp_arg(ctx, 1),
	};
	bpf_map_update_elem(&rp_pending, &tid, &p, BPF_ANY);
	return 0;
}

static __always_inline int rp_sock_exit(struct bpf_raw_tracepoint_args *ctx, __u32 type)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct rp_pending *p = bpf_map_lookup_elem(&rp_pending, &tid);
	if (!p)
		return 0;
	int fd = (int)p->arg0;
	const void *uaddr = (const void *)p->arg1;
	bpf_map_delete_elem(&rp_pending, &tid);

	struct rp_sock *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	e->family = 0;
	e->port = 0;
	if (!rp_read_sockaddr(uaddr, &e->family, &e->port, e->addr)) {
		/* AF_UNIX, AF_NETLINK...: not a network event */
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return 0;
	}
	rp_fill(&e->h, rp_current(), type);
	e->ret = (__s64)ctx->args[1];
	e->fd = fd;
	struct socket *s = rp_fd_socket(fd);
	e->sock_type = s ? BPF_CORE_READ(s, type) : 0;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	rp_submit(e);
	return 0;
}

SEC("raw_tp")
int rp_enter_connect(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_sock_enter(ctx, NR_CONNECT);
}

SEC("raw_tp")
int rp_exit_connect(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_sock_exit(ctx, DT_CONNECT);
}

SEC("raw_tp")
int rp_enter_bind(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_sock_enter(ctx, NR_BIND);
}

SEC("raw_tp")
int rp_exit_bind(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_sock_exit(ctx, DT_BIND);
}
