/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Block on detections, in the kernel, at the sink's uprobe (docs/go-probe.md, "Blocking on
 * detections"). The Go probe observes from outside the process, so a detection the agent makes
 * arrives after the call ran; to stop the call, the decision is made here, synchronously, with
 * a bounded form of the in-probe checks of the other runtimes (rasp/python/rampart_probe/
 * detect.py; same rule ids):
 *   a query parameter value (URL-decoded, >= 3 bytes, 8 values of <= 127 bytes) found in the
 *   sink's argument, carrying the syntax that changes its meaning for that sink:
 *   sqli.input     it crosses a string/comment boundary of the query, or brings SQL structure
 *                  (a keyword, an operator, a quote, `;`, a parenthesis) into code;
 *   cmdi.input     `sh -c` script: shell syntax (; & | ` < > newline $( ${) outside quotes;
 *   path.traversal `..` as a path element (or encoded), or an absolute path the path starts with;
 *   ssrf.internal  the dialled/resolved host is loopback, private, link-local, unspecified or
 *                  an internal name, and a parameter names it.
 * Only for a goroutine serving a request (go_requests has it and go_req_live says it is still
 * being served: it runs under net/http's recover), only when the agent put the rule in block
 * mode for this pid (go_detect_cfg).
 *
 * How the call is stopped: bpf_send_signal_thread(SIGFPE). The kernel sends it with si_code
 * SI_KERNEL, so Go's signal handler treats it as a fault in Go code at that PC and injects a
 * run-time panic ("floating point error", runtime/signal_unix.go sigpanic) there: the sink's
 * body never runs, the handler unwinds, net/http's conn.serve recovers, closes that connection
 * and keeps serving. SIGSEGV would not do: Go throws (fatal, unrecoverable) on a SIGSEGV whose
 * si_code is SI_KERNEL. Verified on go1.26 static, cgo and stripped builds
 * (tests/integration/test_go_probe.py).
 */
#ifndef GO_DETECT_H
#define GO_DETECT_H

#include "gorasp.h"

#define GO_SIGFPE 8

/* rule codes: the record's `rule` (rasp/golang/records.py RULES) and bits of cfg.rules */
#define GO_RULE_SQLI 1
#define GO_RULE_CMDI 2
#define GO_RULE_PATH 3
#define GO_RULE_SSRF 4

#define GO_NVAL 8
#define GO_VMAX 128 /* per value, 127 bytes kept */
#define GO_MIN_INPUT 3
#define GO_EXEMPTS 4
#define GO_EX_MAX 64
#define GO_KW_MAX 24

/* The scratch buffer (per CPU): regions of one 4 KiB array so every index is one mask. */
#define GO_BUF 4096
#define GO_Q 0       /* the raw query, 511 bytes */
#define GO_S 512     /* the sink's argument, 511 bytes */
#define GO_V 1024    /* GO_NVAL decoded values of GO_VMAX */
#define GO_H 2048    /* the host of a dial, 255 bytes */
#define GO_P 2304    /* the request's URL path, GO_EX_MAX */
#define GO_A 2560    /* a shell argv[0] / argv[1] */
#define GO_SMAX 511
#define M(x) ((x) & (GO_BUF - 1))

/* A whitelist entry the kernel can apply: a request path, exact or prefix (the agent turns
 * `^/x$` and `^/x` into these; a rule with any other exemption is not blocked here). */
struct go_exempt {
	__u32 rules; /* bit (1 << rule code) */
	__u32 prefix;
	__u32 len;
	__u32 _pad;
	char path[GO_EX_MAX];
};

struct go_detect_cfg {
	__u32 rules; /* bits (1 << rule code) in block mode for this pid */
	__u32 nexempt;
	struct go_exempt ex[GO_EXEMPTS];
};

/* the state of the IPv4 parser (in the map, not on the stack: the verifier tracks stack
 * scalars exactly, so a loop callback counting in them never converges) */
struct go_ipstate {
	__u64 parts[4];
	__u64 cur;
	__u32 nparts, base, digits, bad;
};

struct go_qstate {
	__u32 nval, cur, inval, pct, acc;
};

struct go_sstate {
	__u32 st, prev, start_st, left, structure, kw, wlen, _pad;
	char word[GO_KW_MAX];
};

struct go_scratch {
	char b[GO_BUF];
	__u32 vlen[GO_NVAL];
	struct go_ipstate ip;
	struct go_qstate q;
	struct go_sstate s;
	__u64 owner; /* the thread using it (a preempted check fails open, see go_detect) */
};

struct go_detect_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct go_detect_cfg);
};
struct go_scratch_map {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct go_scratch);
};
/* SQL keywords (lowercase, NUL-padded), filled by the agent from the Python probe's list */
struct go_keywords_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, char[GO_KW_MAX]);
	__type(value, __u8);
};

#ifdef GO_DETECT_DEFINE_MAPS
#define GO_DMAP
#else
#define GO_DMAP extern
#endif
GO_DMAP struct go_detect_map go_detect_cfg SEC(".maps");
GO_DMAP struct go_scratch_map go_scratch SEC(".maps");
GO_DMAP struct go_keywords_map go_keywords SEC(".maps");

/* ------------------------------------------------------------------ helpers */

static __always_inline int go_lower(int c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

static __always_inline int go_hex(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = go_lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static __always_inline int go_wordc(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '$';
}

/* Copy the Go string (ptr, len) into region off (at most max bytes); its length copied. */
static __always_inline __u32 go_load(struct go_scratch *sc, __u32 off, __u64 ptr, __u64 len,
				     __u32 max)
{
	__u32 n = len < max ? (__u32)len : max;
	if (!n || !ptr)
		return 0;
	if (bpf_probe_read_user(&sc->b[M(off)], n & GO_SMAX, (void *)ptr))
		return 0;
	return n & GO_SMAX;
}

/* ------------------------------------------------------------------ the query's values */

struct go_qctx {
	struct go_scratch *sc;
};

static __always_inline void go_qemit(struct go_scratch *sc, int b)
{
	struct go_qstate *c = &sc->q;
	if (c->nval < GO_NVAL && c->cur < GO_VMAX - 1) {
		sc->b[M(GO_V + (c->nval & (GO_NVAL - 1)) * GO_VMAX + c->cur)] = (char)b;
		c->cur++;
	}
}

static __always_inline void go_qend(struct go_scratch *sc)
{
	struct go_qstate *c = &sc->q;
	if (c->inval && c->cur >= GO_MIN_INPUT && c->nval < GO_NVAL) {
		sc->vlen[c->nval & (GO_NVAL - 1)] = c->cur;
		c->nval++;
	}
	c->cur = c->inval = c->pct = c->acc = 0;
}

static long go_query_cb(__u32 i, void *arg)
{
	struct go_scratch *sc = ((struct go_qctx *)arg)->sc;
	struct go_qstate *c = &sc->q;
	int ch = sc->b[M(GO_Q + i)];
	if (ch == '&' || ch == ';') {
		go_qend(sc);
		return 0;
	}
	if (!c->inval) {
		c->inval = ch == '=';
		return 0;
	}
	if (c->pct) {
		int h = go_hex(ch);
		if (h < 0) { /* not an escape after all: kept as written */
			go_qemit(sc, '%');
			c->pct = 0;
		} else if (c->pct == 2) {
			c->acc = h;
			c->pct = 1;
			return 0;
		} else {
			go_qemit(sc, (c->acc << 4) | h);
			c->pct = 0;
			return 0;
		}
	}
	if (ch == '%')
		c->pct = 2;
	else
		go_qemit(sc, ch == '+' ? ' ' : ch);
	return 0;
}

/* ------------------------------------------------------------------ substring search */

struct go_fctx {
	struct go_scratch *sc;
	__u32 hay, nee, nlen, fold;
	__s32 pos;
};

struct go_cctx {
	struct go_scratch *sc;
	__u32 a, b, fold, same;
};

static long go_cmp_cb(__u32 j, void *arg)
{
	struct go_cctx *c = arg;
	int a = c->sc->b[M(c->a + j)];
	int b = c->sc->b[M(c->b + j)];
	if (c->fold) {
		a = go_lower(a);
		b = go_lower(b);
	}
	if (a != b) {
		c->same = 0;
		return 1;
	}
	return 0;
}

static long go_find_cb(__u32 i, void *arg)
{
	struct go_fctx *c = arg;
	int a = c->sc->b[M(c->hay + i)];
	int b = c->sc->b[M(c->nee)];
	if (c->fold) {
		a = go_lower(a);
		b = go_lower(b);
	}
	if (a != b)
		return 0; /* the first byte differs: the common case, without a nested loop */
	struct go_cctx k = {.sc = c->sc, .a = c->hay + i, .b = c->nee, .fold = c->fold, .same = 1};
	bpf_loop(c->nlen, go_cmp_cb, &k, 0);
	if (!k.same)
		return 0;
	c->pos = i;
	return 1;
}

/* The first position of region nee (nlen bytes) in region hay (hlen bytes), or -1. */
static __always_inline __s32 go_find(struct go_scratch *sc, __u32 hay, __u32 hlen, __u32 nee,
				     __u32 nlen, __u32 fold)
{
	if (!nlen || nlen > hlen)
		return -1;
	struct go_fctx c = {.sc = sc, .hay = hay, .nee = nee, .nlen = nlen, .fold = fold, .pos = -1};
	bpf_loop(hlen - nlen + 1, go_find_cb, &c, 0);
	return c.pos;
}

struct go_lctx {
	struct go_scratch *sc;
	__u32 off, ch;
	__s32 last;
};

static long go_last_cb(__u32 i, void *arg)
{
	struct go_lctx *c = arg;
	if (c->sc->b[M(c->off + i)] == (char)c->ch)
		c->last = i;
	return 0;
}

/* The last index of ch in region off (n bytes), or -1 (a loop the verifier sees once: a
 * plain loop remembering an index has as many states as iterations). */
static __always_inline __s32 go_last(struct go_scratch *sc, __u32 off, __u32 n, char ch)
{
	struct go_lctx c = {.sc = sc, .off = off, .ch = (__u8)ch, .last = -1};
	bpf_loop(n, go_last_cb, &c, 0);
	return c.last;
}

/* ------------------------------------------------------------------ SQL */

enum { SQ_CODE, SQ_STR1, SQ_STR2, SQ_BTICK, SQ_LINE, SQ_BLOCK };

struct go_sctx {
	struct go_scratch *sc;
	__u32 pos, stop, end, mysql; /* the value is [pos, stop) of the end bytes */
};

static __always_inline void go_sql_word_end(struct go_sstate *c)
{
	if (c->wlen && c->wlen < GO_KW_MAX) {
		if (bpf_map_lookup_elem(&go_keywords, c->word))
			c->kw = 1;
	}
	c->wlen = 0;
	__builtin_memset(c->word, 0, sizeof(c->word));
}

static long go_sql_cb(__u32 i, void *arg)
{
	struct go_sctx *x = arg;
	struct go_sstate *c = &x->sc->s;
	int ch = x->sc->b[M(GO_S + i)];
	int nx = i + 1 < x->end ? x->sc->b[M(GO_S + i + 1)] : 0;
	__u32 in = i >= x->pos && i < x->stop;
	if (i == x->pos)
		c->start_st = c->st;
	if (in) {
		if (c->st == SQ_CODE && go_wordc(ch)) {
			if (c->wlen < GO_KW_MAX - 1)
				c->word[c->wlen & (GO_KW_MAX - 1)] = (char)go_lower(ch);
			c->wlen++;
		} else {
			go_sql_word_end(c);
			if (c->st == SQ_CODE && !(ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
						  ch == ',' || ch == '.'))
				c->structure = 1;
		}
	}
	switch (c->st) {
	case SQ_CODE:
		if (ch == '\'')
			c->st = SQ_STR1;
		else if (ch == '"')
			c->st = SQ_STR2;
		else if (ch == '`')
			c->st = SQ_BTICK;
		else if (ch == '#' || (ch == '-' && nx == '-'))
			c->st = SQ_LINE;
		else if (ch == '/' && nx == '*')
			c->st = SQ_BLOCK;
		break;
	case SQ_STR1:
	case SQ_STR2:
		if (x->mysql && ch == '\\') {
			c->prev = 1; /* the next byte is escaped */
			return 0;
		}
		if (c->prev) {
			c->prev = 0;
			return 0;
		}
		if ((c->st == SQ_STR1 && ch == '\'') || (c->st == SQ_STR2 && ch == '"'))
			c->st = SQ_CODE; /* '' re-enters at once: the same region for this test */
		break;
	case SQ_BTICK:
		if (ch == '`')
			c->st = SQ_CODE;
		break;
	case SQ_LINE:
		if (ch == '\n')
			c->st = SQ_CODE;
		break;
	case SQ_BLOCK:
		if (ch == '/' && i > 0 && x->sc->b[M(GO_S + i - 1)] == '*')
			c->st = SQ_CODE;
		break;
	}
	if (in && c->start_st != SQ_CODE && c->st == SQ_CODE)
		c->left = 1; /* the literal the value started in ended inside it */
	return 0;
}

