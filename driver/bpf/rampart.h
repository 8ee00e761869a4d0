/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Rampart driver: the records every program writes to the ring buffer, the maps they share,
 * and the helpers that fill Elkeid's common fields.
 *
 * The record layouts are mirrored by ctypes Structures in driver/events.py; the loader
 * compares them with this object's BTF at load time (driver/btfcheck.py) and refuses to run
 * on any difference, so a field added here and not there fails loudly, never silently.
 *
 * Kernel floor: 5.11 (bpf_get_current_task_btf); ring buffer 5.8, tp_btf 5.5, raw_tp 4.17.
 */
#ifndef RAMPART_H
#define RAMPART_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define RP_COMM_LEN 16
#define RP_NODE_LEN 64
#define RP_PATH_LEN 256
#define RP_ARGV_LEN 1024 /* bytes of the NUL-separated argv kept (the rest is cut, and counted) */
#define RP_DNS_LEN 256   /* bytes of a DNS query packet kept; a query name is at most 255 */
#define RP_FSTYPE_LEN 32
#define RP_NAME_LEN 16

/* Elkeid's data_type numbers (x86-64 syscall numbers, 6xx for its own kinds). */
#define DT_FORK 57 /* ours: fork/clone that makes a new process */
#define DT_EXECVE 59
#define DT_EXIT 60 /* ours: the thread-group leader exited */
#define DT_CONNECT 42
#define DT_BIND 49
#define DT_ACCEPT 43
#define DT_PTRACE 101
#define DT_PRCTL 157
#define DT_MOUNT 165
#define DT_MEMFD_CREATE 356
#define DT_OPEN 2
#define DT_DNS 601
#define DT_LOAD_MODULE 603
#define DT_CRED_CHANGE 604

/* Common fields (Elkeid's uid, pid, ppid, pgid, tgid, sid, comm, nodename, pns); `exe` is
 * added in user space from the process cache (a path walk in BPF costs more than it gives). */
struct rp_hdr {
	__u64 ts;          /* bpf_ktime_get_boot_ns() */
	__u64 start_time;  /* the thread-group leader's start_boottime, ns: with pid, a process id */
	__u64 cgroup_id;   /* cgroup v2 id; the loader maps it to a container id */
	__u32 data_type;
	__u32 pid;         /* tgid */
	__u32 tid;
	__u32 ppid;        /* real_parent's tgid */
	__u32 pgid;
	__u32 sid;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 pns;         /* inode number of the task's pid namespace */
	__u32 nspid;       /* the process's pid in that namespace (= pid outside containers) */
	__u32 _pad;
	char comm[RP_COMM_LEN];
	char nodename[RP_NODE_LEN];
};

struct rp_exec {
	struct rp_hdr h;
	__u32 argv_len;     /* bytes of argv in the new mm (may exceed what was kept) */
	__u32 argv_kept;
	__u32 old_uid;      /* ruid/euid before the exec (from sys_enter_execve), or -1 */
	__u32 old_euid;
	char filename[RP_PATH_LEN];
	char argv[RP_ARGV_LEN];
};

struct rp_fork {
	struct rp_hdr h;    /* the parent */
	__u64 child_start_time;
	__u32 child_pid;
	__u32 child_ppid;
};

struct rp_exit {
	struct rp_hdr h;
	__s32 exit_code;
	__u32 _pad;
};

/* connect (42), bind (49), accept (43): reported at syscall exit, with the result */
struct rp_sock {
	struct rp_hdr h;
	__s64 ret;
	__s32 fd;           /* accept: the new connection's fd */
	__u16 family;
	__u16 port;         /* host byte order: the remote port (connect, accept), or bind's */
	__u8 addr[16];      /* IPv4 in the first 4 bytes */
	__u8 laddr[16];     /* connect, accept: the socket's local address after the call */
	__u16 lport;
	__u16 sock_type;    /* SOCK_STREAM 1, SOCK_DGRAM 2 (0 if unknown) */
	__u32 _pad;
};

struct rp_dns {
	struct rp_hdr h;
	__u32 nr;           /* the send syscall */
	__u32 len;          /* payload length sent */
	__u16 family;
	__u16 port;
	__u8 addr[16];
	__u32 kept;
	__u8 payload[RP_DNS_LEN];
};

struct rp_ptrace {
	struct rp_hdr h;
	__s64 request;
	__s64 target_pid;
	__u64 addr;
	__u64 data;
};

struct rp_memfd {
	struct rp_hdr h;
	__u32 flags;
	__u32 _pad;
	char name[RP_PATH_LEN];
};

struct rp_module {
	struct rp_hdr h;
	__u32 nr;           /* init_module 175 or finit_module 313 */
	__s32 fd;           /* finit_module's fd, else -1 */
	__u64 len;          /* init_module's image length */
	char name[RP_PATH_LEN];  /* the fd's file name (finit_module) */
	char args[RP_PATH_LEN];  /* module parameters */
};

struct rp_mount {
	struct rp_hdr h;
	__u64 flags;
	char dev[RP_PATH_LEN];
	char dir[RP_PATH_LEN];
	char fstype[RP_FSTYPE_LEN];
};

