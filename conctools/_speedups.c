/* conctools._speedups: the uncontended fast path of conctools.Lock and conctools.RLock in C.
 *
 * A traced lock's hot path is tiny (a non-blocking try of the real lock, the owner's thread id,
 * a counter; a sampled clock read once the lock has been contended; a push on the held-locks
 * stack in lock-order mode), but as Python methods it costs a Python frame per `with`, which
 * alone is 1.6x a `with threading.Lock()`. This module is a base type holding the fields that
 * path touches, and method descriptors that conctools/locks.py installs on its classes when
 * the module is available. Everything else stays in Python: every wait (the slow path),
 * every timeout, the validation of arguments, the lock-order graph and its checks. The real lock
 * is still a `_thread.lock` / `_thread.RLock` (called through its own methods), so its semantics
 * (signals, timeouts, fork, reprs) are CPython's own.
 *
 * Observation must never break the program: bookkeeping errors after the lock is taken are
 * swallowed; only the real lock's own errors (a release of an unlocked lock) reach the caller.
 * Built only for interpreters with a GIL (the fields are protected by it); elsewhere, and when
 * CONCTOOLS_PURE_PYTHON=1, locks.py uses its pure-Python fast path with the same behaviour.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <frameobject.h>
#include <pythread.h>
#include <time.h>

#ifdef Py_GIL_DISABLED
#error "conctools._speedups relies on the GIL; the pure-Python fast path is used instead"
#endif

typedef struct {
    PyObject_HEAD
    PyObject *lock;      /* _lock: the real _thread.lock / _thread.RLock */
    PyObject *acq;       /* _acq: its bound acquire */
    PyObject *rel;       /* _rel: its bound release */
    PyObject *owner;     /* _owner: the owning thread's id (NULL reads as None) */
    unsigned long owner_ident;
    unsigned long long owner_tid; /* _owner_tid: the owner's thread-state id (never reused), 0 = unknown */
    long long n;         /* _ct_n: acquisitions */
    long long t0;        /* _t0: start of a timed hold, 0 = untimed */
    long long osince;    /* _osince: when the holder took the lock (0 = unknown) */
    PyObject *otask;     /* _otask: the holding task, when a contended acquire knew it */
    PyObject *osite;     /* _osite: where the holder took it ("" / "file:LINE" / (code, offset)) */
    PyObject *hold;      /* _ct_hold: hold-time Histogram, None until the first contention */
    PyObject *held;      /* _ct_held: the held-locks stack this lock was pushed on (lock order) */
    PyObject *entry;     /* _ct_entry: (weakref, class key, name, serial), the fixed part of a held entry */
    PyObject *site;      /* the last site computed, for site_code/site_lasti (a loop takes a lock on one line) */
    PyObject *site_code; /* (borrowed identity only, never dereferenced) */
    int site_lasti;
    PyObject *stats;     /* _ct_stats: the LockStats of its class */
    PyObject *name;      /* _ct_name */
    PyObject *created;   /* _ct_created: creation site */
    PyObject *serial;    /* _ct_serial */
    PyObject *waiters;   /* _ct_waiters: {(ident, task id): wait} */
    PyObject *weakreflist;
} CoreObject;

/* Set once by setup(), from conctools/locks.py. */
static PyObject *g_false_args;      /* (False,) */
static PyObject *g_minus_one;       /* -1 */
static PyObject *g_empty;           /* "" */
static PyObject *g_mono;            /* time.monotonic_ns */
static PyObject *g_skip_prefixes;   /* tuple of path prefixes a lock site skips */
static PyObject *g_code_site;       /* lockorder.code_site(frame) */
static PyObject *g_local;           /* lockorder._local (a threading.local) */
static PyObject *g_held_stack;      /* lockorder.held_stack() */
static PyObject *g_check;           /* lockorder.check(held, entry) */
static PyObject *g_note_released;   /* lockorder.note_released(held, prim) */
static PyObject *g_edges;           /* lockorder._edges: (from class, to class) -> first edge seen */
static PyObject *g_hist_type;       /* recorder.Histogram */
/* Creation (registration) fast path: see init_common(). */
static PyObject *g_allocate_lock;   /* _thread.allocate_lock */
static PyObject *g_rlock_type;      /* _thread.RLock */
static PyObject *g_ordered_lock;    /* locks._OrderedLock */
static PyObject *g_ordered_rlock;   /* locks._OrderedRLock */
static PyObject *g_order_enabled;   /* lockorder._enabled: [depth] */
static PyObject *g_site_cache;      /* locks._site_cache: key -> (created_at, stats, codes) */
static PyObject *g_internal;        /* locks._INTERNAL_PREFIXES */
static PyObject *g_current;         /* recorder._current: [the current recorder] */
static PyObject *g_published;       /* locks._published: [recorder] */
static PyObject *g_register;        /* locks._register(prim, kind, name, frame): the full, Python path */
static PyObject *g_retire;          /* locks._retire(prim) */
static PyObject *g_serials;         /* locks._serials (itertools.count) */
static PyObject *g_refs;            /* registry._refs */
static PyObject *g_discard;         /* registry._refs.discard */
static PyObject *g_epoch;           /* locks._epoch: [n] */
static long long g_mask = 7;        /* HOLD_SAMPLE - 1 */

static PyObject *s_buckets, *s_count, *s_total_ns, *s_max_ns, *s_acquire, *s_release, *s_instances, *s_epoch,
    *s_class, *s_lock_kind, *s_rlock_kind;
static PyObject *s_contended, *s_stack, *s_recursion_count, *s_add, *s_acquire_py, *s_ct_stats, *s_key,
    *s_ct_name, *s_ct_serial;

static PyObject *g_one;  /* 1 */
static PyObject *g_zero; /* 0 */
static PyTypeObject *g_core_type;

/* -- small helpers --------------------------------------------------------------------- */

/* 1 acquired, 0 not, -1 error (from the real lock: propagate). */
static int
try_acquire(CoreObject *self)
{
    if (self->acq == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return -1;
    }
    PyObject *r = PyObject_Call(self->acq, g_false_args, NULL);
    if (r == NULL) {
        return -1;
    }
    int got = (r == Py_True) ? 1 : PyObject_IsTrue(r);
    Py_DECREF(r);
    return got;
}