/* Does the value at [pos, pos+len) of the query (slen bytes) cross a literal or bring
 * structure into code, in the standard or (mysql) backslash-escaping reading? */
static __always_inline int go_sql_breaks(struct go_scratch *sc, __u32 slen, __u32 pos,
					 __u32 len, __u32 mysql)
{
	__u32 n = pos + len;
	struct go_sctx x = {.sc = sc, .pos = pos, .stop = n, .end = slen, .mysql = mysql};
	struct go_sstate *c = &sc->s;
	__builtin_memset(c, 0, sizeof(*c));
	bpf_loop(n, go_sql_cb, &x, 0);
	go_sql_word_end(c);
	if (c->start_st != SQ_CODE) {
		/* inside one literal from before to after the value (it closes at or after the
		 * value's end): data */
		if (!c->left && c->st == c->start_st && n < slen)
			return 0;
		return 1;
	}
	return c->structure || c->kw;
}

/* ------------------------------------------------------------------ shell */

static long go_shq_cb(__u32 i, void *arg)
{
	/* quote state of the script up to the value: 0 none, '\'' or '"' */
	struct go_sctx *x = arg;
	struct go_sstate *c = &x->sc->s;
	int ch = x->sc->b[M(GO_S + i)];
	if (i == x->pos)
		c->start_st = c->st;
	if (i >= x->pos && i < x->stop) {
		if (ch == ';' || ch == '&' || ch == '|' || ch == '`' || ch == '<' || ch == '>' ||
		    ch == '\n')
			c->structure = 1;
		if (ch == '$' && i + 1 < x->end) {
			int nx = x->sc->b[M(GO_S + i + 1)];
			if (nx == '(' || nx == '{')
				c->structure = 1;
		}
		if (ch == '$' || ch == '`')
			c->kw = 1; /* live inside double quotes */
	}
	if (c->st == 0) {
		if (ch == '\'' || ch == '"')
			c->st = ch;
		else if (ch == '\\')
			c->prev = 1;
	} else if (c->st == '"' && ch == '\\' && !c->prev) {
		c->prev = 1;
		return 0;
	} else if (ch == c->st && !c->prev) {
		c->st = 0;
		if (i >= x->pos && i < x->stop)
			c->left = 1;
	}
	c->prev = 0;
	return 0;
}