struct rp_cred {
	struct rp_hdr h;    /* uid/euid here are the new ones */
	__u32 nr;           /* setuid/setreuid/setresuid/setfsuid, or 59 for a set-uid exec */
	__u32 old_uid;
	__u32 old_euid;
	__u32 _pad;
};

struct rp_prctl {
	struct rp_hdr h;
	__s32 option;
	__u32 _pad;
	char name[RP_NAME_LEN];
};

struct rp_open {
	struct rp_hdr h;
	__s32 flags;
	__u32 mode;
	__s32 dfd;
	__u32 nr;
	char path[RP_PATH_LEN];
};

/* Knobs the loader writes after load (array map `rp_config`, key 0). */
struct rp_config {
	__u32 self_pid;     /* the agent: its own syscalls are not reported */
	__u32 open_flags;   /* openat: report opens whose flags intersect this mask */
	__u32 open_prefixes; /* openat: entries used in rp_open_paths (any open under them) */
};

/* openat: a path prefix whose opens are reported whatever the flags (sensitive files) */
#define RP_OPEN_PREFIXES 8
#define RP_PREFIX_LEN 64
struct rp_prefix {
	__u32 len;
	char s[RP_PREFIX_LEN];
};

/* Shared maps: defined once in dispatch.bpf.c (RP_DEFINE_MAPS), extern elsewhere; the BPF
 * static linker (bpftool gen object) resolves them into one map each. */
struct rp_events_map {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* the loader sets driver_ringbuf_kb */
};
struct rp_drops_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
};
struct rp_config_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rp_config);
};
struct rp_open_paths_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RP_OPEN_PREFIXES);
	__type(key, __u32);
	__type(value, struct rp_prefix);
};
/* one path per CPU, read before deciding to report an open */
struct rp_path_buf {
	char s[RP_PATH_LEN];
};
struct rp_scratch_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rp_path_buf);
};
/* syscall number -> handler, for raw_tp/sys_enter and raw_tp/sys_exit */
struct rp_calls_map {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, __u32);
};
/* state kept from sys_enter to sys_exit of one thread (connect/bind args, old creds) */
struct rp_pending {
	__u64 arg0;
	__u64 arg1;
	__u32 nr;
	__u32 uid;
	__u32 euid;
	__u32 _pad;
};
struct rp_pending_map {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct rp_pending);
};

#ifdef RP_DEFINE_MAPS
#define RP_MAP
#else
#define RP_MAP extern
#endif
RP_MAP struct rp_events_map rp_events SEC(".maps");
RP_MAP struct rp_drops_map rp_drops SEC(".maps");
RP_MAP struct rp_config_map rp_config SEC(".maps");
RP_MAP struct rp_calls_map rp_enter_calls SEC(".maps");
RP_MAP struct rp_calls_map rp_exit_calls SEC(".maps");
RP_MAP struct rp_pending_map rp_pending SEC(".maps");
RP_MAP struct rp_open_paths_map rp_open_paths SEC(".maps");
RP_MAP struct rp_scratch_map rp_scratch SEC(".maps");

/* x86-64 syscall numbers we dispatch on */
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_BIND 49
#define NR_EXECVE 59
#define NR_PTRACE 101
#define NR_SETUID 105
#define NR_SETREUID 113
#define NR_SETRESUID 117
#define NR_SETFSUID 122
#define NR_PRCTL 157
#define NR_MOUNT 165
#define NR_INIT_MODULE 175
#define NR_OPENAT 257
#define NR_ACCEPT4 288
#define NR_SENDMMSG 307
#define NR_FINIT_MODULE 313
#define NR_MEMFD_CREATE 319
#define NR_EXECVEAT 322

#ifndef S_IFMT
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#endif
#define RP_AF_INET 2
#define RP_AF_INET6 10

static __always_inline void rp_count_drop(void)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&rp_drops, &k);
	if (n)
		*n += 1; /* per-CPU slot: no atomics needed */
}

/* Reserve a record; a full ring buffer is counted, never silent. */
static __always_inline void *rp_reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&rp_events, size, 0);
	if (!e)
		rp_count_drop();
	return e;
}

/*
 * Submit without waking the reader unless RP_WAKEUP_BYTES are waiting: under load one wakeup
 * serves many records instead of a context switch each; the reader also polls every 50 ms,
 * which bounds the delay when few events come. (Falco and Tetragon do the same.)
 */
