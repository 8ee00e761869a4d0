/* rampart_probe._accel: the CPython probe's hot path in C (CPython 3.11 API).
 *
 * Loaded by rampart_probe/accel.py when the running interpreter matches the build; the
 * pure-Python path (hooks/audit.py `_hook`, core.Probe._emit_py) stays the fallback.
 *
 * - A C audit hook (PySys_AddAuditHook) that rejects events the probe does not hook by name,
 *   without entering Python (a hash lookup on the C string).
 * - For hooked events: the args (common extractors in C, the rest through the Python
 *   extractor), then `emit`.
 * - `emit` (also called by the DB-API wrappers): the same order as core.Probe.emit. When a
 *   block or filter rule is a candidate for the hook, or a detection rule could apply (kind,
 *   inside a request), the whole call goes to the Python path
 *   synchronously (regexes, detection checks). Otherwise: quota (on the Quotas object
 *   itself, so both paths share its counts) -> drop when away / queue full -> args
 *   normalised -> stack walked in C (PyFrame_GetBack/GetCode/GetLineNumber: no audit event
 *   per frame, unlike f_code from Python) with a cache of frame texts keyed by (code object,
 *   instruction offset) -> request context (the ContextVar) -> one tuple appended to the
 *   probe's queue, as the Python path does.
 * - Any internal error turns the accelerator off for the life of the process: Python's
 *   `fallback` callback puts the pure-Python hook in place; sys.audit calls Python hooks
 *   after C hooks, reading the list as it goes, so the new hook sees the event at hand. Errors of a hook's own Python extractor follow the Python rule (that hook
 *   disables itself, reported once).
 *
 * Reads of the probe's state go straight to its instance __dict__ (materialised at install),
 * so every decision sees the live values the Python side sets.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030C0000
#error "rampart_accel is built for CPython 3.11 (PyFrame_GetLasti, PyCodeObject fields)"
#endif

#define MAX_EVENTS 64
#define EV_SLOTS 128 /* power of two, > 2 * MAX_EVENTS */
#define CACHE_SLOTS 16384
#define CACHE_MAX 8192

enum fast { FAST_NONE = 0, FAST_FIRST, FAST_TWO, FAST_OPEN };

typedef struct {
    char name[64];
    size_t len;
    uint64_t hash;
    PyObject *name_obj; /* interned str */
    PyObject *kind;
    PyObject *extract; /* Python extractor: args tuple -> list | None */
    int importing;
    int fast;
    PyObject *spec; /* audit.EVENTS[name]: while audit._table holds it, C handles the event */
} event_t;

static event_t events[MAX_EVENTS];
static int n_events;
static int ev_index[EV_SLOTS]; /* 0: empty, else 1 + index into events */

static int hook_added;   /* PySys_AddAuditHook done (permanent) */
static int active;       /* the accelerator handles events */
static int muted;        /* audit.uninstall(): the table is empty */
static int broken;       /* an internal error happened: off for good */
static int fault_next;   /* tests: make the next fast path fail internally */
static __thread int tls_busy; /* the probe's own shipper thread */

static PyObject *table_dict; /* hooks/audit.py `_table`: muted / replaced / popped hooks */
static PyObject *probe, *pdict, *py_hook, *fallback, *ctxvar, *probe_dir, *s_func;
static PyObject *blocked_type, *emit_py, *drop_fn, *hook_failed_fn, *empty_str;
static Py_ssize_t arg_max = 4096, args_max = 64, queue_max = 10000;

/* interned attribute names */
static PyObject *k_enabled, *k_hooks_disabled, *k_blocks, *k_detect, *k_quotas, *k_away,
    *k_queue, *k_filters, *k_stack_by_hook, *k_stack_depth, *k_empty, *k_by_kind, *k_by_hook,
    *k_window, *k_counts, *k_limits, *k_default, *k_built, *k_to_dict, *k_append,
    *r_quota, *r_away, *r_queue_full, *k_dropped, *k_dropped_by;

/* ------------------------------------------------------------------ event table */

static uint64_t fnv(const char *s, size_t *len) {
    uint64_t h = 1469598103934665603ULL;
    const char *p = s;
    for (; *p; p++) {
        h ^= (unsigned char)*p;
        h *= 1099511628211ULL;
    }
    *len = (size_t)(p - s);
    return h;
}

static event_t *lookup(const char *name) {
    size_t len;
    uint64_t h = fnv(name, &len);
    for (unsigned i = (unsigned)h & (EV_SLOTS - 1);; i = (i + 1) & (EV_SLOTS - 1)) {
        int j = ev_index[i];
        if (j == 0)
            return NULL;
        event_t *e = &events[j - 1];
        if (e->hash == h && e->len == len && memcmp(e->name, name, len) == 0)
            return e;
    }
}

static void clear_events(void) {
    for (int i = 0; i < n_events; i++) {
        Py_CLEAR(events[i].name_obj);
        Py_CLEAR(events[i].kind);
        Py_CLEAR(events[i].extract);
        Py_CLEAR(events[i].spec);
    }
    n_events = 0;
    memset(ev_index, 0, sizeof ev_index);
}

/* ------------------------------------------------------------------ frame text cache */

typedef struct {
    PyObject *code; /* strong: a live code object's address cannot be reused */
    int lasti;
    PyObject *text; /* "" for the probe's own frames */
} centry_t;

static centry_t cache[CACHE_SLOTS];
static int cache_n;

static void cache_clear(void) {
    for (int i = 0; i < CACHE_SLOTS; i++) {
        if (cache[i].code) {
            Py_CLEAR(cache[i].code);
            Py_CLEAR(cache[i].text);
        }
    }
    cache_n = 0;
}

static unsigned cache_slot(PyObject *code, int lasti) {
    uint64_t h = ((uint64_t)(uintptr_t)code >> 4) * 0x9E3779B97F4A7C15ULL ^ (uint64_t)lasti;
    h ^= h >> 29;
    return (unsigned)h & (CACHE_SLOTS - 1);
}