static __always_inline int go_cmd_breaks(struct go_scratch *sc, __u32 slen, __u32 pos, __u32 len)
{
	__u32 n = pos + len;
	struct go_sctx x = {.sc = sc, .pos = pos, .stop = n, .end = slen};
	struct go_sstate *c = &sc->s;
	__builtin_memset(c, 0, sizeof(*c));
	bpf_loop(n, go_shq_cb, &x, 0);
	if (!c->structure)
		return 0;
	/* quoted by the app: inside one quote from before to after the value ($ and ` are live
	 * in double quotes) */
	if (c->start_st && !c->left && n < slen && !(c->start_st == '"' && c->kw))
		return 0;
	return 1;
}

/* ------------------------------------------------------------------ paths */

static long go_trav_cb(__u32 i, void *arg)
{
	struct go_fctx *c = arg; /* nee: the value, nlen its length; pos: found */
	int a = c->sc->b[M(c->nee + i)];
	int b = i + 1 < c->nlen ? c->sc->b[M(c->nee + i + 1)] : 0;
	int p = i > 0 ? c->sc->b[M(c->nee + i - 1)] : '/';
	int n = i + 2 < c->nlen ? c->sc->b[M(c->nee + i + 2)] : '/';
	if (a == '.' && b == '.' && (p == '/' || p == '\\') && (n == '/' || n == '\\')) {
		c->pos = 1;
		return 1;
	}
	if (a == '%' && i + 2 < c->nlen) {
		int x = b, y = go_lower(n);
		/* %2e (an encoded dot), %25 (an encoded percent: double encoding) */
		if ((x == '2' && y == 'e') || (x == '2' && y == '5')) {
			c->pos = 1;
			return 1;
		}
	}
	if (a == '.' && b == '.' && i + 2 < c->nlen && n == '%') {
		c->pos = 1;
		return 1;
	}
	if (a == ':' && b == '/' && n == '/') {
		c->pos = 2; /* a URL through a file API: another rule's case */
		return 1;
	}
	return 0;
}

