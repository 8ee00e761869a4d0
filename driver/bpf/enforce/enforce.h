/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Rampart kernel enforcement (host_agent/enforce.py): the maps every enforcement program
 * shares, the block record, and the two matchers (protected process, denied destination).
 *
 * A separate object from the driver (build/bpf/enforce.bpf.o): enforcement must be loadable
 * with the driver off, and a program the kernel refuses here (BPF LSM) must not take the
 * driver down with it. The record layout is mirrored in host_agent/enforce.py (RpeEvent).
 *
 * Kernel floor: 5.11 for the tracepoint path (tp_btf 5.5, ring buffer 5.8, bounded loops
 * 5.3, bpf_send_signal 5.3, bpf_get_current_task_btf 5.11); cgroup sock_addr connect 4.17,
 * sendmsg 4.18, BPF links on cgroups 5.7; BPF LSM 5.7.
 */
#ifndef RPE_ENFORCE_H
#define RPE_ENFORCE_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define RPE_COMM_LEN 16
#define RPE_PATH_LEN 256
#define RPE_NAME_LEN 64
#define RPE_ARGV_LEN 512
#define RPE_NET_RULES 64
#define RPE_PREFIXES 8
#define RPE_DEPTH 8 /* ancestors searched for a protected process at exec */
#define RPE_AF_INET 2
#define RPE_AF_INET6 10
#define RPE_EPERM 1
#define RPE_SIGKILL 9

/* what blocked (or saw) the call: host_agent/enforce.py HOOKS */
#define RPE_HOOK_CONNECT4 1
#define RPE_HOOK_CONNECT6 2
#define RPE_HOOK_SENDMSG4 3
#define RPE_HOOK_SENDMSG6 4
#define RPE_HOOK_EXEC_KILL 5
#define RPE_HOOK_LSM_CONNECT 6
#define RPE_HOOK_LSM_EXEC 7
#define RPE_HOOKS 8

/* a protected process: key tgid. start_time (the leader's start_boottime in clock ticks) guards against a
 * recycled pid where the check can read it; sched_process_exit removes the entry anyway. */
struct rpe_proc {
	__u64 start_time;
	__u32 runtime_bit; /* 1 << index in enforce.py RUNTIMES: rules are scoped by runtime */
	__u32 _pad;
};

/* a denied destination: addr/prefixlen (IPv4 as the first 4 bytes), port 0 = any */
struct rpe_net_rule {
	__u32 policy;   /* generation << 16 | index into the agent's policy-id table */
	__u32 runtimes; /* runtime bits this rule applies to; 0 = every runtime */
	__u16 family;
	__u16 port;     /* host byte order */
	__u32 prefixlen;
	__u8 addr[16];
};

struct rpe_verdict {
	__u32 policy;
	__u32 runtimes;
};

struct rpe_path_key {
	char s[RPE_PATH_LEN];
};
struct rpe_name_key {
	char s[RPE_NAME_LEN];
};
struct rpe_prefix {
	__u32 len;
	__u32 policy;
	__u32 runtimes;
	char s[RPE_NAME_LEN];
};

struct rpe_conf {
	__u32 net_rules; /* entries used in rpe_net */
	__u32 prefixes;  /* entries used in rpe_exec_prefix */
	__u32 agent_pid; /* never blocked */
	__u32 tick_ns;   /* ns per clock tick: rpe_proc.start_time is in ticks, as /proc says */
};

/* one block (or, for hooks that only observe, one hit) */
struct rpe_event {
	__u64 ts;           /* bpf_ktime_get_boot_ns() */
	__u64 start_time;
	__u32 pid;          /* tgid of the caller (the forked child for exec) */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 protected_pid; /* the protected process it matched (itself or an ancestor) */
	__u32 hook;
	__u32 policy;
	__u32 blocked;
	__u16 family;
	__u16 port;
	__u32 argv_len;
	__u8 addr[16];
	char comm[RPE_COMM_LEN];
	char filename[RPE_PATH_LEN];
	char argv[RPE_ARGV_LEN];
};