static PyObject *
release_real(CoreObject *self)
{
    if (self->rel == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return NULL;
    }
    return PyObject_CallNoArgs(self->rel);
}

/* A KeyboardInterrupt or SystemExit that a signal handler raised while bookkeeping ran Python
 * code: it belongs to the program, so it is raised again at the next pending-call check. */
static PyObject *g_deferred_type, *g_deferred_value, *g_deferred_tb;

static int
reraise_deferred(void *Py_UNUSED(arg))
{
    if (g_deferred_type == NULL) {
        return 0;
    }
    PyErr_Restore(g_deferred_type, g_deferred_value, g_deferred_tb);
    g_deferred_type = g_deferred_value = g_deferred_tb = NULL;
    return -1;
}

/* Drop whatever error bookkeeping raised: observing must not break the program. An exception
 * that is not an Exception (KeyboardInterrupt, SystemExit) is not ours to drop: it is deferred. */
static void
swallow(void)
{
    if (!PyErr_Occurred()) {
        return;
    }
    if (PyErr_ExceptionMatches(PyExc_Exception) || g_deferred_type != NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Fetch(&g_deferred_type, &g_deferred_value, &g_deferred_tb);
    if (Py_AddPendingCall(reraise_deferred, NULL) < 0) {
        PyErr_Restore(g_deferred_type, g_deferred_value, g_deferred_tb); /* cannot defer: drop it */
        g_deferred_type = g_deferred_value = g_deferred_tb = NULL;
        PyErr_Clear();
    }
}

/* The owner: its thread id (an int, reused while the same thread takes the lock again) and its
 * thread-state id, which unlike a thread id is never reused by a later thread: a lock left locked
 * by a thread that has exited is then told apart from one held by the new thread with its id. */
static void
set_owner(CoreObject *self)
{
    unsigned long ident = PyThread_get_thread_ident();
    self->owner_tid = PyThreadState_GetID(PyThreadState_Get());
    if (self->owner != NULL && self->owner_ident == ident) {
        return;
    }
    PyObject *obj = PyLong_FromUnsignedLong(ident);
    if (obj == NULL) {
        swallow();
        return;
    }
    Py_XSETREF(self->owner, obj);
    self->owner_ident = ident;
}

/* time.monotonic_ns(): on Linux that is clock_gettime(CLOCK_MONOTONIC), read here directly;
 * elsewhere, the Python function itself (the clocks must agree: locks.py compares them). */
static long long
mono_ns(void)
{
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
#endif
    PyObject *r = PyObject_CallNoArgs(g_mono);
    if (r == NULL) {
        swallow();
        return 0;
    }
    long long v = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) {
        swallow();
        return 0;
    }
    return v;
}

static int
has_hold(CoreObject *self)
{
    return self->hold != NULL && self->hold != Py_None;
}

/* The slow path, in Python: self._contended(timeout, caller's frame). */
static PyObject *
contended(CoreObject *self)
{
    PyObject *frame = (PyObject *)PyEval_GetFrame();
    return PyObject_CallMethodObjArgs((PyObject *)self, s_contended, g_minus_one, frame ? frame : Py_None, NULL);
}

/* A timed hold: every contended one, one in HOLD_SAMPLE of the others (sample != 0 forces none). */
static void
start_hold(CoreObject *self, int timed)
{
    Py_XSETREF(self->otask, Py_NewRef(Py_None));
    long long t = (timed && !(self->n & g_mask)) ? mono_ns() : 0;
    self->osince = self->t0 = t;
}

/* recorder.bucket_of(): the same log-linear buckets (locks.py checks the constant; a test
 * compares the two over many values). */
static int g_sub_bits = 3;

static long long
bucket_of(long long value)
{
    long long sub = 1LL << g_sub_bits;
    if (value < sub) {
        return value > 0 ? value : 0;
    }
    int bits = 64 - __builtin_clzll((unsigned long long)value);
    return ((long long)(bits - g_sub_bits) << g_sub_bits) | ((value >> (bits - g_sub_bits - 1)) & (sub - 1));
}

/* Histogram.add(value) on a recorder.Histogram (slots buckets, count, total_ns, max_ns), done here:
 * the Python method costs more than the rest of a timed acquisition. Anything unexpected (a
 * subclass, another object) goes through its own add(). */
static int
hist_add_fields(PyObject *hist, long long value)
{
    PyObject *buckets = NULL, *idx = NULL, *one = NULL;
    int rc = -1;
    buckets = PyObject_GetAttr(hist, s_buckets);
    if (buckets == NULL || !PyDict_CheckExact(buckets)) goto done;
    idx = PyLong_FromLongLong(bucket_of(value));
    if (idx == NULL) goto done;
    PyObject *old = PyDict_GetItemWithError(buckets, idx); /* borrowed */
    if (old == NULL && PyErr_Occurred()) goto done;
    long long count = old ? PyLong_AsLongLong(old) : 0;
    if (count == -1 && PyErr_Occurred()) goto done;
    one = PyLong_FromLongLong(count + 1);
    if (one == NULL || PyDict_SetItem(buckets, idx, one) < 0) goto done;
    PyObject *names[3] = {s_count, s_total_ns, s_max_ns};
    for (int i = 0; i < 3; i++) {
        PyObject *cur = PyObject_GetAttr(hist, names[i]);
        if (cur == NULL) goto done;
        long long v = PyLong_AsLongLong(cur);
        Py_DECREF(cur);
        if (v == -1 && PyErr_Occurred()) goto done;
        long long nv = i == 0 ? v + 1 : i == 1 ? v + value : (value > v ? value : v);
        if (nv == v) continue;
        PyObject *o = PyLong_FromLongLong(nv);
        if (o == NULL) goto done;
        int err = PyObject_SetAttr(hist, names[i], o);
        Py_DECREF(o);
        if (err < 0) goto done;
    }
    rc = 0;
done:
    Py_XDECREF(buckets);
    Py_XDECREF(idx);
    Py_XDECREF(one);
    return rc;
}