/* Borrowed text of a frame, or NULL with an exception set. */
static PyObject *frame_text(PyFrameObject *f) {
    PyCodeObject *co = PyFrame_GetCode(f); /* new ref */
    int lasti = PyFrame_GetLasti(f);
    unsigned i = cache_slot((PyObject *)co, lasti);
    for (;; i = (i + 1) & (CACHE_SLOTS - 1)) {
        centry_t *c = &cache[i];
        if (c->code == NULL)
            break;
        if (c->code == (PyObject *)co && c->lasti == lasti) {
            Py_DECREF(co);
            return c->text;
        }
    }
    PyObject *text;
    int probe_frame = PyUnicode_Tailmatch(co->co_filename, probe_dir, 0, PY_SSIZE_T_MAX, -1);
    if (probe_frame < 0) {
        Py_DECREF(co);
        return NULL;
    }
    if (probe_frame) {
        text = Py_NewRef(empty_str);
    } else {
        text = PyUnicode_FromFormat("%U (%U:%d)", co->co_name, co->co_filename,
                                    PyFrame_GetLineNumber(f));
        if (text == NULL) {
            Py_DECREF(co);
            return NULL;
        }
    }
    if (cache_n >= CACHE_MAX) {
        cache_clear();
        i = cache_slot((PyObject *)co, lasti);
    }
    while (cache[i].code != NULL)
        i = (i + 1) & (CACHE_SLOTS - 1);
    cache[i].code = (PyObject *)co; /* the cache keeps the reference */
    cache[i].lasti = lasti;
    cache[i].text = text;
    cache_n++;
    return text;
}

/* Innermost first, from the current Python frame, the probe's own frames left out. */
static PyObject *capture_stack(Py_ssize_t depth) {
    PyObject *out = PyList_New(0);
    if (out == NULL || depth <= 0)
        return out;
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    Py_XINCREF(f);
    while (f != NULL) {
        PyObject *text = frame_text(f);
        if (text == NULL)
            goto fail;
        if (PyUnicode_GET_LENGTH(text) > 0) {
            if (PyList_Append(out, text) < 0)
                goto fail;
            if (PyList_GET_SIZE(out) >= depth)
                break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    return out;
fail:
    Py_XDECREF(f);
    Py_DECREF(out);
    return NULL;
}

/* ------------------------------------------------------------------ emit */

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static PyObject *c_quotas, *c_limits, *c_default; /* limits and default: fixed per object */

/* Quotas.allow(hook) on the Quotas object itself (its window and counts, which the Python
 * path shares): 1 allowed, 0 over quota, -1 error. */
static int quota_allow(PyObject *q, PyObject *hook) {
    if (q != c_quotas) {
        PyObject *l = PyObject_GetAttr(q, k_limits), *d = NULL;
        if (l == NULL || (d = PyObject_GetAttr(q, k_default)) == NULL || !PyDict_Check(l)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "Quotas.limits is not a dict");
            Py_XDECREF(l);
            Py_XDECREF(d);
            return -1;
        }
        Py_XSETREF(c_limits, l);
        Py_XSETREF(c_default, d);
        Py_XSETREF(c_quotas, Py_NewRef(q));
    }
    /* time.monotonic(), to a few ms (the coarse clock is the cheap one): one-minute windows */
    double now = clock_s(CLOCK_MONOTONIC_COARSE);
    PyObject *w = PyObject_GetAttr(q, k_window);
    if (w == NULL)
        return -1;
    double window = PyFloat_AsDouble(w);
    Py_DECREF(w);
    if (window == -1.0 && PyErr_Occurred())
        return -1;
    if (now - window >= 60.0) {
        PyObject *nw = PyFloat_FromDouble(now), *nc = PyDict_New();
        int r = (nw && nc) ? PyObject_SetAttr(q, k_window, nw) : -1;
        if (r == 0)
            r = PyObject_SetAttr(q, k_counts, nc);
        Py_XDECREF(nw);
        Py_XDECREF(nc);
        if (r < 0)
            return -1;
    }
    PyObject *counts = PyObject_GetAttr(q, k_counts);
    if (counts == NULL)
        return -1;
    if (!PyDict_Check(counts)) {
        Py_DECREF(counts);
        PyErr_SetString(PyExc_TypeError, "Quotas.counts is not a dict");
        return -1;
    }
    PyObject *cur = PyDict_GetItemWithError(counts, hook);
    long long n = 1;
    if (cur != NULL) {
        n = PyLong_AsLongLong(cur) + 1;
        if (n == 0 && PyErr_Occurred()) {
            Py_DECREF(counts);
            return -1;
        }
    } else if (PyErr_Occurred()) {
        Py_DECREF(counts);
        return -1;
    }
    PyObject *nobj = PyLong_FromLongLong(n);
    int r = nobj ? PyDict_SetItem(counts, hook, nobj) : -1;
    Py_DECREF(counts);
    if (r < 0) {
        Py_XDECREF(nobj);
        return -1;
    }
    PyObject *lim = PyDict_GetItemWithError(c_limits, hook);
    if (lim == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(nobj);
            return -1;
        }
        lim = c_default;
    }
    if (PyLong_CheckExact(lim)) {
        int overflow;
        long long l = PyLong_AsLongLongAndOverflow(lim, &overflow);
        if (!overflow && !(l == -1 && PyErr_Occurred())) {
            Py_DECREF(nobj);
            return n <= l;
        }
        PyErr_Clear();
    }
    r = PyObject_RichCompareBool(nobj, lim, Py_LE);
    Py_DECREF(nobj);
    return r;
}

static PyObject *empty_tuple;
static PyObject *c_queue, *c_append, *one;

/* The probe's attributes the hot path reads, looked up again only when its __dict__ has
 * changed since (ma_version_tag, bumped by every insert/replace/delete on 3.11): the
 * shipper's counters change it once per batch, not per event. Borrowed: valid while the
 * dict's version is the one they were read at, which pget checks at every read. */
enum { P_ENABLED, P_HOOKS_DISABLED, P_BLOCKS, P_DETECT, P_FILTERS, P_QUOTAS, P_AWAY, P_QUEUE,
       P_STACK_BY_HOOK, P_STACK_DEPTH, P_DROPPED_BY, P_N };
static PyObject **p_keys[P_N] = {&k_enabled, &k_hooks_disabled, &k_blocks, &k_detect,
                                 &k_filters, &k_quotas, &k_away, &k_queue,
                                 &k_stack_by_hook, &k_stack_depth, &k_dropped_by};
static PyObject *p_vals[P_N];
static uint64_t p_version;
static int p_valid;

