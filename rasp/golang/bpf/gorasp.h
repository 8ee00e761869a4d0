/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared by the Go probe's uprobe programs: the record, the maps, Go ABI helpers.
 *
 * Go functions are entered with ABIInternal (Go >= 1.17, amd64): integer arguments in
 * ax, bx, cx, di, si, r8, r9, r10, r11 and the current goroutine (g) in r14. A Go string is
 * two words (pointer, length) and is not NUL-terminated, so it is copied with its explicit
 * length. Entry only: Go moves goroutine stacks, so uretprobes (which patch the return
 * address on the stack) are unsafe on Go code.
 *
 * The record layout is mirrored by rasp/golang/records.py (checked against this object's BTF
 * at load).
 */
#ifndef GORASP_H
#define GORASP_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define GO_SLOTS 8
#define GO_STR_MAX 512 /* per slot; 511 bytes copied at most */
#define GO_ARGV_MAX (GO_SLOTS - 1)

struct go_event {
	__u32 tgid;
	__u32 tid;
	__u64 ts_ns;
	__u64 g;      /* the goroutine (r14), to tell requests apart */
	__u64 req_id; /* the request this goroutine is serving; 0: none known */
	__u32 hook;   /* the attach cookie: index in rasp/golang/hooks.py HOOKS */
	__u32 nstr;   /* slots filled */
	__s64 num;    /* an integer argument (OpenFile flags, argc), or 0 */
	__u32 len[GO_SLOTS];      /* bytes copied into str[i] */
	__u32 full_len[GO_SLOTS]; /* the Go string's real length (> len: truncated) */
	char str[GO_SLOTS][GO_STR_MAX];
};

/* Per protected process: the struct field offsets of the Go version that built it
 * (rasp/golang/offsets.py: from DWARF, else a per-version table). A process absent from this
 * map is not reported, whatever the uprobe's pid filter did. */
struct go_proc {
	__u32 req_method;
	__u32 req_url;
	__u32 req_host;
	__u32 req_remote;
	__u32 url_path;
	__u32 url_query;
	__u32 cmd_path;
	__u32 cmd_args;
	/* the liveness check of a goroutine's request (go_req_live); 0: unknown, not checked */
	__u32 resp_req;  /* net/http.response.req */
	__u32 resp_done; /* net/http.response.handlerDone (a 4-byte bool) */
	__u32 g_goid;    /* runtime.g.goid */
	__u32 _pad;
};

struct go_gkey {
	__u32 tgid;
	__u32 _pad;
	__u64 g;
};

/* The request a goroutine is serving, stored by serverHandler.ServeHTTP (one uprobe hit per
 * request, nothing at its end: the next request on the goroutine overwrites it). Its record is
 * written only when a sink fires in it (`sent`), read then from the *http.Request; before that
 * the sink checks that the request is still being served (go_req_live): a request that
 * reaches no sink costs a map lookup (an insert for a new goroutine) and no record. */
struct go_req {
	__u64 id;   /* set by the first sink (with `sent`); 0 before */
	__u64 req;  /* *net/http.Request */
	__u64 resp; /* *net/http.response (the ResponseWriter's data word) */
	__u64 goid; /* the goroutine's id (g structs are reused, ids are not); 0: unknown */
	__u32 sent;
	__u32 _pad;
};

#define GO_REQUEST_HOOK 0 /* rasp/golang/hooks.py REQUEST_HOOK: records of the request itself */

#ifdef GO_DEFINE_MAPS
#define GO_MAP
#else
#define GO_MAP extern
#endif

struct go_events_map {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
};
struct go_procs_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct go_proc);
};
/* goroutine -> request, set (overwritten) at serverHandler.ServeHTTP, never deleted by a
 * uprobe: LRU, so entries of goroutines that are gone age out instead of filling the map. */
struct go_requests_map {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_gkey);
	__type(value, struct go_req);
};
struct go_drops_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
};

GO_MAP struct go_events_map go_events SEC(".maps");
GO_MAP struct go_procs_map go_procs SEC(".maps");
GO_MAP struct go_requests_map go_requests SEC(".maps");
GO_MAP struct go_drops_map go_drops SEC(".maps");

static __always_inline struct go_proc *go_proc_of(__u32 tgid)
{
	return bpf_map_lookup_elem(&go_procs, &tgid);
}

static __always_inline void go_count_drop(void)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&go_drops, &k);
	if (n)
		(*n)++;
}

/* Copy the Go string (ptr, len) into slot i (a constant at every call site). */
static __always_inline void go_str(struct go_event *e, __u32 i, __u64 ptr, __u64 len)
{
	if (i >= GO_SLOTS)
		return;
	__u32 n = len < GO_STR_MAX - 1 ? (__u32)len : GO_STR_MAX - 1;
	e->full_len[i] = len > 0xffffffffULL ? 0xffffffff : (__u32)len;
	e->len[i] = 0;
	if (n && ptr && bpf_probe_read_user(e->str[i], n & (GO_STR_MAX - 1), (void *)ptr) == 0)
		e->len[i] = n;
	e->nstr = i + 1;
}

/* A Go string header stored in memory at addr (a struct field): two words. */
static __always_inline void go_str_at(struct go_event *e, __u32 i, __u64 addr)
{
	__u64 hdr[2] = {0, 0};
	if (bpf_probe_read_user(hdr, sizeof(hdr), (void *)addr))
		hdr[0] = hdr[1] = 0;
	go_str(e, i, hdr[0], hdr[1]);
}