static void
end_hold(CoreObject *self)
{
    long long t0 = self->t0;
    if (t0) {
        self->t0 = 0;
        if (has_hold(self)) {
            long long d = mono_ns() - t0;
            if (g_hist_type != NULL && Py_IS_TYPE(self->hold, (PyTypeObject *)g_hist_type)) {
                hist_add_fields(self->hold, d);
            }
            else {
                PyObject *o = PyLong_FromLongLong(d);
                if (o != NULL) {
                    PyObject *r = PyObject_CallMethodOneArg(self->hold, s_add, o);
                    Py_DECREF(o);
                    Py_XDECREF(r);
                }
            }
            swallow();
        }
    }
}

/* -1 on error (swallowed by callers), else the RLock's recursion count for this thread. */
static long
recursion_count(CoreObject *self)
{
    PyObject *r = PyObject_CallMethodNoArgs(self->lock, s_recursion_count);
    if (r == NULL) {
        swallow();
        return -1;
    }
    long v = PyLong_AsLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) {
        swallow();
    }
    return v;
}

/* -- lock order ---------------------------------------------------------------------- */

static PyObject *g_keep_prefix; /* the bundled sample server: inside the package, yet user code */
static PyObject *g_pkg_dir;     /* conctools' own directory */

/* filename starts with one of prefixes (and is not the sample server's). */
static int
skipped_file_in(PyObject *filename, PyObject *prefixes)
{
    if (prefixes == NULL || !PyTuple_Check(prefixes) || !PyUnicode_Check(filename)) {
        return 0;
    }
    if (g_keep_prefix != NULL && PyUnicode_Tailmatch(filename, g_keep_prefix, 0, PY_SSIZE_T_MAX, -1) == 1) {
        return 0;
    }
    Py_ssize_t k = PyTuple_GET_SIZE(prefixes);
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_ssize_t m = PyUnicode_Tailmatch(filename, PyTuple_GET_ITEM(prefixes, i), 0, PY_SSIZE_T_MAX, -1);
        if (m == 1) {
            return 1;
        }
        if (m < 0) {
            PyErr_Clear();
        }
    }
    return 0;
}

static int
skipped_file(PyObject *filename)
{
    return skipped_file_in(filename, g_skip_prefixes);
}

/* Where the caller took the lock: (code, offset), or lockorder.code_site() when the caller is
 * the stdlib or conctools itself (it walks out to user code). New reference, never NULL. */
static PyObject *
caller_site(CoreObject *self)
{
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL) {
        return PyUnicode_FromString("?");
    }
    PyCodeObject *code = PyFrame_GetCode(frame);
    int lasti = PyFrame_GetLasti(frame);
    /* The same code object and offset as last time: the same site. The cached site tuple holds
     * the code object, so the pointer cannot have been reused by another code object. */
    if (self->site != NULL && self->site_code == (PyObject *)code && self->site_lasti == lasti) {
        Py_DECREF(code);
        return Py_NewRef(self->site);
    }
    PyObject *site = NULL;
    if (skipped_file(code->co_filename)) {
        site = PyObject_CallOneArg(g_code_site, (PyObject *)frame);
    }
    else {
        PyObject *offset = PyLong_FromLong(lasti);
        if (offset != NULL) {
            site = PyTuple_Pack(2, (PyObject *)code, offset);
            Py_DECREF(offset);
        }
    }
    if (site == NULL) {
        swallow();
        Py_DECREF(code);
        return PyUnicode_FromString("?");
    }
    if (PyTuple_Check(site) && PyTuple_GET_SIZE(site) == 2 && PyTuple_GET_ITEM(site, 0) == (PyObject *)code) {
        Py_XSETREF(self->site, Py_NewRef(site));
        self->site_code = (PyObject *)code;
        self->site_lasti = lasti;
    }
    Py_DECREF(code);
    return site;
}

static PyObject *
entry_base(CoreObject *self)
{
    if (self->entry != NULL) {
        return self->entry;
    }
    PyObject *wref = NULL, *stats = NULL, *key = NULL, *name = NULL, *serial = NULL;
    wref = PyWeakref_NewRef((PyObject *)self, NULL);
    if (wref == NULL) goto done;
    stats = PyObject_GetAttr((PyObject *)self, s_ct_stats);
    if (stats == NULL) goto done;
    key = PyObject_GetAttr(stats, s_key);
    if (key == NULL) goto done;
    name = PyObject_GetAttr((PyObject *)self, s_ct_name);
    if (name == NULL) goto done;
    serial = PyObject_GetAttr((PyObject *)self, s_ct_serial);
    if (serial == NULL) goto done;
    self->entry = PyTuple_Pack(4, wref, key, name, serial);
done:
    Py_XDECREF(wref);
    Py_XDECREF(stats);
    Py_XDECREF(key);
    Py_XDECREF(name);
    Py_XDECREF(serial);
    return self->entry;
}

/* The calling thread's held-locks stack (lockorder._local.stack, a new reference), remembered
 * for the last thread that asked: thread-state ids are never reused, unlike thread idents. */
static uint64_t g_held_tid;
static PyObject *g_held_list;

static PyObject *
thread_held(void)
{
    uint64_t tid = PyThreadState_GetID(PyThreadState_Get());
    if (g_held_list != NULL && g_held_tid == tid) {
        return Py_NewRef(g_held_list);
    }
    PyObject *held = PyObject_GetAttr(g_local, s_stack);
    if (held == NULL) {
        PyErr_Clear();
        held = PyObject_CallNoArgs(g_held_stack);
        if (held == NULL) {
            swallow();
            return NULL;
        }
    }
    Py_XSETREF(g_held_list, Py_NewRef(held));
    g_held_tid = tid;
    return held;
}

/* 1 when every edge held -> entry is already in the graph between two live locks of different
 * classes (the steady state of a program: nothing to add, so no call into lockorder.check);
 * 0 when lockorder.check must look (a new edge, a same-class pair, a dead entry, an error). */