static PyObject *pget(int i) { /* borrowed; NULL without exception if missing */
    uint64_t v = ((PyDictObject *)pdict)->ma_version_tag;
    if (!p_valid || v != p_version) {
        for (int j = 0; j < P_N; j++) {
            p_vals[j] = PyDict_GetItemWithError(pdict, *p_keys[j]);
            if (p_vals[j] == NULL && PyErr_Occurred()) {
                p_valid = 0;
                return NULL;
            }
        }
        p_version = v;
        p_valid = 1;
    }
    return p_vals[i];
}

static int incr(PyObject *d, PyObject *key) { /* d[key] = d.get(key, 0) + 1 */
    PyObject *cur = PyDict_GetItemWithError(d, key);
    if (cur == NULL && PyErr_Occurred())
        return -1;
    PyObject *n = cur ? PyNumber_Add(cur, one) : Py_NewRef(one);
    if (n == NULL)
        return -1;
    int r = PyDict_SetItem(d, key, n);
    Py_DECREF(n);
    return r;
}

/* Probe.drop(reason), in C: dropped += 1, dropped_by[reason] += 1 */
static int drop(PyObject *reason) {
    PyObject *by = pget(P_DROPPED_BY);
    if (by == NULL || !PyDict_CheckExact(by)) {
        PyObject *r = PyErr_Occurred() ? NULL : PyObject_CallOneArg(drop_fn, reason);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    Py_INCREF(by);
    int r = incr(pdict, k_dropped) < 0 ? -1 : incr(by, reason);
    Py_DECREF(by);
    return r;
}

/* What the tables say, cached by the identity of the table objects: the agent's frames
 * replace a table whole (core.Probe.apply), never change one in place. The cache holds
 * strong references, so an address seen here cannot be reused by another table. */
static PyObject *c_filters, *c_blocks, *c_detect, *c_by_hook, *c_by_kind, *c_filters_by_hook;
static int c_filters_empty, c_blocks_empty;

static int truth_attr(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static int refresh_tables(PyObject *blocks, PyObject *detect, PyObject *filters) {
    if (filters != c_filters) {
        int e = truth_attr(filters, k_empty);
        if (e < 0)
            return -1;
        PyObject *fh = PyObject_GetAttr(filters, k_by_hook);
        if (fh == NULL)
            return -1;
        if (!PyDict_Check(fh)) {
            Py_DECREF(fh);
            PyErr_SetString(PyExc_TypeError, "RuleTable.by_hook is not a dict");
            return -1;
        }
        c_filters_empty = e;
        Py_XSETREF(c_filters_by_hook, fh);
        Py_XSETREF(c_filters, Py_NewRef(filters));
    }
    if (blocks != c_blocks) {
        int e = truth_attr(blocks, k_empty);
        if (e < 0)
            return -1;
        PyObject *bh = PyObject_GetAttr(blocks, k_by_hook);
        if (bh == NULL)
            return -1;
        if (!PyDict_Check(bh)) {
            Py_DECREF(bh);
            PyErr_SetString(PyExc_TypeError, "RuleTable.by_hook is not a dict");
            return -1;
        }
        c_blocks_empty = e;
        Py_XSETREF(c_by_hook, bh);
        Py_XSETREF(c_blocks, Py_NewRef(blocks));
    }
    if (detect != c_detect) {
        PyObject *bk = PyObject_GetAttr(detect, k_by_kind);
        if (bk == NULL)
            return -1;
        Py_XSETREF(c_by_kind, bk);
        Py_XSETREF(c_detect, Py_NewRef(detect));
    }
    return 0;
}

/* RuleTable.candidates(hook) is not empty: 1, empty: 0, error: -1 */
static int candidates(PyObject *by_hook, PyObject *hook) {
    PyObject *c = PyDict_GetItemWithError(by_hook, hook);
    if (c == NULL && !PyErr_Occurred())
        c = PyDict_GetItemWithError(by_hook, Py_None);
    Py_ssize_t n = c ? PyObject_Length(c) : -1;
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "rule table has no default list");
        return -1;
    }
    return n > 0;
}

/* 1: the Python path must decide (block or filter candidates, detection in a request). */
static int needs_python(PyObject *hook, PyObject *kind) {
    PyObject *blocks = pget(P_BLOCKS), *detect = pget(P_DETECT), *filters = pget(P_FILTERS);
    if (blocks == NULL || detect == NULL || filters == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "probe tables missing");
        return -1;
    }
    if (refresh_tables(blocks, detect, filters) < 0)
        return -1;
    if (!c_filters_empty) {
        int n = candidates(c_filters_by_hook, hook);
        if (n != 0)
            return n; /* a filter rule for this hook: Python matches it (or an error) */
    }
    if (!c_blocks_empty) {
        int n = candidates(c_by_hook, hook);
        if (n != 0)
            return n;
    }
    int has = PyDict_CheckExact(c_by_kind) ? (PyDict_GET_SIZE(c_by_kind) == 0
                                                  ? 0
                                                  : PySequence_Contains(c_by_kind, kind))
                                           : PySequence_Contains(c_by_kind, kind);
    if (has < 0)
        return -1;
    if (has) {
        PyObject *req;
        if (PyContextVar_Get(ctxvar, Py_None, &req) < 0)
            return -1;
        if (req != Py_None) {
            Py_DECREF(req);
            return 1;
        }
        Py_DECREF(req);
    }
    return 0;
}