/* ------------------------------------------------------------------ hosts */

struct go_ipctx {
	struct go_scratch *sc;
	__u32 off;
};

static __always_inline void go_ip_part(struct go_ipstate *c)
{
	if (!c->digits && c->base != 16) {
		c->bad = 1;
		return;
	}
	if (c->nparts < 4)
		c->parts[c->nparts & 3] = c->cur;
	else
		c->bad = 1;
	c->nparts++;
	c->cur = c->digits = c->base = 0;
}

static long go_ip_cb(__u32 i, void *arg)
{
	struct go_ipctx *x = arg;
	struct go_ipstate *c = &x->sc->ip;
	int ch = go_lower(x->sc->b[M(x->off + i)]);
	if (ch == '.') {
		go_ip_part(c);
		return c->bad ? 1 : 0;
	}
	if (!c->digits && !c->base) {
		if (ch == '0') {
			c->base = 8; /* 0, 0x.., 0.. octal */
			c->digits = 1;
			return 0;
		}
		c->base = 10;
	}
	if (c->base == 8 && c->digits == 1 && c->cur == 0 && ch == 'x') {
		c->base = 16;
		c->digits = 0;
		return 0;
	}
	int d = go_hex(ch);
	if (d < 0 || d >= (int)c->base) {
		c->bad = 1;
		return 1;
	}
	c->cur = c->cur * c->base + d;
	c->digits++;
	if (c->cur > 0xffffffffULL) {
		c->bad = 1;
		return 1;
	}
	return 0;
}