static int
edges_known(CoreObject *self, PyObject *held, PyObject *entry)
{
    if (g_edges == NULL || !PyDict_Check(g_edges)) {
        return 0;
    }
    PyObject *to_key = PyTuple_GET_ITEM(entry, 1);
    Py_ssize_t n = PyList_GET_SIZE(held);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(held, i);
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) < 2 || !PyWeakref_CheckRef(PyTuple_GET_ITEM(h, 0))) {
            return 0;
        }
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *other = NULL;
        if (PyWeakref_GetRef(PyTuple_GET_ITEM(h, 0), &other) != 1) {
            PyErr_Clear();
            return 0; /* dropped while held: check() prunes it */
        }
        Py_DECREF(other); /* only its identity is needed; held entries keep no lock alive anyway */
#else
        PyObject *other = PyWeakref_GetObject(PyTuple_GET_ITEM(h, 0));
        if (other == NULL || other == Py_None) {
            PyErr_Clear();
            return 0;
        }
#endif
        if (other == (PyObject *)self) {
            continue; /* re-entry is not an edge */
        }
        PyObject *from_key = PyTuple_GET_ITEM(h, 1);
        int same = PyObject_RichCompareBool(from_key, to_key, Py_EQ);
        if (same != 0) {
            PyErr_Clear();
            return 0; /* same class: ordered per instance, in Python */
        }
        PyObject *pair = PyTuple_Pack(2, from_key, to_key);
        if (pair == NULL) {
            PyErr_Clear();
            return 0;
        }
        int known = PyDict_Contains(g_edges, pair);
        Py_DECREF(pair);
        if (known != 1) {
            PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

/* Push this lock on the thread's held stack, checking the order against what it holds. */
static void
order_push(CoreObject *self)
{
    PyObject *site = caller_site(self);
    Py_XSETREF(self->osite, site);
    PyObject *held = thread_held();
    if (held == NULL) {
        return;
    }
    Py_XSETREF(self->held, held);
    PyObject *base = entry_base(self);
    if (base == NULL) {
        swallow();
        return;
    }
    PyObject *entry = PyTuple_New(5);
    if (entry == NULL) {
        swallow();
        return;
    }
    for (Py_ssize_t i = 0; i < 4; i++) {
        PyTuple_SET_ITEM(entry, i, Py_NewRef(PyTuple_GET_ITEM(base, i)));
    }
    PyTuple_SET_ITEM(entry, 4, Py_NewRef(site));
    if (PyList_Check(held)) {
        if (PyList_GET_SIZE(held) > 0 && !edges_known(self, held, entry)) {
            PyObject *r = PyObject_CallFunctionObjArgs(g_check, held, entry, NULL);
            Py_XDECREF(r);
            swallow();
        }
        if (PyList_Append(held, entry) < 0) {
            swallow();
        }
    }
    Py_DECREF(entry);
}

static void
order_pop(CoreObject *self)
{
    PyObject *held = self->held;
    if (held == NULL || held == Py_None) {
        return;
    }
    self->held = NULL; /* our reference now */
    Py_ssize_t n = PyList_Check(held) ? PyList_GET_SIZE(held) : 0;
    PyObject *last = n > 0 ? PyList_GET_ITEM(held, n - 1) : NULL;
    if (last != NULL && self->entry != NULL && PyTuple_Check(last) && PyTuple_GET_SIZE(last) > 0 &&
        PyTuple_GET_ITEM(last, 0) == PyTuple_GET_ITEM(self->entry, 0)) {
        if (PyList_SetSlice(held, n - 1, n, NULL) < 0) {
            swallow();
        }
    }
    else {
        PyObject *r = PyObject_CallFunctionObjArgs(g_note_released, held, (PyObject *)self, NULL);
        Py_XDECREF(r);
        swallow();
    }
    Py_DECREF(held);
}

/* -- the methods locks.py installs --------------------------------------------------- */

/* Lock, never contended: the owner and a counter. */
static PyObject *
lock_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    int got = try_acquire(self);
    if (got < 0) return NULL;
    if (!got) return contended(self);
    set_owner(self);
    self->n++;
    Py_RETURN_TRUE;
}

/* RLock, never contended: the C RLock knows its owner, so only the counter. */
static PyObject *
rlock_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    int got = try_acquire(self);
    if (got < 0) return NULL;
    if (!got) return contended(self);
    self->n++;
    Py_RETURN_TRUE;
}

/* Plain __exit__ (both kinds): release the real lock. */
static PyObject *
plain_exit(CoreObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    PyObject *r = release_real(self);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
plain_release(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = release_real(self);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* acquire() with no arguments takes the fast path; anything else goes to the Python
 * implementation (self._acquire_py), which validates arguments exactly as the C lock does. */
static PyObject *
acquire_common(CoreObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames, int rlock)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 0 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
        return rlock ? rlock_enter(self, NULL) : lock_enter(self, NULL);
    }
    /* Forward the call unchanged: self first, then the caller's arguments. */
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8];
    PyObject **buf = small;
    if (nargs + nkw + 1 > 8) {
        buf = PyMem_Malloc((nargs + nkw + 1) * sizeof(PyObject *));
        if (buf == NULL) return PyErr_NoMemory();
    }
    buf[0] = (PyObject *)self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        buf[i + 1] = args[i];
    }
    PyObject *r = PyObject_VectorcallMethod(s_acquire_py, buf, (size_t)(nargs + 1), kwnames);
    if (buf != small) PyMem_Free(buf);
    return r;
}

static PyObject *
lock_acquire(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return acquire_common(self, args, (size_t)nargs, kwnames, 0);
}

static PyObject *
rlock_acquire(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return acquire_common(self, args, (size_t)nargs, kwnames, 1);
}

/* Lock after its first contention: sampled hold times, holder details reset. */
static PyObject *
lock_timed_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    int got = try_acquire(self);
    if (got < 0) return NULL;
    if (!got) return contended(self);
    set_owner(self);
    self->n++;
    Py_XSETREF(self->osite, Py_NewRef(g_empty));
    start_hold(self, 1);
    Py_RETURN_TRUE;
}

static PyObject *
lock_timed_exit(CoreObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    end_hold(self);
    /* _owner is left as it is (it means something only while the lock is locked, and the
     * next acquisition by the same thread then reuses the int). */
    return plain_exit(self, NULL, 0);
}

