// SPDX-License-Identifier: GPL-2.0
/*
 * connect (data_type 42) and bind (49): at syscall exit, (fd, sockaddr pointer) from the saved
 * user registers (the kernel preserves rdi/rsi across a syscall: no enter handler, no map
 * state), then the sockaddr is read and reported with the result (Elkeid's `res`), so a refused
 * connect is told apart from one that went through (-EINPROGRESS for non-blocking sockets);
 * connect also reports the local address the kernel chose. accept/accept4 (43, off by
 * default as in Elkeid): at exit, both ends from the new connection's socket.
 *
 * Why the syscall and not tcp_v4_connect & co.: kprobes are absent on our kernels, and the
 * syscall sees every family and protocol (UDP "connect" included) with the caller's address
 * as it asked for it. The sockaddr is read at exit from the caller's memory, which the caller
 * cannot have freed while blocked in the call. Since: raw_tp 4.17 (dispatch.bpf.c).
 */
#include "rampart.h"

/* The local end of a socket: address and port (skc_num is already in host order). */
static __always_inline void rp_sock_local(struct sock *sk, __u16 family, __u8 laddr[16],
					  __u16 *lport)
{
	*lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (family == RP_AF_INET)
		bpf_core_read(laddr, 4, &sk->__sk_common.skc_rcv_saddr);
	else if (family == RP_AF_INET6)
		bpf_core_read(laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
}

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
	if (rp_compat())
		return 0; /* an ia32 syscall whose number happens to be ours */
	int fd = (int)rp_arg(ctx, 0);
	const void *uaddr = (const void *)rp_arg(ctx, 1);

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
	__builtin_memset(e->laddr, 0, sizeof(e->laddr));
	e->lport = 0;
	e->_pad = 0;
	if (s && type == DT_CONNECT)
		rp_sock_local(BPF_CORE_READ(s, sk), e->family, e->laddr, &e->lport);
	rp_submit(e);
	return 0;
}

SEC("raw_tp")
int rp_enter_accept(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_sock_enter(ctx, (__u32)ctx->args[1]);
}

SEC("raw_tp")
int rp_exit_accept(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&rp_pending, &tid);
	long ret = (long)ctx->args[1];
	if (ret < 0)
		return 0; /* EAGAIN on a non-blocking listener: no connection, no event */
	struct socket *s = rp_fd_socket((int)ret);
	if (!s)
		return 0;
	struct sock *sk = BPF_CORE_READ(s, sk);
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != RP_AF_INET && family != RP_AF_INET6)
		return 0;
	struct rp_sock *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_ACCEPT);
	e->ret = ret;
	e->fd = (int)ret;
	e->family = family;
	e->sock_type = BPF_CORE_READ(s, type);
	e->_pad = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	__builtin_memset(e->laddr, 0, sizeof(e->laddr));
	e->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == RP_AF_INET)
		bpf_core_read(e->addr, 4, &sk->__sk_common.skc_daddr);
	else
		bpf_core_read(e->addr, 16, &sk->__sk_common.skc_v6_daddr);
	rp_sock_local(sk, family, e->laddr, &e->lport);
	rp_submit(e);
	return 0;
}

SEC("raw_tp")
int rp_exit_connect(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_sock_exit(ctx, DT_CONNECT);
}

SEC("raw_tp")
int rp_exit_bind(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_sock_exit(ctx, DT_BIND);
}