/* An IPv4 address from its usual and disguised spellings (decimal, hex, octal, 1-4 parts) in
 * region off (len bytes), or -1. */
static __always_inline __s64 go_ipv4(struct go_scratch *sc, __u32 off, __u32 len)
{
	if (!len || len > 64)
		return -1;
	struct go_ipstate *c = &sc->ip;
	__builtin_memset(c, 0, sizeof(*c));
	struct go_ipctx x = {.sc = sc, .off = off};
	bpf_loop(len, go_ip_cb, &x, 0);
	if (c->bad)
		return -1;
	go_ip_part(c);
	__u32 np = c->nparts;
	if (c->bad || !np || np > 4)
		return -1;
	__u64 v = 0;
	__u32 last = (np - 1) & 3;
	for (__u32 k = 0; k < 3; k++) {
		if (k >= last)
			break;
		if (c->parts[k] > 255)
			return -1;
		v = v << 8 | c->parts[k];
	}
	__u64 lp = c->parts[last];
	__u32 rest = 8 * (4 - last);
	if (rest < 32 && lp >= (1ULL << rest))
		return -1;
	if (rest < 32)
		v = v << rest | lp;
	else
		v = lp;
	return (__s64)(v & 0xffffffffULL);
}

static __always_inline int go_v4_internal(__u32 a)
{
	__u32 o1 = a >> 24, o2 = (a >> 16) & 0xff;
	return o1 == 127 || o1 == 10 || o1 == 0 || (o1 == 172 && o2 >= 16 && o2 <= 31) ||
	       (o1 == 192 && o2 == 168) || (o1 == 169 && o2 == 254);
}