static PyObject *normalise(PyObject *args, int owned) {
    if (owned && PyList_CheckExact(args)) { /* our own list (an extractor's): in place */
        Py_ssize_t n = PyList_GET_SIZE(args);
        if (n > args_max && PyList_SetSlice(args, args_max, n, NULL) < 0)
            return NULL;
        n = PyList_GET_SIZE(args);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *a = PyList_GET_ITEM(args, i);
            if (PyUnicode_CheckExact(a) && PyUnicode_GET_LENGTH(a) <= arg_max)
                continue;
            PyObject *s = PyObject_CallOneArg(s_func, a);
            if (s == NULL)
                return NULL;
            PyList_SetItem(args, i, s);
        }
        return Py_NewRef(args);
    }
    PyObject *seq = PySequence_Fast(args, "args must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > args_max)
        n = args_max;
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = items[i], *s;
        if (PyUnicode_CheckExact(a) && PyUnicode_GET_LENGTH(a) <= arg_max) {
            s = Py_NewRef(a);
        } else {
            s = PyObject_CallOneArg(s_func, a);
            if (s == NULL) {
                Py_DECREF(out);
                Py_DECREF(seq);
                return NULL;
            }
        }
        PyList_SET_ITEM(out, i, s);
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *request_dict(void) {
    PyObject *req;
    if (PyContextVar_Get(ctxvar, Py_None, &req) < 0)
        return NULL;
    if (req == Py_None)
        return req;
    PyObject *built = PyObject_GetAttr(req, k_built);
    if (built != NULL && built != Py_None) {
        Py_DECREF(req);
        return built;
    }
    Py_XDECREF(built);
    PyErr_Clear();
    PyObject *d = PyObject_CallMethodNoArgs(req, k_to_dict);
    Py_DECREF(req);
    if (d == NULL) { /* as the Python path: a request that cannot be built is left out */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return d;
}

/* The fast path; the caller has checked enabled / muted / busy. 0, or -1 with an exception
 * (RampartBlocked from the Python path included). `internal` is set for failures of our own
 * code, as opposed to the Python path's. */
static int do_emit(PyObject *hook, PyObject *kind, PyObject *args, int owned, int *internal) {
    *internal = 1;
    if (fault_next) {
        fault_next = 0;
        PyErr_SetString(PyExc_RuntimeError, "rampart accelerator: injected fault");
        return -1;
    }
    int np = needs_python(hook, kind);
    if (np < 0)
        return -1;
    if (np) {
        *internal = 0;
        PyObject *r = PyObject_CallFunctionObjArgs(emit_py, hook, kind, args, NULL);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    PyObject *quotas = pget(P_QUOTAS);
    if (quotas == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "probe has no quotas");
        return -1;
    }
    int ok = quota_allow(quotas, hook);
    if (ok < 0)
        return -1;
    if (!ok)
        return drop(r_quota);
    PyObject *away = pget(P_AWAY);
    int is_away = away ? PyObject_IsTrue(away) : 0;
    if (is_away < 0)
        return -1;
    if (is_away)
        return drop(r_away);
    PyObject *queue = pget(P_QUEUE);
    if (queue == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "probe has no queue");
        return -1;
    }
    Py_ssize_t qlen = PyObject_Length(queue);
    if (qlen < 0)
        return -1;
    if (qlen >= queue_max)
        return drop(r_queue_full);
    Py_INCREF(queue);
    PyObject *nargs = NULL, *stack = NULL, *req = NULL, *t = NULL, *entry = NULL, *r = NULL;
    *internal = 0; /* _s and to_dict are the Python path's own code */
    nargs = normalise(args, owned);
    if (nargs == NULL)
        goto out;
    *internal = 1;
    Py_ssize_t depth;
    PyObject *by_hook = pget(P_STACK_BY_HOOK), *dflt = pget(P_STACK_DEPTH);
    PyObject *d = NULL;
    if (by_hook != NULL && PyDict_Check(by_hook) && PyDict_GET_SIZE(by_hook) > 0) {
        d = PyDict_GetItemWithError(by_hook, hook);
        if (d == NULL && PyErr_Occurred())
            goto out;
    }
    if (d == NULL)
        d = dflt;
    depth = d ? PyLong_AsSsize_t(d) : 0;
    if (depth == -1 && PyErr_Occurred())
        goto out;
    stack = capture_stack(depth);
    if (stack == NULL)
        goto out;
    req = request_dict();
    if (req == NULL)
        goto out;
    t = PyFloat_FromDouble(clock_s(CLOCK_REALTIME));
    if (t == NULL)
        goto out;
    entry = PyTuple_Pack(7, t, hook, kind, nargs, Py_None, req, stack);
    if (entry == NULL)
        goto out;
    /* strings only (and the request's dict of strings): no cycle can pass through these,
     * so the cyclic GC need not walk the queue on every collection */
    PyObject_GC_UnTrack(entry);
    if (PyList_CheckExact(nargs) && PyObject_GC_IsTracked(nargs))
        PyObject_GC_UnTrack(nargs);
    if (PyObject_GC_IsTracked(stack))
        PyObject_GC_UnTrack(stack);
    if (queue != c_queue) { /* a new deque after fork(): its bound append, once */
        PyObject *ap = PyObject_GetAttr(queue, k_append);
        if (ap == NULL)
            goto out;
        Py_XSETREF(c_append, ap);
        Py_XSETREF(c_queue, Py_NewRef(queue));
    }
    r = PyObject_CallOneArg(c_append, entry);
out:
    Py_DECREF(queue);
    Py_XDECREF(nargs);
    Py_XDECREF(stack);
    Py_XDECREF(req);
    Py_XDECREF(t);
    Py_XDECREF(entry);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* enabled, not muted by config, not the shipper thread: 1 go on, 0 ignore, -1 error */
static int probe_wants(PyObject *hook) {
    if (tls_busy || probe == NULL)
        return 0;
    PyObject *en = pget(P_ENABLED);
    if (en == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int e = PyObject_IsTrue(en);
    if (e <= 0)
        return e;
    PyObject *hd = pget(P_HOOKS_DISABLED);
    if (hd == NULL)
        return PyErr_Occurred() ? -1 : 1;
    int in = PySequence_Contains(hd, hook);
    return in < 0 ? -1 : !in;
}

/* The accelerator stops for good; Python's fallback puts the pure-Python path in place. */
static void go_broken(void) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    active = 0;
    broken = 1;
    PyObject *r = PyObject_CallOneArg(fallback, ev ? ev : Py_None);
    if (r == NULL)
        PyErr_Clear(); /* nothing more can be done: never raise into the app */
    Py_XDECREF(r);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(tb);
}

static int is_blocked(void) {
    return blocked_type != NULL && PyErr_ExceptionMatches(blocked_type);
}

/* ------------------------------------------------------------------ audit hook */

static int from_importlib(void) {
    PyFrameObject *f = PyEval_GetFrame();
    if (f == NULL)
        return 0;
    PyCodeObject *co = PyFrame_GetCode(f);
    PyObject *fn = co->co_filename;
    const char *s = PyUnicode_Check(fn) ? PyUnicode_AsUTF8(fn) : NULL;
    int r = 0;
    if (s == NULL) {
        PyErr_Clear();
    } else {
        size_t n = strlen(s);
        static const char *ends[] = {"importlib/_bootstrap_external.py",
                                     "importlib/_bootstrap.py", "zipimport.py"};
        if (strncmp(s, "<frozen importlib", 17) == 0)
            r = 1;
        for (int i = 0; !r && i < 3; i++) {
            size_t m = strlen(ends[i]);
            r = n >= m && memcmp(s + n - m, ends[i], m) == 0;
        }
    }
    Py_DECREF(co);
    return r;
}

static int has_any(PyObject *s, const char *chars) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 128 && strchr(chars, (int)c) && c != 0)
            return 1;
    }
    return 0;
}