struct rpe_protected_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct rpe_proc);
};
struct rpe_net_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RPE_NET_RULES);
	__type(key, __u32);
	__type(value, struct rpe_net_rule);
};
struct rpe_paths_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct rpe_path_key);
	__type(value, struct rpe_verdict);
};
struct rpe_names_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct rpe_name_key);
	__type(value, struct rpe_verdict);
};
struct rpe_prefix_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RPE_PREFIXES);
	__type(key, __u32);
	__type(value, struct rpe_prefix);
};
struct rpe_conf_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rpe_conf);
};
struct rpe_counts_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RPE_HOOKS + 1); /* [hook] blocks; [0] ring-buffer drops */
	__type(key, __u32);
	__type(value, __u64);
};
struct rpe_events_map {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
};
/* scratch keys (too big for the 512-byte BPF stack next to the rest) */
struct rpe_scratch {
	struct rpe_path_key path;
	struct rpe_name_key name;
};
struct rpe_scratch_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rpe_scratch);
};

#ifdef RPE_DEFINE_MAPS
#define RPE_MAP
#else
#define RPE_MAP extern
#endif
RPE_MAP struct rpe_protected_map rpe_protected SEC(".maps");
RPE_MAP struct rpe_net_map rpe_net SEC(".maps");
RPE_MAP struct rpe_paths_map rpe_exec_paths SEC(".maps");
RPE_MAP struct rpe_names_map rpe_exec_names SEC(".maps");
RPE_MAP struct rpe_prefix_map rpe_exec_prefix SEC(".maps");
RPE_MAP struct rpe_conf_map rpe_conf SEC(".maps");
RPE_MAP struct rpe_counts_map rpe_counts SEC(".maps");
RPE_MAP struct rpe_events_map rpe_events SEC(".maps");
RPE_MAP struct rpe_scratch_map rpe_scratch SEC(".maps");

static __always_inline struct rpe_conf *rpe_cfg(void)
{
	__u32 k = 0;
	return bpf_map_lookup_elem(&rpe_conf, &k);
}

static __always_inline void rpe_count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&rpe_counts, &slot);
	if (n)
		*n += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline struct rpe_event *rpe_reserve(void)
{
	struct rpe_event *e = bpf_ringbuf_reserve(&rpe_events, sizeof(*e), 0);
	if (!e) {
		rpe_count(0);
		return 0;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts = bpf_ktime_get_boot_ns();
	e->start_time = 0;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->ppid = 0;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->family = 0;
	e->port = 0;
	e->argv_len = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->filename[0] = 0;
	e->argv[0] = 0;
	return e;
}

/* Does `addr` (network order, 4 or 16 bytes) fall in rule r's prefix? Word by word, so the
 * verifier sees four fixed steps. */
static __always_inline int rpe_in_prefix(const struct rpe_net_rule *r, const __u32 *words,
					 int nwords)
{
	const __u32 *rw = (const __u32 *)r->addr;
	__u32 left = r->prefixlen;
#pragma unroll
	for (int w = 0; w < 4; w++) {
		if (w >= nwords || left == 0)
			break;
		__u32 bits = left > 32 ? 32 : left;
		__u32 mask = bits == 32 ? 0xffffffff : ~(0xffffffffu >> bits);
		if ((bpf_ntohl(words[w]) & mask) != (bpf_ntohl(rw[w]) & mask))
			return 0;
		left -= bits;
	}
	return 1;
}

/* The first denied-destination rule for this (family, address, port) and runtime, or 0. */
static __always_inline const struct rpe_net_rule *rpe_net_match(__u16 family, const __u32 *words,
								 __u16 port, __u32 runtime_bit)
{
	struct rpe_conf *c = rpe_cfg();
	if (!c)
		return 0;
	__u32 n = c->net_rules;
	int nwords = family == RPE_AF_INET ? 1 : 4;
	for (__u32 i = 0; i < RPE_NET_RULES; i++) {
		if (i >= n)
			break;
		__u32 k = i;
		const struct rpe_net_rule *r = bpf_map_lookup_elem(&rpe_net, &k);
		if (!r)
			break;
		if (r->family != family || (r->port && r->port != port))
			continue;
		if (r->runtimes && !(r->runtimes & runtime_bit))
			continue;
		if (rpe_in_prefix(r, words, nwords))
			return r;
	}
	return 0;
}

/* The calling process's protection entry, if it is protected (connect: the caller itself). */
static __always_inline struct rpe_proc *rpe_self_protected(__u32 *tgid)
{
	*tgid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_lookup_elem(&rpe_protected, tgid);
}

#endif