static __always_inline int go_eq(struct go_scratch *sc, __u32 off, __u32 len, const char *s,
				 __u32 slen)
{
	if (len != slen)
		return 0;
	for (__u32 i = 0; i < 24; i++) {
		if (i >= slen)
			break;
		if (go_lower(sc->b[M(off + i)]) != s[i])
			return 0;
	}
	return 1;
}

/* Is the host in region off (len bytes, no port, no brackets) internal? */
static __always_inline int go_host_internal(struct go_scratch *sc, __u32 off, __u32 len)
{
	if (len && sc->b[M(off + len - 1)] == '.')
		len--; /* a fully-qualified name */
	if (go_eq(sc, off, len, "localhost", 9) || go_eq(sc, off, len, "metadata", 8) ||
	    go_eq(sc, off, len, "instance-data", 13) ||
	    go_eq(sc, off, len, "metadata.google.internal", 24))
		return 1;
	__s64 v4 = go_ipv4(sc, off, len);
	if (v4 >= 0)
		return go_v4_internal((__u32)v4);
	/* IPv6 (reduced): ::, ::1, fe80::/10, fc00::/7, ::ffff:<v4> */
	if (go_eq(sc, off, len, "::", 2) || go_eq(sc, off, len, "::1", 3))
		return 1;
	if (len >= 4) {
		int a = go_lower(sc->b[M(off)]), b = go_lower(sc->b[M(off + 1)]);
		int c3 = go_lower(sc->b[M(off + 2)]);
		int colon = 0;
		for (__u32 i = 2; i < 5; i++)
			if (i < len && sc->b[M(off + i)] == ':')
				colon = 1;
		if (colon && a == 'f' && (b == 'c' || b == 'd'))
			return 1;
		if (a == 'f' && b == 'e' && (c3 == '8' || c3 == '9' || c3 == 'a' || c3 == 'b') &&
		    sc->b[M(off + 4)] == ':')
			return 1;
	}
	if (len > 7 && go_eq(sc, off, 7, "::ffff:", 7)) {
		v4 = go_ipv4(sc, off + 7, len - 7);
		if (v4 >= 0)
			return go_v4_internal((__u32)v4);
	}
	return 0;
}

/* ------------------------------------------------------------------ the check */

#define GO_KIND_SQL 1
#define GO_KIND_CMD 2
#define GO_KIND_FILE 3
#define GO_KIND_NET 4

/* Is the request's path exempt from rule (cfg's exempts: exact or prefix)? */
static __always_inline int go_exempt(struct go_scratch *sc, struct go_detect_cfg *cfg,
				     struct go_proc *p, __u64 url, __u32 rule)
{
	if (!cfg->nexempt || !url)
		return 0;
	__u64 hdr[2] = {0, 0};
	bpf_probe_read_user(hdr, sizeof(hdr), (void *)(url + p->url_path));
	__u32 plen = go_load(sc, GO_P, hdr[0], hdr[1], GO_EX_MAX - 1);
	if (hdr[1] >= GO_EX_MAX)
		plen = GO_EX_MAX; /* longer than any exempt path: only a prefix can hold */
	for (__u32 k = 0; k < GO_EXEMPTS; k++) {
		if (k >= cfg->nexempt)
			break;
		struct go_exempt *x = &cfg->ex[k];
		if (!(x->rules & (1u << rule)))
			continue;
		__u32 n = x->len;
		if (n > GO_EX_MAX - 1 || n > plen || (!x->prefix && n != plen))
			continue;
		int same = 1;
		for (__u32 i = 0; i < GO_EX_MAX; i++) {
			if (i >= n)
				break;
			if (sc->b[M(GO_P + i)] != x->path[i]) {
				same = 0;
				break;
			}
		}
		if (same)
			return 1;
	}
	return 0;
}