/* Lock under lock-order checking: also where it was taken, pushed on the held stack. */
static PyObject *
lock_ordered_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    int got = try_acquire(self);
    if (got < 0) return NULL;
    if (!got) return contended(self);
    set_owner(self);
    self->n++;
    start_hold(self, has_hold(self));
    order_push(self);
    Py_RETURN_TRUE;
}

static PyObject *
lock_ordered_exit(CoreObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    order_pop(self);
    return lock_timed_exit(self, NULL, 0);
}

/* RLock after its first contention: the outermost level is timed. */
static PyObject *
rlock_timed_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    int got = try_acquire(self);
    if (got < 0) return NULL;
    if (!got) return contended(self);
    self->n++;
    if (recursion_count(self) == 1) {
        Py_XSETREF(self->osite, Py_NewRef(g_empty));
        start_hold(self, 1);
    }
    Py_RETURN_TRUE;
}

static PyObject *
rlock_timed_exit(CoreObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    if (recursion_count(self) == 1) {
        end_hold(self);
    }
    return plain_exit(self, NULL, 0);
}

static PyObject *
rlock_ordered_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    int got = try_acquire(self);
    if (got < 0) return NULL;
    if (!got) return contended(self);
    self->n++;
    if (recursion_count(self) == 1) { /* re-entry adds no edge */
        start_hold(self, has_hold(self));
        order_push(self);
    }
    Py_RETURN_TRUE;
}

static PyObject *
rlock_ordered_exit(CoreObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    if (recursion_count(self) == 1) {
        order_pop(self);
        end_hold(self);
    }
    return plain_exit(self, NULL, 0);
}

/* -- creation: __init__ and __del__ ------------------------------------------------------ */

static int
is_on(PyObject *list)
{
    if (list == NULL || !PyList_Check(list) || PyList_GET_SIZE(list) < 1) return 0;
    int r = PyObject_IsTrue(PyList_GET_ITEM(list, 0));
    if (r < 0) PyErr_Clear();
    return r > 0;
}

/* locks._register's cache key for a creation at frame (a new reference, or NULL without an
 * exception): (id(code), offset, kind, name) in user code; inside the stdlib, (id(the stdlib
 * function's code), id(the user caller's code), its offset, kind, name), as _stdlib_site_key. */
static PyObject *
site_key(PyFrameObject *frame, PyObject *kind, PyObject *name)
{
    PyCodeObject *code = PyFrame_GetCode(frame);
    if (!skipped_file_in(code->co_filename, g_internal)) {
        PyObject *key = Py_BuildValue("(NiOO)", PyLong_FromVoidPtr(code), PyFrame_GetLasti(frame), kind, name);
        Py_DECREF(code);
        return key;
    }
    Py_DECREF(code);
    /* inner: the first frame outside conctools; user: the first frame outside the stdlib too */
    PyFrameObject *inner = (PyFrameObject *)Py_NewRef(frame);
    while (inner != NULL) {
        PyCodeObject *c = PyFrame_GetCode(inner);
        int in_pkg = PyUnicode_Check(c->co_filename) && g_pkg_dir != NULL &&
                     PyUnicode_Tailmatch(c->co_filename, g_pkg_dir, 0, PY_SSIZE_T_MAX, -1) == 1 &&
                     !(g_keep_prefix != NULL &&
                       PyUnicode_Tailmatch(c->co_filename, g_keep_prefix, 0, PY_SSIZE_T_MAX, -1) == 1);
        Py_DECREF(c);
        if (!in_pkg) break;
        PyFrameObject *back = PyFrame_GetBack(inner);
        Py_DECREF(inner);
        inner = back;
    }
    if (inner == NULL) return NULL;
    PyFrameObject *user = (PyFrameObject *)Py_NewRef(inner);
    while (user != NULL) {
        PyCodeObject *c = PyFrame_GetCode(user);
        int internal = skipped_file_in(c->co_filename, g_internal);
        Py_DECREF(c);
        if (!internal) break;
        PyFrameObject *back = PyFrame_GetBack(user);
        Py_DECREF(user);
        user = back;
    }
    PyObject *key = NULL;
    if (user != NULL) {
        PyCodeObject *ic = PyFrame_GetCode(inner), *uc = PyFrame_GetCode(user);
        key = Py_BuildValue("(NNiOO)", PyLong_FromVoidPtr(ic), PyLong_FromVoidPtr(uc), PyFrame_GetLasti(user), kind,
                            name);
        Py_DECREF(ic);
        Py_DECREF(uc);
        Py_DECREF(user);
    }
    Py_DECREF(inner);
    return key;
}