static PyObject *list_of(Py_ssize_t n, PyObject *a, PyObject *b) {
    PyObject *l = PyList_New(n);
    if (l == NULL)
        return NULL;
    PyList_SET_ITEM(l, 0, Py_NewRef(a));
    if (n > 1)
        PyList_SET_ITEM(l, 1, Py_NewRef(b));
    return l;
}

/* args for the event: a new list, Py_None (nothing to report), or NULL (error) */
static PyObject *extract(event_t *e, PyObject *args) {
    Py_ssize_t n = PyTuple_Check(args) ? PyTuple_GET_SIZE(args) : -1;
    switch (e->fast) {
    case FAST_FIRST:
        if (n >= 1)
            return list_of(1, PyTuple_GET_ITEM(args, 0), NULL);
        break;
    case FAST_TWO:
        if (n >= 2)
            return list_of(2, PyTuple_GET_ITEM(args, 0), PyTuple_GET_ITEM(args, 1));
        break;
    case FAST_OPEN: /* (path, mode, flags): the common case of a str path and str mode */
        if (n >= 3 && PyUnicode_CheckExact(PyTuple_GET_ITEM(args, 0)) &&
            PyUnicode_CheckExact(PyTuple_GET_ITEM(args, 1))) {
            PyObject *path = PyTuple_GET_ITEM(args, 0), *mode = PyTuple_GET_ITEM(args, 1);
            if (!has_any(mode, "wax+")) {
                Py_ssize_t pl = PyUnicode_GET_LENGTH(path);
                for (int i = 0; i < 2; i++) {
                    static const char *suf[] = {".py", ".pyc"};
                    Py_ssize_t sl = (Py_ssize_t)strlen(suf[i]);
                    if (pl < sl)
                        continue;
                    int match = 1;
                    for (Py_ssize_t j = 0; j < sl && match; j++)
                        match = PyUnicode_ReadChar(path, pl - sl + j) == (Py_UCS4)suf[i][j];
                    if (match)
                        Py_RETURN_NONE;
                }
            }
            return list_of(2, path, mode);
        }
        break;
    }
    return PyObject_CallOneArg(e->extract, args);
}

static int call_py_hook(const char *event, PyObject *args) {
    PyObject *r = PyObject_CallFunction(py_hook, "sO", event, args);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int audit_hook(const char *event, PyObject *args, void *ud) {
    (void)ud;
    if (!active || muted)
        return 0;
    event_t *e = lookup(event);
    if (e == NULL)
        return 0;
    /* audit._table decides, as for the Python hook: a popped hook (it failed) or an emptied
     * table (uninstall) is off; an entry replaced at run time goes the Python way */
    PyObject *spec = PyDict_GetItemWithError(table_dict, e->name_obj);
    if (spec == NULL) {
        if (!PyErr_Occurred())
            return 0;
        go_broken();
        return 0; /* the Python hook it added runs for this very event (after C hooks) */
    }
    if (spec != e->spec)
        return call_py_hook(event, args);
    int w = probe_wants(e->name_obj);
    if (w <= 0) {
        if (w < 0) {
            go_broken();
            return call_py_hook(event, args);
        }
        return 0;
    }
    if (e->importing && from_importlib())
        return 0;
    int internal = 0;
    PyObject *a = extract(e, args);
    if (a == NULL)
        goto failed;
    if (a == Py_None) {
        Py_DECREF(a);
        return 0;
    }
    int r = do_emit(e->name_obj, e->kind, a, 1, &internal);
    Py_DECREF(a);
    if (r == 0)
        return 0;
failed:
    if (is_blocked())
        return -1;
    if (internal) {
        go_broken();
        return 0; /* the Python hook it added runs for this very event (after C hooks) */
    }
    /* the hook's own failure (its extractor, a detection rule...): as the Python path, the
     * hook disables itself, the app's call proceeds, the failure is reported once */
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        if (PyDict_DelItem(table_dict, e->name_obj) < 0)
            PyErr_Clear();
        PyObject *res = PyObject_CallFunctionObjArgs(hook_failed_fn, e->name_obj,
                                                     ev ? ev : Py_None, NULL);
        if (res == NULL)
            PyErr_Clear();
        Py_XDECREF(res);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
    }
    return 0;
}


/* ------------------------------------------------------------------ trace frame encoder */

/* The shipper's per-event work in C: one queued call (core.Probe.emit's tuple) -> the trace
 * frame wire.encode_trace makes of it, byte for byte: json.dumps(ensure_ascii=False,
 * separators=(",", ":")) of str / list / tuple / dict (str keys) / bool / None / int, then
 * UTF-8 with lone surrogates as "?". Any other value: None, and the caller uses Python. */
typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static int put(buf_t *b, const char *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n)
            cap *= 2;
        char *np = PyMem_Realloc(b->p, cap);
        if (np == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

#define UNSUPPORTED 1 /* returned by enc_value: a type this encoder leaves to Python */

static int enc_utf8(buf_t *b, const char *s, Py_ssize_t n) {
    if (put(b, "\"", 1) < 0)
        return -1;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (put(b, s + start, (size_t)(i - start)) < 0)
            return -1;
        char esc[8];
        const char *e = NULL;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            e = esc;
        }
        if (put(b, e, strlen(e)) < 0)
            return -1;
        start = i + 1;
    }
    if (put(b, s + start, (size_t)(n - start)) < 0)
        return -1;
    return put(b, "\"", 1);
}

static int enc_str(buf_t *b, PyObject *o) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s != NULL)
        return enc_utf8(b, s, n);
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return -1;
    PyErr_Clear(); /* lone surrogates: "?" as .encode("utf-8", "replace") makes them */
    PyObject *bytes = PyUnicode_AsEncodedString(o, "utf-8", "replace");
    if (bytes == NULL)
        return -1;
    int r = enc_utf8(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
    Py_DECREF(bytes);
    return r;
}