/* One value against the sink's argument (a bpf_loop callback: verified once, not per value) */
struct go_vctx {
	struct go_scratch *sc;
	__u32 kind, slen, n, hs, he;
	__u32 hit;
};

static long go_value_cb(__u32 k, void *arg)
{
	struct go_vctx *c = arg;
	struct go_scratch *sc = c->sc;
	__u32 v = GO_V + (k & (GO_NVAL - 1)) * GO_VMAX, vl = sc->vlen[k & (GO_NVAL - 1)];
	if (c->kind == GO_KIND_NET) {
		/* a value in the host[:port], or the host in a value, delimited (a URL's host) */
		if (go_find(sc, GO_H, c->n, v, vl, 1) >= 0) {
			c->hit = 1;
			return 1;
		}
		__u32 hl = c->he - c->hs;
		__s32 at = go_find(sc, v, vl, GO_H + c->hs, hl, 1);
		if (at < 0)
			return 0;
		int before = at > 0 ? sc->b[M(v + at - 1)] : '/';
		__u32 e = at + hl;
		int after = e < vl ? sc->b[M(v + e)] : '/';
		if (!(before == '/' || before == '@' || before == '[') ||
		    !(after == '/' || after == ':' || after == '?' || after == '#' || after == ']'))
			return 0;
		/* scheme://host: http(s) only; gopher:// and the like are ssrf.scheme's case */
		if (at >= 3 && sc->b[M(v + at - 3)] == ':' && go_lower(sc->b[M(v)]) != 'h')
			return 0;
		c->hit = 1;
		return 1;
	}
	__s32 pos = go_find(sc, GO_S, c->slen, v, vl, c->kind == GO_KIND_SQL);
	if (pos < 0)
		return 0;
	int hit = 0;
	if (c->kind == GO_KIND_SQL) {
		hit = go_sql_breaks(sc, c->slen, pos, vl, 0) || go_sql_breaks(sc, c->slen, pos, vl, 1);
	} else if (c->kind == GO_KIND_CMD) {
		hit = go_cmd_breaks(sc, c->slen, pos, vl);
	} else {
		struct go_fctx t = {.sc = sc, .nee = v, .nlen = vl, .pos = 0};
		bpf_loop(vl, go_trav_cb, &t, 0);
		hit = t.pos == 1 || (t.pos == 0 && pos == 0 && sc->b[M(v)] == '/');
	}
	if (hit) {
		c->hit = 1;
		return 1;
	}
	return 0;
}

static __always_inline int go_is_shell(struct go_scratch *sc, __u32 off, __u32 bl)
{
	return go_eq(sc, off, bl, "sh", 2) || go_eq(sc, off, bl, "bash", 4) ||
	       go_eq(sc, off, bl, "dash", 4) || go_eq(sc, off, bl, "zsh", 3) ||
	       go_eq(sc, off, bl, "ksh", 3) || go_eq(sc, off, bl, "ash", 3) ||
	       go_eq(sc, off, bl, "busybox", 7);
}

/* The rule code that blocks this sink call, or 0 (inlined: kind is a constant, the verifier
 * skips the other kinds).
 * kind: GO_KIND_*; (sp, sl): the argument the check reads (the query, the path, the host or
 * host:port; for GO_KIND_CMD the Args slice: data pointer, length); hostport: for
 * GO_KIND_NET, whether it is "host:port" (0: a bare host); g: the goroutine (r14). */