#define RP_WAKEUP_BYTES (256 << 10)
static __always_inline void rp_submit(void *e)
{
	__u64 waiting = bpf_ringbuf_query(&rp_events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, waiting >= RP_WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

static __always_inline struct rp_config *rp_cfg(void)
{
	__u32 k = 0;
	return bpf_map_lookup_elem(&rp_config, &k);
}

/*
 * Elkeid's common fields. `t` is a BTF task pointer (tp_btf argument or
 * bpf_get_current_task_btf), so plain member loads are CO-RE-relocated direct loads (the
 * verifier makes them fault-safe), several times cheaper than a bpf_probe_read_kernel call
 * each; a helper read is kept where an index is variable.
 */
static __always_inline void rp_fill(struct rp_hdr *h, struct task_struct *t, __u32 data_type)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	h->ts = bpf_ktime_get_boot_ns();
	h->data_type = data_type;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->cgroup_id = bpf_get_current_cgroup_id();

	struct task_struct *leader = t->group_leader;
	h->start_time = leader->start_boottime;
	h->ppid = t->real_parent->tgid;
	h->euid = t->cred->euid.val;
	/* signal->pids[PGID/SID]->numbers[0].nr: the number in the initial pid namespace */
	struct signal_struct *sig = t->signal;
	struct pid *pg = sig->pids[PIDTYPE_PGID];
	struct pid *ss = sig->pids[PIDTYPE_SID];
	h->pgid = pg ? pg->numbers[0].nr : 0;
	h->sid = ss ? ss->numbers[0].nr : 0;

	/* the leader's pid struct: its number in the innermost namespace is the process's */
	struct pid *tp = leader->thread_pid;
	unsigned int level = tp->level;
	struct upid up = {};
	bpf_core_read(&up, sizeof(up), &tp->numbers[level & 31]);
	h->pns = BPF_CORE_READ(up.ns, ns.inum);
	h->nspid = up.nr;
	h->_pad = 0;

	bpf_get_current_comm(h->comm, sizeof(h->comm));
	struct uts_namespace *uts = t->nsproxy->uts_ns;
	/* the whole array, not up to the NUL: the kernel keeps its tail zeroed, so two records
	 * of one process are byte-equal but for ts (the agent folds identical storm records) */
	bpf_core_read(h->nodename, sizeof(h->nodename), &uts->name.nodename);
}

static __always_inline struct task_struct *rp_current(void)
{
	return bpf_get_current_task_btf();
}

/* raw_tp/sys_enter and sys_exit: args[0] is the user pt_regs, args[1] the id (enter) or
 * the return value (exit). x86-64 syscall argument registers: di, si, dx, r10, r8, r9. */
static __always_inline unsigned long rp_arg(struct bpf_raw_tracepoint_args *ctx, int n)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	switch (n) {
	case 0:
		return BPF_CORE_READ(regs, di);
	case 1:
		return BPF_CORE_READ(regs, si);
	case 2:
		return BPF_CORE_READ(regs, dx);
	case 3:
		return BPF_CORE_READ(regs, r10);
	case 4:
		return BPF_CORE_READ(regs, r8);
	default:
		return BPF_CORE_READ(regs, r9);
	}
}

/* A 32-bit compat syscall (int 0x80 / sysenter from an ia32 process): its numbers are not the
 * x86-64 ones the dispatcher routes on, so a handler reached with one must not read it as
 * ours. Skipped (not reported): a known gap, in docs/driver.md. */
#define RP_TS_COMPAT 0x0002
static __always_inline int rp_compat(void)
{
	return rp_current()->thread_info.status & RP_TS_COMPAT;
}

static __always_inline __u32 rp_nr(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	return (__u32)BPF_CORE_READ(regs, orig_ax);
}

/* The struct file behind one of the current task's fds, or NULL. */
static __always_inline struct file *rp_fd_file(int fd)
{
	struct fdtable *fdt = rp_current()->files->fdt;
	unsigned int max = fdt->max_fds;
	struct file **fds = fdt->fd;
	struct file *f = NULL;

	if (fd < 0 || (unsigned int)fd >= max)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The socket behind an fd (checked by the inode mode, not guessed), or NULL. */
static __always_inline struct socket *rp_fd_socket(int fd)
{
	struct file *f = rp_fd_file(fd);
	if (!f)
		return NULL;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode); /* f came from a helper read */
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	return (struct socket *)BPF_CORE_READ(f, private_data);
}

/* Copy a user sockaddr (in or in6) into family/port/addr. Returns 0 when it is neither. */
static __always_inline int rp_read_sockaddr(const void *uaddr, __u16 *family, __u16 *port,
					    __u8 addr[16])
{
	struct sockaddr_in6 sa = {};
	if (!uaddr || bpf_probe_read_user(&sa, sizeof(sa), uaddr) < 0) {
		/* a sockaddr_in near the end of a page: retry with the short size */
		struct sockaddr_in s4 = {};
		if (!uaddr || bpf_probe_read_user(&s4, sizeof(s4), uaddr) < 0)
			return 0;
		if (s4.sin_family != RP_AF_INET)
			return 0;
		*family = RP_AF_INET;
		*port = bpf_ntohs(s4.sin_port);
		__builtin_memcpy(addr, &s4.sin_addr, 4);
		return 1;
	}
	*family = sa.sin6_family;
	*port = bpf_ntohs(sa.sin6_port);
	if (sa.sin6_family == RP_AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
		__builtin_memcpy(addr, &s4->sin_addr, 4);
		return 1;
	}
	if (sa.sin6_family == RP_AF_INET6) {
		__builtin_memcpy(addr, &sa.sin6_addr, 16);
		return 1;
	}
	return 0;
}

#endif /* RAMPART_H */