static int enc_value(buf_t *b, PyObject *o, int depth) {
    if (depth > 16)
        return UNSUPPORTED;
    if (PyUnicode_CheckExact(o))
        return enc_str(b, o);
    if (o == Py_None)
        return put(b, "null", 4);
    if (o == Py_True)
        return put(b, "true", 4);
    if (o == Py_False)
        return put(b, "false", 5);
    if (PyLong_CheckExact(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return UNSUPPORTED;
        }
        char num[32];
        int k = snprintf(num, sizeof num, "%lld", v);
        return put(b, num, (size_t)k);
    }
    if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        PyObject **items = PySequence_Fast_ITEMS(o);
        if (put(b, "[", 1) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i && put(b, ",", 1) < 0)
                return -1;
            int r = enc_value(b, items[i], depth + 1);
            if (r != 0)
                return r;
        }
        return put(b, "]", 1);
    }
    if (PyDict_CheckExact(o)) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        int first = 1;
        if (put(b, "{", 1) < 0)
            return -1;
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k))
                return UNSUPPORTED;
            if ((!first && put(b, ",", 1) < 0) || enc_str(b, k) < 0 || put(b, ":", 1) < 0)
                return -1;
            first = 0;
            int r = enc_value(b, v, depth + 1);
            if (r != 0)
                return r;
        }
        return put(b, "}", 1);
    }
    return UNSUPPORTED;
}

static int enc_key(buf_t *b, const char *key) { /* ,"key": */
    return put(b, key, strlen(key));
}

/* The stack's JSON, cached: a hot call path repeats the same stack, and its frame texts are
 * the same str objects (the frame cache hands them out), so a stack is recognised by the
 * identity of its items. The entry keeps them alive: an address cannot be reused. */
#define SJ_SLOTS 2048
typedef struct {
    PyObject *items; /* tuple of the stack's str objects */
    uint64_t hash;
    char *json;
    size_t n;
} sj_t;
static sj_t sj_cache[SJ_SLOTS];

static int enc_stack(buf_t *b, PyObject *stack) {
    if (!PyList_CheckExact(stack))
        return enc_value(b, stack, 0);
    Py_ssize_t n = PyList_GET_SIZE(stack);
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (uint64_t)(uintptr_t)PyList_GET_ITEM(stack, i);
        h *= 0x100000001B3ULL;
        h ^= h >> 31;
    }
    sj_t *e = &sj_cache[h & (SJ_SLOTS - 1)];
    if (e->items != NULL && e->hash == h && PyTuple_GET_SIZE(e->items) == n) {
        Py_ssize_t i = 0;
        while (i < n && PyTuple_GET_ITEM(e->items, i) == PyList_GET_ITEM(stack, i))
            i++;
        if (i == n)
            return put(b, e->json, e->n);
    }
    size_t start = b->n;
    int r = enc_value(b, stack, 0);
    if (r != 0)
        return r;
    PyObject *items = PyList_AsTuple(stack);
    char *json = items ? PyMem_Malloc(b->n - start) : NULL;
    if (json == NULL) { /* no cache entry this time; the frame is still right */
        Py_XDECREF(items);
        PyErr_Clear();
        return 0;
    }
    memcpy(json, b->p + start, b->n - start);
    Py_XDECREF(e->items);
    PyMem_Free(e->json);
    e->items = items;
    e->hash = h;
    e->json = json;
    e->n = b->n - start;
    return 0;
}

/* encode_event(prefix, entry) -> bytes (the whole frame, length header included) | None */
static PyObject *m_encode_event(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    (void)self;
    if (argc != 2 || !PyBytes_Check(argv[0]) || !PyTuple_CheckExact(argv[1]) ||
        PyTuple_GET_SIZE(argv[1]) != 7) {
        PyErr_SetString(PyExc_TypeError, "encode_event(prefix: bytes, entry: 7-tuple)");
        return NULL;
    }
    PyObject **e = &PyTuple_GET_ITEM(argv[1], 0);
    /* (time, hook, kind, args, policy_id, request, stack) */
    if (!PyFloat_CheckExact(e[0]))
        Py_RETURN_NONE;
    buf_t b = {NULL, 0, 0};
    char head[4] = {0, 0, 0, 0}, num[32];
    int r = put(&b, head, 4);
    if (r == 0)
        r = put(&b, PyBytes_AS_STRING(argv[0]), (size_t)PyBytes_GET_SIZE(argv[0]));
    if (r == 0) {
        long long ms = (long long)(PyFloat_AS_DOUBLE(e[0]) * 1000.0);
        r = put(&b, num, (size_t)snprintf(num, sizeof num, "%lld", ms));
    }
    if (r == 0)
        r = enc_key(&b, ",\"data\":{\"hook\":");
    if (r == 0)
        r = enc_value(&b, e[1], 0);
    if (r == 0)
        r = enc_key(&b, ",\"kind\":");
    if (r == 0)
        r = enc_value(&b, e[2], 0);
    if (r == 0)
        r = enc_key(&b, ",\"args\":");
    if (r == 0)
        r = enc_value(&b, e[3], 0);
    if (r == 0 && e[4] != Py_None) {
        r = enc_key(&b, ",\"blocked\":true,\"policy_id\":");
        if (r == 0)
            r = enc_value(&b, e[4], 0);
    }
    if (r == 0 && e[5] != Py_None) {
        r = enc_key(&b, ",\"request\":");
        if (r == 0)
            r = enc_value(&b, e[5], 0);
    }
    if (r == 0)
        r = enc_key(&b, ",\"stack\":");
    if (r == 0)
        r = enc_stack(&b, e[6]);
    if (r == 0)
        r = put(&b, "}}", 2);
    PyObject *out = NULL;
    if (r == 0) {
        uint32_t len = (uint32_t)(b.n - 4); /* wire.HEADER: ">I" */
        b.p[0] = (char)(len >> 24);
        b.p[1] = (char)(len >> 16);
        b.p[2] = (char)(len >> 8);
        b.p[3] = (char)len;
        out = PyBytes_FromStringAndSize(b.p, (Py_ssize_t)b.n);
    } else if (r == UNSUPPORTED) {
        out = Py_NewRef(Py_None);
    }
    PyMem_Free(b.p);
    return out;
}

/* ------------------------------------------------------------------ module functions */

/* Probe.emit for the wrappers: 0, or -1 with the exception the Python path would raise
 * (RampartBlocked, or its own failure, which the caller handles as before). */