/* Set a field on a traced primitive: a C member of a Core, an attribute of anything else. */
static int
set_field(PyObject *prim, PyObject **member, PyObject *attr, PyObject *value)
{
    if (member != NULL) {
        Py_XSETREF(*member, Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(prim, attr, value);
}

static PyObject *s_ct_created, *s_ct_waiters, *s_ct_n, *s_ct_hold;

/* What locks._register does when the creation site is in the cache (the common case: locks are
 * made on a few lines of code, over and over). 1: done; 0: not cached (the caller runs the Python
 * function); -1: an error (set). */
static int
register_cached(PyObject *prim, PyObject *kind, PyObject *name, PyFrameObject *frame)
{
    if (g_current == NULL || g_published == NULL || g_site_cache == NULL || frame == NULL) {
        return 0; /* setup_creation() not called yet */
    }
    int published = PyList_GET_SIZE(g_current) > 0 && PyList_GET_SIZE(g_published) > 0 &&
                    PyList_GET_ITEM(g_published, 0) == PyList_GET_ITEM(g_current, 0);
    if (!published) {
        return 0;
    }
    PyObject *cached = NULL;
    PyObject *key = site_key(frame, kind, name);
    if (key != NULL) {
        cached = PyDict_GetItemWithError(g_site_cache, key); /* borrowed */
        Py_DECREF(key);
    }
    if (cached == NULL || !PyTuple_Check(cached) || PyTuple_GET_SIZE(cached) < 2) {
        PyErr_Clear();
        return 0;
    }
    PyObject *created = PyTuple_GET_ITEM(cached, 0), *stats = PyTuple_GET_ITEM(cached, 1);
    int core = PyObject_TypeCheck(prim, g_core_type);
    CoreObject *c = core ? (CoreObject *)prim : NULL;
    PyObject *serial = PyIter_Next(g_serials);
    PyObject *waiters = PyDict_New();
    int err = serial == NULL || waiters == NULL;
    err = err || set_field(prim, c ? &c->stats : NULL, s_ct_stats, stats) < 0;
    err = err || set_field(prim, c ? &c->name : NULL, s_ct_name, name == Py_None ? created : name) < 0;
    err = err || set_field(prim, c ? &c->created : NULL, s_ct_created, created) < 0;
    err = err || set_field(prim, c ? &c->serial : NULL, s_ct_serial, serial) < 0;
    err = err || set_field(prim, c ? &c->waiters : NULL, s_ct_waiters, waiters) < 0;
    Py_XDECREF(serial);
    Py_XDECREF(waiters);
    if (err) return -1;
    if (c != NULL) {
        c->n = 0;
        Py_CLEAR(c->hold);
    }
    else if (PyObject_SetAttr(prim, s_ct_n, g_zero) < 0 || PyObject_SetAttr(prim, s_ct_hold, Py_None) < 0) {
        return -1;
    }
    /* stats.instances += 1 (informative only, like the Python path's unlocked counter); stats.epoch */
    PyObject *inst = PyObject_GetAttr(stats, s_instances);
    if (inst != NULL) {
        PyObject *more = PyNumber_Add(inst, g_one);
        Py_DECREF(inst);
        if (more != NULL) {
            PyObject_SetAttr(stats, s_instances, more);
            Py_DECREF(more);
        }
    }
    if (PyList_Check(g_epoch) && PyList_GET_SIZE(g_epoch) > 0) {
        PyObject_SetAttr(stats, s_epoch, PyList_GET_ITEM(g_epoch, 0));
    }
    swallow();
    PyObject *ref = PyWeakref_NewRef(prim, g_discard);
    if (ref != NULL) {
        PySet_Add(g_refs, ref);
        Py_DECREF(ref);
    }
    swallow();
    return 1;
}

static int
register_fast(CoreObject *self, PyObject *kind, PyObject *name, PyFrameObject *frame)
{
    int r = register_cached((PyObject *)self, kind, name, frame);
    if (r != 0) return r < 0 ? -1 : 0;
    PyObject *res = PyObject_CallFunctionObjArgs(g_register, (PyObject *)self, kind, name,
                                                 frame ? (PyObject *)frame : Py_None, NULL);
    if (res == NULL) return -1;
    Py_DECREF(res);
    return 0;
}

/* try_register(prim, kind, name, frame) -> bool: locks._register's cached case, for any primitive. */
static PyObject *
py_try_register(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "try_register(prim, kind, name, frame)");
        return NULL;
    }
    PyFrameObject *frame = PyFrame_Check(args[3]) ? (PyFrameObject *)args[3] : NULL;
    int r = register_cached(args[0], args[1], args[2], frame);
    if (r < 0) return NULL;
    return PyBool_FromLong(r);
}