static __always_inline __u32 go_detect(__u64 g, __u32 tgid, __u32 kind, __u64 sp, __u64 sl,
				  __u32 hostport)
{
	struct go_proc *p = go_proc_of(tgid);
	struct go_detect_cfg *cfg = bpf_map_lookup_elem(&go_detect_cfg, &tgid);
	if (!p || !cfg || kind > 31)
		return 0;
	__u32 rule = kind; /* GO_KIND_x == GO_RULE_x */
	if (!(cfg->rules & (1u << rule)))
		return 0;
	struct go_gkey key = {.tgid = tgid, .g = g};
	struct go_req *r = bpf_map_lookup_elem(&go_requests, &key);
	if (!r || !go_req_live(p, r, g))
		return 0; /* not serving a request: no parameters, and no recover to unwind to */
	__u32 zero = 0;
	struct go_scratch *sc = bpf_map_lookup_elem(&go_scratch, &zero);
	if (!sc)
		return 0;
	__u64 url = 0;
	bpf_probe_read_user(&url, sizeof(url), (void *)(r->req + p->req_url));
	if (!url)
		return 0;
	__u64 q[2] = {0, 0};
	bpf_probe_read_user(q, sizeof(q), (void *)(url + p->url_query));
	__u32 qlen = go_load(sc, GO_Q, q[0], q[1], GO_SMAX);
	if (qlen < GO_MIN_INPUT + 2)
		return 0;
	__u64 me = bpf_get_current_pid_tgid();
	sc->owner = me;
	__builtin_memset(&sc->q, 0, sizeof(sc->q));
	struct go_qctx qc = {.sc = sc};
	bpf_loop(qlen, go_query_cb, &qc, 0);
	go_qend(sc);
	__u32 nval = sc->q.nval;
	if (!nval || nval > GO_NVAL)
		return 0;

	struct go_vctx vc = {.sc = sc, .kind = kind};
	if (kind == GO_KIND_CMD) {
		/* Args[0] must be a shell and Args[1] "-c": the script is Args[2] */
		if (sl < 3)
			return 0;
		__u64 a[6] = {};
		if (bpf_probe_read_user(a, sizeof(a), (void *)sp))
			return 0;
		__u32 n0 = go_load(sc, GO_A, a[0], a[1], 64);
		__u32 base = (__u32)(go_last(sc, GO_A, n0, '/') + 1) & 63;
		if (base > n0 || !go_is_shell(sc, GO_A + base, n0 - base))
			return 0;
		__u32 n1 = go_load(sc, GO_A + 64, a[2], a[3], 8);
		if (!go_eq(sc, GO_A + 64, n1, "-c", 2))
			return 0;
		vc.slen = go_load(sc, GO_S, a[4], a[5], GO_SMAX);
	} else if (kind == GO_KIND_NET) {
		__u32 n = go_load(sc, GO_H, sp, sl, 255);
		__u32 hs = 0, he = n;
		if (hostport) { /* host:port, [v6]:port */
			__s32 colon = go_last(sc, GO_H, n, ':');
			if (colon >= 0)
				he = (__u32)colon & 255;
			if (n && sc->b[M(GO_H)] == '[') {
				hs = 1;
				if (he > 1 && sc->b[M(GO_H + he - 1)] == ']')
					he--;
			}
		}
		if (he <= hs || he > 255 || !go_host_internal(sc, GO_H + hs, he - hs))
			return 0;
		vc.n = n;
		vc.hs = hs;
		vc.he = he;
		vc.slen = n;
	} else {
		vc.slen = go_load(sc, GO_S, sp, sl, GO_SMAX);
	}
	if (!vc.slen)
		return 0;
	bpf_loop(nval, go_value_cb, &vc, 0);
	/* uprobe programs can be preempted: if another thread's check ran on this CPU meanwhile,
	 * the scratch buffer is not ours any more, and the verdict is void (fail open) */
	if (!vc.hit || sc->owner != me || go_exempt(sc, cfg, p, url, rule))
		return 0;
	return rule;
}

/* Stop the call (see the top of this file) and forget the request: its handler unwinds now
 * (finishRequest will not run for it). */
static __always_inline void go_block(struct pt_regs *ctx, __u32 tgid, __u32 rule)
{
	if (!rule)
		return;
	struct go_gkey key = {.tgid = tgid, .g = ctx->r14};
	bpf_map_delete_elem(&go_requests, &key);
	bpf_send_signal_thread(GO_SIGFPE);
}

static __always_inline void go_verdict(struct go_event *e, __u32 rule)
{
	e->rule = (__u8)rule;
	e->blocked = rule != 0;
}

#endif