static int emit_any(PyObject *hook, PyObject *kind, PyObject *args, int owned) {
    if (active) {
        int w = probe_wants(hook);
        if (w == 0)
            return 0;
        int internal = 1;
        if (w > 0 && do_emit(hook, kind, args, owned, &internal) == 0)
            return 0;
        if (!internal || is_blocked())
            return -1;
        go_broken();
    }
    /* turned off after an error: the Python path */
    PyObject *r = PyObject_CallFunctionObjArgs(emit_py, hook, kind, args, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *m_emit(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    (void)self;
    if (argc != 3) {
        PyErr_SetString(PyExc_TypeError, "emit(hook, kind, args)");
        return NULL;
    }
    if (emit_any(argv[0], argv[1], argv[2], 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ DB-API methods */

/* A method of the sqlite3 Cursor subclass (hooks/dbapi.py) in C: report the statement (as
 * dbapi._emit: [sql] or [sql, repr(params)[:4096]]), then call the C base method; no Python
 * frame in between. A descriptor, so it binds like a function. */
typedef struct {
    PyObject_HEAD PyObject *func; /* sqlite3.Cursor.execute, ... */
    PyObject *hook;
    int mode; /* 0 execute(sql, params=()), 1 executemany(sql, seq), 2 executescript(sql) */
    vectorcallfunc vectorcall;
} sqlm_t;

static PyObject *sql_kind;

static PyObject *sqlm_vectorcall(PyObject *o, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
    sqlm_t *m = (sqlm_t *)o;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    Py_ssize_t need = m->mode == 0 ? 2 : (m->mode == 1 ? 3 : 2);
    if ((kwnames && PyTuple_GET_SIZE(kwnames)) || n < need || n > (m->mode == 0 ? 3 : need))
        /* not the shape the wrapper reports: the base method says what is wrong */
        return PyObject_Vectorcall(m->func, args, nargsf, kwnames);
    if (probe != NULL && probe_wants(m->hook) != 0) {
        PyErr_Clear();
        PyObject *list;
        PyObject *params = (m->mode == 0 && n == 3) ? args[2] : NULL;
        int truthy = params ? PyObject_IsTrue(params) : 0;
        if (truthy < 0)
            return NULL; /* as the Python wrapper's `if parameters` */
        if (truthy) {
            PyObject *rep = PyObject_Repr(params), *cut = NULL;
            if (rep == NULL)
                return NULL; /* the Python wrapper's repr() would raise into the app too */
            cut = PyUnicode_GET_LENGTH(rep) > 4096 ? PyUnicode_Substring(rep, 0, 4096)
                                                   : Py_NewRef(rep);
            Py_DECREF(rep);
            if (cut == NULL)
                return NULL;
            list = PyList_New(2);
            if (list == NULL) {
                Py_DECREF(cut);
                return NULL;
            }
            PyList_SET_ITEM(list, 0, Py_NewRef(args[1]));
            PyList_SET_ITEM(list, 1, cut);
        } else {
            list = list_of(1, args[1], NULL);
            if (list == NULL)
                return NULL;
        }
        int r = emit_any(m->hook, sql_kind, list, 1);
        Py_DECREF(list);
        if (r < 0) {
            if (PyErr_ExceptionMatches(PyExc_PermissionError))
                return NULL; /* RampartBlocked: a block policy refused the statement */
            /* dbapi._emit: the hook disables itself, the failure is reported once */
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            PyObject *hd = pget(P_HOOKS_DISABLED);
            if (hd != NULL && PySet_Check(hd))
                PySet_Add(hd, m->hook);
            PyObject *res = PyObject_CallFunctionObjArgs(hook_failed_fn, m->hook,
                                                         ev ? ev : Py_None, NULL);
            Py_XDECREF(res);
            PyErr_Clear();
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        }
    }
    if (m->mode == 0 && n == 2) { /* execute(sql): the base with its default () */
        PyObject *full[3] = {args[0], args[1], empty_tuple};
        return PyObject_Vectorcall(m->func, full, 3, NULL);
    }
    return PyObject_Vectorcall(m->func, args, n, NULL);
}

static PyObject *sqlm_descr_get(PyObject *self, PyObject *obj, PyObject *type) {
    (void)type;
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static void sqlm_dealloc(PyObject *o) {
    sqlm_t *m = (sqlm_t *)o;
    Py_XDECREF(m->func);
    Py_XDECREF(m->hook);
    Py_TYPE(o)->tp_free(o);
}

static PyTypeObject SqlMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rampart_probe._accel.SqlMethod",
    .tp_basicsize = sizeof(sqlm_t),
    .tp_dealloc = sqlm_dealloc,
    .tp_vectorcall_offset = offsetof(sqlm_t, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_descr_get = sqlm_descr_get,
};

static PyObject *m_sql_method(PyObject *self, PyObject *a) {
    (void)self;
    PyObject *func, *hook;
    int mode;
    if (!PyArg_ParseTuple(a, "OUi", &func, &hook, &mode))
        return NULL;
    if (mode < 0 || mode > 2)
        return PyErr_Format(PyExc_ValueError, "bad mode %d", mode);
    sqlm_t *m = PyObject_New(sqlm_t, &SqlMethodType);
    if (m == NULL)
        return NULL;
    m->func = Py_NewRef(func);
    Py_INCREF(hook);
    PyUnicode_InternInPlace(&hook);
    m->hook = hook;
    m->mode = mode;
    m->vectorcall = sqlm_vectorcall;
    return (PyObject *)m;
}

static PyObject *m_install(PyObject *self, PyObject *a) {
    (void)self;
    PyObject *p, *table, *cfg;
    if (!PyArg_ParseTuple(a, "OO!O!", &p, &PyDict_Type, &table, &PyDict_Type, &cfg))
        return NULL;
    if (broken) {
        PyErr_SetString(PyExc_RuntimeError, "the accelerator was turned off by an error");
        return NULL;
    }
    PyObject *d = PyObject_GenericGetDict(p, NULL); /* materialised: attribute writes land here */
    if (d == NULL)
        return NULL;
#define CFG(var, key)                                                                        \
    do {                                                                                     \
        PyObject *v_ = PyDict_GetItemString(cfg, key);                                       \
        if (v_ == NULL) {                                                                    \
            Py_DECREF(d);                                                                    \
            return PyErr_Format(PyExc_KeyError, "accel config lacks %s", key);               \
        }                                                                                    \
        Py_XSETREF(var, Py_NewRef(v_));                                                      \
    } while (0)
    CFG(py_hook, "py_hook");
    CFG(fallback, "fallback");
    CFG(ctxvar, "contextvar");
    CFG(probe_dir, "probe_dir");
    CFG(s_func, "normalise");
    CFG(blocked_type, "blocked");
    CFG(table_dict, "table");
    arg_max = PyLong_AsSsize_t(PyDict_GetItemString(cfg, "arg_max"));
    args_max = PyLong_AsSsize_t(PyDict_GetItemString(cfg, "args_max"));
    queue_max = PyLong_AsSsize_t(PyDict_GetItemString(cfg, "queue_max"));
    if (PyErr_Occurred()) {
        Py_DECREF(d);
        return NULL;
    }
    PyObject *ep = PyObject_GetAttrString(p, "_emit_py"),
             *df = PyObject_GetAttrString(p, "drop"),
             *hf = PyObject_GetAttrString(p, "hook_failed");
    if (!ep || !df || !hf) {
        Py_XDECREF(ep);
        Py_XDECREF(df);
        Py_XDECREF(hf);
        Py_DECREF(d);
        return NULL;
    }
    Py_XSETREF(emit_py, ep);
    Py_XSETREF(drop_fn, df);
    Py_XSETREF(hook_failed_fn, hf);
    Py_XSETREF(pdict, d);
    p_valid = 0;
    if (!PyDict_CheckExact(d)) {
        PyErr_SetString(PyExc_TypeError, "the probe's __dict__ is not a dict");
        return NULL;
    }
    Py_XSETREF(probe, Py_NewRef(p));
    /* the event table: name -> (kind, extractor, importing, fast) */
    clear_events();
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(table, &pos, &k, &v)) {
        const char *name = PyUnicode_Check(k) ? PyUnicode_AsUTF8(k) : NULL;
        PyObject *kind, *ex, *spec;
        int importing, fast;
        if (name == NULL || strlen(name) >= sizeof events[0].name || n_events >= MAX_EVENTS ||
            !PyArg_ParseTuple(v, "OOpiO", &kind, &ex, &importing, &fast, &spec)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "bad event table entry");
            clear_events();
            return NULL;
        }
        event_t *e = &events[n_events];
        memset(e, 0, sizeof *e);
        strcpy(e->name, name);
        e->hash = fnv(name, &e->len);
        Py_INCREF(k);
        PyUnicode_InternInPlace(&k);
        e->name_obj = k;
        e->kind = Py_NewRef(kind);
        e->extract = Py_NewRef(ex);
        e->importing = importing;
        e->fast = fast;
        e->spec = Py_NewRef(spec);
        unsigned i = (unsigned)e->hash & (EV_SLOTS - 1);
        while (ev_index[i])
            i = (i + 1) & (EV_SLOTS - 1);
        ev_index[i] = ++n_events;
    }
    if (!hook_added) {
        if (PySys_AddAuditHook(audit_hook, NULL) < 0)
            return NULL;
        hook_added = 1;
    }
    muted = 0;
    active = 1;
    Py_RETURN_NONE;
}

static PyObject *m_mute(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    muted = 1;
    Py_RETURN_NONE;
}

static PyObject *m_set_busy(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    tls_busy = 1;
    Py_RETURN_NONE;
}

static PyObject *m_active(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(active && !broken);
}

static PyObject *m_inject_fault(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    fault_next = 1;
    Py_RETURN_NONE;
}

static PyObject *m_capture_stack(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t depth = PyLong_AsSsize_t(arg);
    if (depth == -1 && PyErr_Occurred())
        return NULL;
    if (probe_dir == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "not installed");
        return NULL;
    }
    return capture_stack(depth);
}

static PyMethodDef methods[] = {
    {"install", m_install, METH_VARARGS, "install(probe, events, config): take the hot path"},
    {"emit", (PyCFunction)(void (*)(void))m_emit, METH_FASTCALL, "emit(hook, kind, args)"},
    {"mute", m_mute, METH_NOARGS, "the audit table is empty (audit.uninstall)"},
    {"set_busy", m_set_busy, METH_NOARGS, "this thread is the probe's own: no events"},
    {"active", m_active, METH_NOARGS, "True while the accelerator handles events"},
    {"inject_fault", m_inject_fault, METH_NOARGS, "tests: the next fast path fails"},
    {"capture_stack", m_capture_stack, METH_O, "the C stack walk (tests)"},
    {"encode_event", (PyCFunction)(void (*)(void))m_encode_event, METH_FASTCALL,
     "encode_event(prefix, queued call) -> the trace frame, or None (Python encodes it)"},
    {"sql_method", m_sql_method, METH_VARARGS, "sql_method(base, hook, mode): a reporting method"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_accel", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

#define INTERN(var, s)                                                                       \
    do {                                                                                     \
        if ((var = PyUnicode_InternFromString(s)) == NULL)                                   \
            return NULL;                                                                     \
    } while (0)

PyMODINIT_FUNC PyInit__accel(void) {
    INTERN(k_enabled, "enabled");
    INTERN(k_hooks_disabled, "hooks_disabled");
    INTERN(k_blocks, "blocks");
    INTERN(k_detect, "detect");
    INTERN(k_quotas, "quotas");
    INTERN(k_away, "away");
    INTERN(k_queue, "queue");
    INTERN(k_filters, "filters");
    INTERN(k_stack_by_hook, "stack_by_hook");
    INTERN(k_stack_depth, "stack_depth");
    INTERN(k_empty, "empty");
    INTERN(k_by_kind, "by_kind");
    INTERN(k_by_hook, "by_hook");
    INTERN(k_window, "window");
    INTERN(k_counts, "counts");
    INTERN(k_limits, "limits");
    INTERN(k_default, "default");
    INTERN(k_built, "_built");
    INTERN(k_to_dict, "to_dict");
    INTERN(k_append, "append");
    INTERN(r_quota, "quota");
    INTERN(r_away, "agent_away");
    INTERN(r_queue_full, "queue_full");
    INTERN(empty_str, "");
    INTERN(k_dropped, "dropped");
    INTERN(sql_kind, "sql");
    if ((empty_tuple = PyTuple_New(0)) == NULL || PyType_Ready(&SqlMethodType) < 0)
        return NULL;
    INTERN(k_dropped_by, "dropped_by");
    if ((one = PyLong_FromLong(1)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "FAST_NONE", FAST_NONE) < 0 ||
        PyModule_AddIntConstant(m, "FAST_FIRST", FAST_FIRST) < 0 ||
        PyModule_AddIntConstant(m, "FAST_TWO", FAST_TWO) < 0 ||
        PyModule_AddIntConstant(m, "FAST_OPEN", FAST_OPEN) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