static PyObject *
init_common(CoreObject *self, PyObject *args, PyObject *kwargs, int rlock)
{
    static char *kwlist[] = {"name", NULL};
    PyObject *name = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, rlock ? "|O:RLock" : "|O:Lock", kwlist, &name)) {
        return NULL;
    }
    PyObject *lock = PyObject_CallNoArgs(rlock ? g_rlock_type : g_allocate_lock);
    if (lock == NULL) return NULL;
    PyObject *acq = PyObject_GetAttr(lock, s_acquire);
    PyObject *rel = acq ? PyObject_GetAttr(lock, s_release) : NULL;
    if (rel == NULL) {
        Py_XDECREF(acq);
        Py_DECREF(lock);
        return NULL;
    }
    Py_XSETREF(self->lock, lock);
    Py_XSETREF(self->acq, acq);
    Py_XSETREF(self->rel, rel);
    if (register_fast(self, rlock ? s_rlock_kind : s_lock_kind, name, PyEval_GetFrame()) < 0) {
        return NULL;
    }
    if (is_on(g_order_enabled)) {
        if (PyObject_SetAttr((PyObject *)self, s_class, rlock ? g_ordered_rlock : g_ordered_lock) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
lock_init(CoreObject *self, PyObject *args, PyObject *kwargs)
{
    return init_common(self, args, kwargs, 0);
}

static PyObject *
rlock_init(CoreObject *self, PyObject *args, PyObject *kwargs)
{
    return init_common(self, args, kwargs, 1);
}

/* __del__: a lock never acquired has nothing to hand to its class; others go to locks._retire. */
static PyObject *
core_del(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->n == 0 && !has_hold(self)) {
        Py_RETURN_NONE;
    }
    PyObject *r = PyObject_CallOneArg(g_retire, (PyObject *)self);
    Py_XDECREF(r);
    swallow();
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"_c_lock_init", (PyCFunction)(void (*)(void))lock_init, METH_VARARGS | METH_KEYWORDS,
     "_c_lock_init($self, /, name=None)\n--\n\nA traced threading.Lock."},
    {"_c_rlock_init", (PyCFunction)(void (*)(void))rlock_init, METH_VARARGS | METH_KEYWORDS,
     "_c_rlock_init($self, /, name=None)\n--\n\nA traced threading.RLock."},
    {"_c_del", (PyCFunction)core_del, METH_NOARGS, NULL},
    {"_c_lock_enter", (PyCFunction)lock_enter, METH_NOARGS, NULL},
    {"_c_rlock_enter", (PyCFunction)rlock_enter, METH_NOARGS, NULL},
    {"_c_exit", (PyCFunction)(void (*)(void))plain_exit, METH_FASTCALL, NULL},
    {"_c_release", (PyCFunction)plain_release, METH_NOARGS,
     "_c_release($self, /)\n--\n\nRelease the lock (one level of an RLock), as threading's release()."},
    {"_c_lock_acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "_c_lock_acquire($self, /, blocking=True, timeout=-1)\n--\n\nAcquire the lock, as threading.Lock.acquire."},
    {"_c_rlock_acquire", (PyCFunction)(void (*)(void))rlock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "_c_rlock_acquire($self, /, blocking=True, timeout=-1)\n--\n\nAcquire (re-entrantly), as threading.RLock.acquire."},
    {"_c_lock_timed_enter", (PyCFunction)lock_timed_enter, METH_NOARGS, NULL},
    {"_c_lock_timed_exit", (PyCFunction)(void (*)(void))lock_timed_exit, METH_FASTCALL, NULL},
    {"_c_lock_ordered_enter", (PyCFunction)lock_ordered_enter, METH_NOARGS, NULL},
    {"_c_lock_ordered_exit", (PyCFunction)(void (*)(void))lock_ordered_exit, METH_FASTCALL, NULL},
    {"_c_rlock_timed_enter", (PyCFunction)rlock_timed_enter, METH_NOARGS, NULL},
    {"_c_rlock_timed_exit", (PyCFunction)(void (*)(void))rlock_timed_exit, METH_FASTCALL, NULL},
    {"_c_rlock_ordered_enter", (PyCFunction)rlock_ordered_enter, METH_NOARGS, NULL},
    {"_c_rlock_ordered_exit", (PyCFunction)(void (*)(void))rlock_ordered_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

/* -- the type -------------------------------------------------------------------------- */

static PyObject *
core_get_owner(CoreObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->owner ? self->owner : Py_None);
}

static int
core_set_owner(CoreObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->owner);
        self->owner_tid = 0;
        return 0;
    }
    unsigned long ident = 0;
    if (PyLong_Check(value)) {
        ident = PyLong_AsUnsignedLong(value);
        if (ident == (unsigned long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            ident = 0;
        }
    }
    Py_XSETREF(self->owner, Py_NewRef(value));
    self->owner_ident = ident;
    /* Python sets _owner from the acquiring thread itself (its slow paths): that thread's state. */
    self->owner_tid = ident == PyThread_get_thread_ident() ? PyThreadState_GetID(PyThreadState_Get()) : 0;
    return 0;
}

static PyGetSetDef core_getset[] = {
    {"_owner", (getter)core_get_owner, (setter)core_set_owner, NULL, NULL},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_lock", T_OBJECT_EX, offsetof(CoreObject, lock), 0, NULL},
    {"_acq", T_OBJECT_EX, offsetof(CoreObject, acq), 0, NULL},
    {"_rel", T_OBJECT_EX, offsetof(CoreObject, rel), 0, NULL},
    {"_ct_n", T_LONGLONG, offsetof(CoreObject, n), 0, NULL},
    {"_t0", T_LONGLONG, offsetof(CoreObject, t0), 0, NULL},
    {"_osince", T_LONGLONG, offsetof(CoreObject, osince), 0, NULL},
    {"_otask", T_OBJECT, offsetof(CoreObject, otask), 0, NULL},
    {"_osite", T_OBJECT, offsetof(CoreObject, osite), 0, NULL},
    {"_ct_hold", T_OBJECT, offsetof(CoreObject, hold), 0, NULL},
    {"_ct_held", T_OBJECT, offsetof(CoreObject, held), 0, NULL},
    {"_ct_entry", T_OBJECT, offsetof(CoreObject, entry), 0, NULL},
    {"_owner_tid", T_ULONGLONG, offsetof(CoreObject, owner_tid), READONLY, NULL},
    {"_ct_stats", T_OBJECT_EX, offsetof(CoreObject, stats), 0, NULL},
    {"_ct_name", T_OBJECT_EX, offsetof(CoreObject, name), 0, NULL},
    {"_ct_created", T_OBJECT_EX, offsetof(CoreObject, created), 0, NULL},
    {"_ct_serial", T_OBJECT_EX, offsetof(CoreObject, serial), 0, NULL},
    {"_ct_waiters", T_OBJECT_EX, offsetof(CoreObject, waiters), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CoreObject, weakreflist), READONLY, NULL},
    {NULL},
};

static int
core_traverse(CoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->lock);
    Py_VISIT(self->acq);
    Py_VISIT(self->rel);
    Py_VISIT(self->owner);
    Py_VISIT(self->otask);
    Py_VISIT(self->osite);
    Py_VISIT(self->hold);
    Py_VISIT(self->held);
    Py_VISIT(self->entry);
    Py_VISIT(self->site);
    Py_VISIT(self->stats);
    Py_VISIT(self->name);
    Py_VISIT(self->created);
    Py_VISIT(self->serial);
    Py_VISIT(self->waiters);
    return 0;
}

static int
core_clear(CoreObject *self)
{
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acq);
    Py_CLEAR(self->rel);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->otask);
    Py_CLEAR(self->osite);
    Py_CLEAR(self->hold);
    Py_CLEAR(self->held);
    Py_CLEAR(self->entry);
    Py_CLEAR(self->site);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->name);
    Py_CLEAR(self->created);
    Py_CLEAR(self->serial);
    Py_CLEAR(self->waiters);
    return 0;
}

static void
core_dealloc(CoreObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    core_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot core_slots[] = {
    {Py_tp_doc, "The fields and C fast paths of a traced lock (conctools.locks)."},
    {Py_tp_dealloc, core_dealloc},
    {Py_tp_traverse, core_traverse},
    {Py_tp_clear, core_clear},
    {Py_tp_methods, core_methods},
    {Py_tp_members, core_members},
    {Py_tp_getset, core_getset},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL},
};