/* Wake the agent's reader only when the data waiting crosses GO_WAKEUP_BYTES: a wakeup per
 * record (the default, adaptive mode wakes whenever the reader has caught up) costs the
 * hooked thread an irq_work and the reader a context switch each time; measured by
 * bench/go_overhead.py it tripled the per-hit cost. Only a record that crosses the
 * threshold wakes: while the reader is behind (a storm) the records after it do not, since
 * the ring's poll is level-triggered (readable while data waits) and a woken reader drains
 * everything before it polls again. The reader also polls every 50 ms
 * (rasp/golang/uprobes.py POLL_MS), which bounds the delay of a lone record. */
#define GO_WAKEUP_BYTES (64 << 10)
#define GO_RECORD_MAX (sizeof(struct go_event) + 8) /* with the ring's record header */

static __always_inline void go_submit(struct go_event *e)
{
	/* what waits, this record included (it counts from its reservation): the records that
	 * land in [threshold, threshold + the largest record) are the ones that cross it */
	__u64 waiting = bpf_ringbuf_query(&go_events, BPF_RB_AVAIL_DATA);
	int crossing = waiting >= GO_WAKEUP_BYTES && waiting < GO_WAKEUP_BYTES + GO_RECORD_MAX;
	bpf_ringbuf_submit(e, crossing ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* A record with room for `slots` strings only (a constant at every call site): the strings
 * come last, so a record of 2 slots is the first 1,128 bytes of the full 4,208-byte layout,
 * and the reader pads it back (rasp/golang/records.py decode). Most hooks read 1 or 2
 * strings: a quarter of the ring-buffer traffic. */
#define GO_RECORD_SIZE(slots) (offsetof(struct go_event, str) + (slots) * GO_STR_MAX)

static __always_inline struct go_event *go_alloc(struct pt_regs *ctx, __u32 tgid, __u32 slots)
{
	struct go_event *e = bpf_ringbuf_reserve(&go_events, GO_RECORD_SIZE(slots), 0);
	if (!e) {
		go_count_drop();
		return 0;
	}
	e->tgid = tgid;
	e->tid = (__u32)bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->g = ctx->r14;
	e->req_id = 0;
	e->hook = (__u32)bpf_get_attach_cookie(ctx);
	e->nstr = 0;
	e->num = 0;
	return e;
}

/* The request's record: method, URL path, raw query, remote address, Host. */
static __always_inline void go_emit_request(struct pt_regs *ctx, struct go_proc *p, __u32 tgid,
					    struct go_req *r)
{
	struct go_event *e = go_alloc(ctx, tgid, 5);
	if (!e)
		return;
	e->hook = GO_REQUEST_HOOK;
	e->req_id = r->id;
	__u64 req = r->req;
	__u64 url = 0;
	bpf_probe_read_user(&url, sizeof(url), (void *)(req + p->req_url));
	go_str_at(e, 0, req + p->req_method);
	if (url) {
		go_str_at(e, 1, url + p->url_path);
		go_str_at(e, 2, url + p->url_query);
	} else {
		go_str(e, 1, 0, 0);
		go_str(e, 2, 0, 0);
	}
	go_str_at(e, 3, req + p->req_remote);
	go_str_at(e, 4, req + p->req_host);
	go_submit(e);
}

/* Whether the request stored for this goroutine is still being served. The entry is never
 * removed when a request ends, so a sink that runs on the goroutine afterwards (a
 * Server.ConnState hook between keep-alive requests) or on another goroutine that got the
 * same, recycled g struct must not take it: the goroutine id must be the one ServeHTTP saw,
 * and the response must still belong to that request with its handler not returned
 * (finishRequest sets handlerDone). Read here, at a sink hit (rare), not per request. */
static __always_inline int go_req_live(struct go_proc *p, struct go_req *r, __u64 g)
{
	if (p->g_goid) {
		__u64 goid = 0;
		if (bpf_probe_read_user(&goid, sizeof(goid), (void *)(g + p->g_goid)) ||
		    goid != r->goid)
			return 0;
	}
	if (p->resp_done && r->resp) {
		__u64 req = 0;
		__u32 done = 1;
		if (bpf_probe_read_user(&req, sizeof(req), (void *)(r->resp + p->resp_req)) ||
		    req != r->req)
			return 0;
		if (bpf_probe_read_user(&done, sizeof(done), (void *)(r->resp + p->resp_done)) || done)
			return 0;
	}
	return 1;
}

/* Reserve a sink record for the current goroutine, header filled; the request it serves (if
 * any, and still live) is written first, once. */
static __always_inline struct go_event *go_reserve(struct pt_regs *ctx, struct go_proc *p,
						   __u32 tgid, __u32 slots)
{
	struct go_gkey key = {.tgid = tgid, .g = ctx->r14};
	struct go_req *r = bpf_map_lookup_elem(&go_requests, &key);
	__u64 id = 0;
	if (r && go_req_live(p, r, ctx->r14)) {
		if (!r->sent) {
			r->sent = 1;
			r->id = bpf_ktime_get_ns(); /* the request's id, from its first sink on */
			go_emit_request(ctx, p, tgid, r);
		}
		id = r->id;
	}
	struct go_event *e = go_alloc(ctx, tgid, slots);
	if (e)
		e->req_id = id;
	return e;
}

#endif
