// SPDX-License-Identifier: GPL-2.0
/*
 * DNS queries (data_type 601): sendto / sendmsg / sendmmsg of a UDP datagram to port 53.
 * The first RP_DNS_LEN bytes of the packet are copied; user space decodes the query name
 * (a query name is at most 255 bytes, so it always fits).
 *
 * Why the send side (Elkeid reads replies at recv exit): the query is in the caller's buffer
 * at syscall entry, one copy, no reply matching; resolvers that connect() their UDP socket
 * (glibc) send without an address, so the destination then comes from the socket itself.
 * Since: raw_tp 4.17 (dispatch.bpf.c).
 */
#include "rampart.h"

#define RP_DNS_PORT 53
#define RP_SOCK_DGRAM 2

struct rp_iovec {
	void *base;
	__u64 len;
};

static __always_inline int rp_dns(struct bpf_raw_tracepoint_args *ctx, __u32 nr, int fd,
				  const void *uaddr, const void *buf, __u64 len)
{
	if (rp_compat())
		return 0;
	__u16 family = 0, port = 0;
	__u8 addr[16] = {};
	struct socket *s = rp_fd_socket(fd);
	if (!s || BPF_CORE_READ(s, type) != RP_SOCK_DGRAM)
		return 0;
	if (uaddr) {
		if (!rp_read_sockaddr(uaddr, &family, &port, addr))
			return 0;
	} else {
		/* a connected socket: its peer */
		struct sock *sk = BPF_CORE_READ(s, sk);
		family = BPF_CORE_READ(sk, __sk_common.skc_family);
		port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		if (family == RP_AF_INET)
			bpf_core_read(addr, 4, &sk->__sk_common.skc_daddr);
		else
			bpf_core_read(addr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	if (port != RP_DNS_PORT || !buf)
		return 0;

	struct rp_dns *e = rp_reserve(sizeof(*e));
	if (!e)
		return 0;
	rp_fill(&e->h, rp_current(), DT_DNS);
	e->nr = nr;
	e->len = len;
	e->family = family;
	e->port = port;
	__builtin_memcpy(e->addr, addr, sizeof(addr));
	__u64 n = len < RP_DNS_LEN ? len : RP_DNS_LEN;
	n &= RP_DNS_LEN * 2 - 1; /* a bound the verifier can see */
	if (n > RP_DNS_LEN)
		n = RP_DNS_LEN;
	e->kept = 0;
	if (n > 0 && bpf_probe_read_user(e->payload, n, buf) == 0)
		e->kept = n;
	rp_submit(e);
	return 0;
}

SEC("raw_tp")
int rp_enter_sendto(struct bpf_raw_tracepoint_args *ctx)
{
	/* sendto(fd, buf, len, flags, addr, addrlen) */
	return rp_dns(ctx, NR_SENDTO, (int)rp_arg(ctx, 0), (const void *)rp_arg(ctx, 4),
		      (const void *)rp_arg(ctx, 1), rp_arg(ctx, 2));
}

static __always_inline int rp_dns_msg(struct bpf_raw_tracepoint_args *ctx, __u32 nr,
				      const struct user_msghdr *um)
{
	struct user_msghdr m = {};
	struct rp_iovec iov = {};
	if (bpf_probe_read_user(&m, sizeof(m), um) < 0 || !m.msg_iov || m.msg_iovlen < 1)
		return 0;
	if (bpf_probe_read_user(&iov, sizeof(iov), m.msg_iov) < 0)
		return 0;
	return rp_dns(ctx, nr, (int)rp_arg(ctx, 0), m.msg_name, iov.base, iov.len);
}

SEC("raw_tp")
int rp_enter_sendmsg(struct bpf_raw_tracepoint_args *ctx)
{
	return rp_dns_msg(ctx, NR_SENDMSG, (const struct user_msghdr *)rp_arg(ctx, 1));
}

SEC("raw_tp")
int rp_enter_sendmmsg(struct bpf_raw_tracepoint_args *ctx)
{
	/* the first message of the vector: glibc sends the A and AAAA queries together */
	return rp_dns_msg(ctx, NR_SENDMMSG, (const struct user_msghdr *)rp_arg(ctx, 1));
}