static PyType_Spec core_spec = {
    .name = "conctools._speedups.Core",
    .basicsize = sizeof(CoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = core_slots,
};

/* -- module ---------------------------------------------------------------------------- */

static PyObject *
setup(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"mask", "mono", "skip_prefixes", "code_site", "local", "held_stack", "check",
                             "note_released", "edges", "histogram", "sub_bits", NULL};
    long long mask;
    int sub_bits;
    PyObject *mono, *skip, *code_site, *local, *held_stack, *check, *note_released, *edges, *hist;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LOO!OOOOOO!O!i:setup", kwlist, &mask, &mono, &PyTuple_Type,
                                     &skip, &code_site, &local, &held_stack, &check, &note_released, &PyDict_Type,
                                     &edges, &PyType_Type, &hist, &sub_bits)) {
        return NULL;
    }
    if (sub_bits < 1 || sub_bits > 16) {
        PyErr_SetString(PyExc_ValueError, "sub_bits out of range");
        return NULL;
    }
    g_sub_bits = sub_bits;
    Py_XSETREF(g_hist_type, Py_NewRef(hist));
    Py_XSETREF(g_edges, Py_NewRef(edges));
    g_mask = mask;
    Py_XSETREF(g_mono, Py_NewRef(mono));
    Py_XSETREF(g_skip_prefixes, Py_NewRef(skip));
    Py_XSETREF(g_code_site, Py_NewRef(code_site));
    Py_XSETREF(g_local, Py_NewRef(local));
    Py_XSETREF(g_held_stack, Py_NewRef(held_stack));
    Py_XSETREF(g_check, Py_NewRef(check));
    Py_XSETREF(g_note_released, Py_NewRef(note_released));
    Py_RETURN_NONE;
}

static PyObject *
setup_creation(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"allocate_lock", "rlock_type", "ordered_lock", "ordered_rlock", "order_enabled",
                             "site_cache", "internal_prefixes", "current", "published", "register",
                             "retire", "serials", "refs", "discard", "epoch", "keep_prefix", "pkg_dir", NULL};
    PyObject *v[17];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO!O!O!O!O!OOOO!OO!UU:setup_creation", kwlist, &v[0], &v[1],
                                     &v[2], &v[3], &PyList_Type, &v[4], &PyDict_Type, &v[5], &PyTuple_Type, &v[6],
                                     &PyList_Type, &v[7], &PyList_Type, &v[8], &v[9], &v[10], &v[11], &PySet_Type,
                                     &v[12], &v[13], &PyList_Type, &v[14], &v[15], &v[16])) {
        return NULL;
    }
    PyObject **slots[17] = {&g_allocate_lock, &g_rlock_type, &g_ordered_lock, &g_ordered_rlock, &g_order_enabled,
                            &g_site_cache, &g_internal, &g_current, &g_published, &g_register,
                            &g_retire, &g_serials, &g_refs, &g_discard, &g_epoch, &g_keep_prefix, &g_pkg_dir};
    for (int i = 0; i < 17; i++) {
        Py_XSETREF(*slots[i], Py_NewRef(v[i]));
    }
    Py_RETURN_NONE;
}

static PyObject *
py_bucket_of(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long long v = PyLong_AsLongLong(arg);
    if (v == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(bucket_of(v));
}

/* thread_state_id(ident): the thread-state id of the live thread with this thread id, or None.
 * Walked with the GIL held: a thread state is unlinked only by its thread holding the GIL. */
static PyObject *
py_thread_state_id(PyObject *Py_UNUSED(module), PyObject *arg)
{
    unsigned long ident = PyLong_AsUnsignedLong(arg);
    if (ident == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    PyInterpreterState *interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL; ts = PyThreadState_Next(ts)) {
        if (ts->thread_id == ident) {
            return PyLong_FromUnsignedLongLong(PyThreadState_GetID(ts));
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"thread_state_id", (PyCFunction)py_thread_state_id, METH_O,
     "thread_state_id(ident): the thread-state id of the live thread with this id, or None"},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     "setup(mask, mono, skip_prefixes, code_site, local, held_stack, check, note_released, edges, histogram, sub_bits)"},
    {"try_register", (PyCFunction)(void (*)(void))py_try_register, METH_FASTCALL,
     "try_register(prim, kind, name, frame) -> bool: register prim if its creation site is cached"},
    {"setup_creation", (PyCFunction)(void (*)(void))setup_creation, METH_VARARGS | METH_KEYWORDS,
     "setup_creation(...): what the C __init__ of Lock/RLock needs from locks.py"},
    {"bucket_of", (PyCFunction)py_bucket_of, METH_O, "bucket_of(value): recorder.bucket_of, as the C path computes it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "conctools._speedups",
    .m_doc = "C fast paths for conctools' traced locks (optional: conctools works without them).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                   \
    do {                                                    \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            goto fail;                                      \
    } while (0)

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) return NULL;
    INTERN(s_contended, "_contended");
    INTERN(s_buckets, "buckets");
    INTERN(s_ct_created, "_ct_created");
    INTERN(s_ct_waiters, "_ct_waiters");
    INTERN(s_ct_n, "_ct_n");
    INTERN(s_ct_hold, "_ct_hold");
    INTERN(s_acquire, "acquire");
    INTERN(s_release, "release");
    INTERN(s_instances, "instances");
    INTERN(s_epoch, "epoch");
    INTERN(s_class, "__class__");
    INTERN(s_lock_kind, "Lock");
    INTERN(s_rlock_kind, "RLock");
    INTERN(s_count, "count");
    INTERN(s_total_ns, "total_ns");
    INTERN(s_max_ns, "max_ns");
    INTERN(s_stack, "stack");
    INTERN(s_recursion_count, "_recursion_count");
    INTERN(s_add, "add");
    INTERN(s_acquire_py, "_acquire_py");
    INTERN(s_ct_stats, "_ct_stats");
    INTERN(s_key, "key");
    INTERN(s_ct_name, "_ct_name");
    INTERN(s_ct_serial, "_ct_serial");
    if ((g_false_args = PyTuple_Pack(1, Py_False)) == NULL) goto fail;
    if ((g_minus_one = PyLong_FromLong(-1)) == NULL) goto fail;
    if ((g_one = PyLong_FromLong(1)) == NULL) goto fail;
    if ((g_zero = PyLong_FromLong(0)) == NULL) goto fail;
    if ((g_empty = PyUnicode_FromString("")) == NULL) goto fail;
    /* locks.py uses this module only when the versions agree (a stale build in a source tree
     * falls back to pure Python instead of failing). Bump on any change to the interface. */
    if (PyModule_AddIntConstant(m, "API_VERSION", 3) < 0) goto fail;
    PyObject *core = PyType_FromSpec(&core_spec);
    if (core == NULL) goto fail;
    g_core_type = (PyTypeObject *)core; /* a strong reference of its own: never freed */
    if (PyModule_AddObject(m, "Core", Py_NewRef(core)) < 0) {
        Py_DECREF(core);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
