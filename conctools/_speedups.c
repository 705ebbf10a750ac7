/* conctools._speedups: the fast paths of conctools.Lock and conctools.RLock in C.
 *
 * A traced lock records, on every acquisition, its holder (thread, thread-state id, asyncio task,
 * where it was taken in lock-order mode) and a counter; once contended, a sample of hold times;
 * in lock-order mode, a push on the thread's held-locks stack. As Python methods each `with` would
 * pay Python frames; here the whole acquire/release runs in C, including the blocking wait of a
 * contended acquisition, so the caller's critical section sees nothing a plain lock would not do.
 *
 * Observing must not change what the program does (issue 22): between the real lock's acquire and
 * the return to the caller, and around the release, this code only stores into fields it already
 * has: no allocation that could start a garbage collection (whose finalizers may call back into
 * the code holding the lock), no call into Python, no release of a reference that could be the
 * last one (those go to a per-lock "trash" slot, dropped before the next acquisition). Whatever
 * needs allocating (the site of the acquisition, the held-stack entry, a new lock-order edge, a
 * wait record) is prepared BEFORE the acquire, on the same stack, and a wait's statistics and
 * event are recorded later, outside any critical section (locks.py flushes them).
 *
 * The real lock is still a `_thread.lock` / `_thread.RLock`, called through its own C methods, so
 * its semantics (signals, timeouts, fork, reprs) are CPython's own. Built only for interpreters
 * with a GIL (the fields are protected by it); elsewhere, and when CONCTOOLS_PURE_PYTHON=1,
 * locks.py runs the same paths in Python.
 *
 * Frames are read without materialising frame objects (which is an allocation) through CPython's
 * internal frame structures on 3.11-3.13, and through the public API elsewhere.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <frameobject.h>
#include <pythread.h>
#include <stdint.h>
#include <time.h>

#ifdef Py_GIL_DISABLED
#error "conctools._speedups relies on the GIL; the pure-Python fast path is used instead"
#endif

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000
#define CT_INTERNAL_FRAMES 1
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#define CT_UNDEF_BUILD_CORE 1
#endif
#include "internal/pycore_frame.h"
#ifdef _PyGC_FINALIZED
#undef _PyGC_FINALIZED /* the public header's copy; the internal one below says the same */
#endif
#include "internal/pycore_pystate.h" /* _PyThreadState_GET(): no function call */
#define CT_TSTATE() _PyThreadState_GET()
#if PY_VERSION_HEX >= 0x030D0000
#include "internal/pycore_tstate.h" /* _PyThreadStateImpl.asyncio_running_loop */
#define CT_TSTATE_LOOP 1
#endif
#ifdef CT_UNDEF_BUILD_CORE
#undef Py_BUILD_CORE
#endif
#else
#define CT_INTERNAL_FRAMES 0
#define CT_TSTATE() PyThreadState_Get()
#endif

#define API_VERSION 4

typedef struct CoreObject {
    PyObject_HEAD
    PyObject *lock;              /* _lock: the real _thread.lock / _thread.RLock */
    int rlock;                   /* 1 for an RLock */
    int ordered;                 /* _ct_ordered: lock-order checking (decided at creation) */
    long depth;                  /* an RLock's depth for its owner, kept by its own methods */
    /* The holder, valid while the lock is held (a Lock leaves them as they were on release). */
    unsigned long owner_ident;   /* _owner: its thread id, 0 = none */
    unsigned long long owner_tid;/* _owner_tid: its thread-state id (never reused), 0 = unknown */
    PyObject *othread;           /* _othread: its threading.Thread, when it has one */
    PyObject *otask;             /* _otask: its asyncio task, when taken inside one */
    PyObject *osite;             /* _osite: where it was taken: (code, offset) or "file:LINE"; NULL unknown */
    long long osince;            /* _osince: when it took the lock (0 = not timed) */
    long long t0;                /* _t0: start of a timed hold, 0 = untimed */
    long long n;                 /* _ct_n: acquisitions */
    PyObject *hold;              /* _ct_hold: hold-time Histogram, NULL until the first contention */
    PyObject *held;              /* _ct_held: the held-locks stack this lock was pushed on */
    PyObject *entry;             /* _ct_entry: the last held-stack entry (weakref, key, name, serial, site) */
    PyObject *site;              /* the last site computed, for site_code/site_lasti */
    void *site_code;             /* (identity only; self->site holds the code object) */
    int site_lasti;
    PyObject *known[4];          /* held entries whose edge to this lock is known (strong refs) */
    long long known_gen;         /* lockorder generation those were checked in */
    PyObject *trash[3];          /* references dropped inside a critical section, released later */
    /* identity */
    PyObject *stats;             /* _ct_stats */
    PyObject *name;              /* name= given, or NULL (then _ct_name is the creation site) */
    PyObject *created;           /* _ct_created */
    unsigned long long serial;   /* _ct_serial */
    PyObject *waiters;           /* _ct_waiters: {(ident, task id): wait}, NULL until the first wait */
    struct CoreObject *prev, *next; /* every live lock, for the registry (no weakref, no set) */
    int linked;
    PyObject *weakreflist;
} CoreObject;

/* -- set by setup(), from conctools/locks.py ------------------------------------------------ */

static PyObject *g_mono;            /* time.monotonic_ns */
static PyObject *g_hist_type;       /* recorder.Histogram */
static long long g_mask = 7;        /* HOLD_SAMPLE - 1 */
static int g_sub_bits = 3;
static PyObject *g_skip_prefixes;   /* path prefixes a lock site skips (conctools, asyncio, threading, ...) */
static PyObject *g_internal;        /* the same plus "<frozen": what a creation site skips */
static PyObject *g_keep_prefix;     /* the bundled sample server: inside the package, yet user code */
static PyObject *g_pkg_dir;         /* conctools' own directory */
static PyObject *g_local;           /* lockorder._local (a threading.local) */
static PyObject *g_held_stack;      /* lockorder.held_stack() */
static PyObject *g_check;           /* lockorder.check(held, entry) */
static PyObject *g_edges;           /* lockorder._edges */
static PyObject *g_generation;      /* lockorder._generation: [n], bumped by reset() */
static PyObject *g_allocate_lock;   /* _thread.allocate_lock */
static PyObject *g_rlock_type;      /* _thread.RLock */
static PyObject *g_order_enabled;   /* lockorder._enabled: [depth] */
static PyObject *g_current;         /* recorder._current: [the current recorder] */
static PyObject *g_published;       /* locks._published: [recorder] */
static PyObject *g_register;        /* locks._register(prim, kind, name, frame): the full, Python path */
static PyObject *g_retire;          /* locks._retire_counts(stats, n, hold) */
static PyObject *g_epoch;           /* locks._epoch: [n] */
static PyObject *g_wait_begin;      /* locks._wait_begin(prim, frame, timeout, holder) -> wait or None */
static PyObject *g_pending;         /* locks._pending: deque of ended waits */
static PyObject *g_waiting;         /* registry._waiting */
static PyObject *g_progress;        /* registry._progress */
static PyObject *g_safe_point;      /* locks._safe_point: a Python call that runs pending GC (3.12+) */
static PyObject *g_active;          /* threading._active */
static PyObject *g_running_loop;    /* asyncio._get_running_loop */
static PyObject *g_current_task;    /* asyncio.current_task */

static PyObject *s_acquire, *s_release, *s_locked, *s_is_owned, *s_recursion_count, *s_release_save,
    *s_acquire_restore, *s_stack, *s_key, *s_end_ns, *s_acquired, *s_append, *s_buckets, *s_count,
    *s_total_ns, *s_max_ns, *s_add, *s_epoch, *s_lock_kind, *s_rlock_kind, *s_thread_key, *s_site;

static PyObject *g_false_args;      /* (False,) */
static PyObject *g_true_args;       /* (True,) */
static PyObject *g_question;        /* "?" */
static PyObject *g_trash_list;      /* overflow of the per-lock trash slots */
static PyTypeObject *g_core_type;

/* The real locks' own C methods, called without bound-method objects. */
static PyCFunction m_lock_acquire, m_lock_release, m_lock_locked;
static PyCFunction m_rlock_acquire, m_rlock_release, m_rlock_is_owned, m_rlock_recursion_count,
    m_rlock_release_save, m_rlock_acquire_restore;
static int f_lock_acquire, f_rlock_acquire, f_rlock_acquire_restore;

/* Every live Core object (a doubly linked list under the GIL). */
static CoreObject *g_head;
static Py_ssize_t g_live;
static unsigned long long g_serial;

/* -- errors ----------------------------------------------------------------------------------- */

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
        PyErr_Restore(g_deferred_type, g_deferred_value, g_deferred_tb);
        g_deferred_type = g_deferred_value = g_deferred_tb = NULL;
        PyErr_Clear();
    }
}

/* -- the real lock's methods ---------------------------------------------------------------- */

/* Call a METH_NOARGS / METH_VARARGS(|KEYWORDS) / METH_O method of the real lock directly. */
static PyObject *
call_noargs(PyCFunction meth, PyObject *obj)
{
    return meth(obj, NULL);
}

static PyObject *
call_varargs(PyCFunction meth, int flags, PyObject *obj, PyObject *args)
{
    if (flags & METH_KEYWORDS) {
        return ((PyCFunctionWithKeywords)(void (*)(void))meth)(obj, args, NULL);
    }
    if (flags & METH_FASTCALL) {
        return ((_PyCFunctionFast)(void (*)(void))meth)(obj, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args));
    }
    if (flags & METH_O) {
        return meth(obj, PyTuple_GET_ITEM(args, 0));
    }
    return meth(obj, args);
}

static PyCFunction
method_of(PyObject *type, const char *name, int *flags)
{
    PyObject *descr = PyDict_GetItemString(((PyTypeObject *)type)->tp_dict, name); /* borrowed */
    if (descr == NULL || !PyObject_TypeCheck(descr, &PyMethodDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "conctools._speedups: no C method %s", name);
        return NULL;
    }
    PyMethodDef *def = ((PyMethodDescrObject *)descr)->d_method;
    if (flags != NULL) {
        *flags = def->ml_flags;
    }
    else if (!(def->ml_flags & METH_NOARGS)) {
        PyErr_Format(PyExc_TypeError, "conctools._speedups: %s takes arguments", name);
        return NULL;
    }
    return def->ml_meth;
}

/* 1 acquired, 0 not, -1 error (from the real lock: propagate). */
static int
try_acquire(CoreObject *self)
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return -1;
    }
    PyObject *r = self->rlock ? call_varargs(m_rlock_acquire, f_rlock_acquire, self->lock, g_false_args)
                              : call_varargs(m_lock_acquire, f_lock_acquire, self->lock, g_false_args);
    if (r == NULL) {
        return -1;
    }
    int got = r == Py_True;
    Py_DECREF(r);
    return got;
}

static PyObject *
release_real(CoreObject *self)
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return NULL;
    }
    return call_noargs(self->rlock ? m_rlock_release : m_lock_release, self->lock);
}

/* 1 if this thread owns the RLock, 0 if not, -1 on error. */
static int
rlock_owned(CoreObject *self)
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return -1;
    }
    PyObject *r = call_noargs(m_rlock_is_owned, self->lock);
    if (r == NULL) {
        return -1;
    }
    int owned = r == Py_True;
    Py_DECREF(r);
    return owned;
}

/* -- references dropped inside a critical section ----------------------------------------- */

/* Replace *field by value (a new reference is taken). The old reference may be the last one, and
 * releasing it could run a finalizer: it waits in a trash slot until the next acquisition starts
 * (or the lock dies). */
static void
store_ref(CoreObject *self, PyObject **field, PyObject *value)
{
    PyObject *old = *field;
    if (old == value) {
        return;
    }
    Py_XINCREF(value);
    *field = value;
    if (old == NULL) {
        return;
    }
    for (int i = 0; i < 3; i++) {
        if (self->trash[i] == NULL) {
            self->trash[i] = old;
            return;
        }
    }
    /* Every slot taken (several acquisitions prepared before any released its trash): the shared
     * overflow list. Appending only grows a plain array: no garbage collection can start. */
    if (g_trash_list == NULL || PyList_Append(g_trash_list, old) < 0) {
        PyErr_Clear();
        self->trash[0] = old; /* cannot happen in practice; leak a reference rather than free it here */
        return;
    }
    Py_DECREF(old); /* the list keeps it */
}

/* Before an acquisition (outside any critical section of this lock): release the trash. */
static void
empty_trash(CoreObject *self)
{
    for (int i = 0; i < 3; i++) {
        Py_CLEAR(self->trash[i]);
    }
    if (g_trash_list != NULL && PyList_GET_SIZE(g_trash_list) > 0) {
        PyList_SetSlice(g_trash_list, 0, PyList_GET_SIZE(g_trash_list), NULL);
        PyErr_Clear();
    }
}

/* -- clocks and histograms ------------------------------------------------------------------ */

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

/* recorder.bucket_of(): the same log-linear buckets (a test compares the two over many values). */
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
 * ints and a dict entry only (no garbage collection can start, no Python code runs). Anything else
 * (a subclass, another object) goes through its own add(). */
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
    if (!t0) {
        return;
    }
    self->t0 = 0;
    if (self->hold == NULL || self->hold == Py_None) {
        return;
    }
    long long d = mono_ns() - t0;
    if (g_hist_type != NULL && Py_IS_TYPE(self->hold, (PyTypeObject *)g_hist_type)) {
        hist_add_fields(self->hold, d);
    }
    else {
        /* Not conctools' own Histogram (a test's stand-in): its add() is Python code. */
        PyObject *o = PyLong_FromLongLong(d);
        if (o != NULL) {
            PyObject *r = PyObject_CallMethodOneArg(self->hold, s_add, o);
            Py_DECREF(o);
            Py_XDECREF(r);
        }
    }
    swallow();
}

/* Set when bookkeeping before an acquire allocated objects (or ran Python code): a garbage
 * collection may then be due, and must run before the acquire (see safe_point()). */
static int g_allocated;

/* -- frames ------------------------------------------------------------------------------------ */

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

/* Per code object: is its file one a site skips (bit 0), one a creation site skips (bit 1), or
 * conctools' own (bit 2)? A direct-mapped cache that holds its code objects, so a cached pointer
 * always means the same code. */
#define CODE_CACHE 512
static struct {
    PyObject *code;
    int bits;
} g_code_cache[CODE_CACHE];

static int
code_bits(PyCodeObject *code)
{
    size_t h = ((uintptr_t)code >> 4) & (CODE_CACHE - 1);
    if (g_code_cache[h].code == (PyObject *)code) {
        return g_code_cache[h].bits;
    }
    PyObject *fn = code->co_filename;
    int bits = 0;
    if (skipped_file_in(fn, g_skip_prefixes)) bits |= 1;
    if (skipped_file_in(fn, g_internal)) bits |= 2;
    if (g_pkg_dir != NULL && PyUnicode_Check(fn) && PyUnicode_Tailmatch(fn, g_pkg_dir, 0, PY_SSIZE_T_MAX, -1) == 1 &&
        !(g_keep_prefix != NULL && PyUnicode_Tailmatch(fn, g_keep_prefix, 0, PY_SSIZE_T_MAX, -1) == 1)) {
        bits |= 4;
    }
    PyErr_Clear();
    Py_INCREF(code);
    Py_XSETREF(g_code_cache[h].code, (PyObject *)code);
    g_code_cache[h].bits = bits;
    return bits;
}

#define BIT_SITE_SKIP 1
#define BIT_CREATION_SKIP 2
#define BIT_OWN 4

/* A cursor over the calling thread's Python frames, innermost first, without frame objects. */
typedef struct {
#if CT_INTERNAL_FRAMES
    _PyInterpreterFrame *f;
#else
    PyFrameObject *f; /* strong reference */
#endif
} FrameCursor;

#if CT_INTERNAL_FRAMES
static _PyInterpreterFrame *
skip_incomplete(_PyInterpreterFrame *f)
{
    while (f != NULL) {
#if PY_VERSION_HEX >= 0x030C0000
        if (f->owner == FRAME_OWNED_BY_CSTACK) {
            f = f->previous;
            continue;
        }
#endif
        if (_PyFrame_IsIncomplete(f)) {
            f = f->previous;
            continue;
        }
        return f;
    }
    return NULL;
}

static PyCodeObject *
frame_code(_PyInterpreterFrame *f)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyCode_Check(f->f_executable) ? (PyCodeObject *)f->f_executable : NULL;
#else
    return f->f_code;
#endif
}
#endif

static void
cursor_start(FrameCursor *c)
{
#if CT_INTERNAL_FRAMES
    PyThreadState *ts = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    c->f = skip_incomplete(ts->current_frame);
#else
    c->f = skip_incomplete(ts->cframe->current_frame);
#endif
#else
    PyFrameObject *f = PyEval_GetFrame();
    c->f = f ? (PyFrameObject *)Py_NewRef(f) : NULL;
#endif
}

/* The current frame's code (borrowed) and offset; 0 at the end of the stack. */
static int
cursor_get(FrameCursor *c, PyCodeObject **code, int *lasti)
{
#if CT_INTERNAL_FRAMES
    while (c->f != NULL) {
        PyCodeObject *co = frame_code(c->f);
        if (co != NULL) {
            *code = co;
            *lasti = _PyInterpreterFrame_LASTI(c->f) * (int)sizeof(_Py_CODEUNIT);
            return 1;
        }
        c->f = skip_incomplete(c->f->previous);
    }
    return 0;
#else
    if (c->f == NULL) return 0;
    PyCodeObject *co = PyFrame_GetCode(c->f);
    *code = co;
    Py_DECREF(co); /* the frame keeps it alive */
    *lasti = PyFrame_GetLasti(c->f);
    return 1;
#endif
}

static void
cursor_next(FrameCursor *c)
{
#if CT_INTERNAL_FRAMES
    if (c->f != NULL) c->f = skip_incomplete(c->f->previous);
#else
    if (c->f != NULL) {
        PyFrameObject *back = PyFrame_GetBack(c->f);
        Py_SETREF(c->f, back);
    }
#endif
}

static void
cursor_end(FrameCursor *c)
{
#if !CT_INTERNAL_FRAMES
    Py_CLEAR(c->f);
#else
    c->f = NULL;
#endif
}

/* The first frame whose code has none of `mask` bits: its code (borrowed) and offset; 0 if none. */
static int
first_frame_without(int mask, PyCodeObject **code, int *lasti)
{
    FrameCursor c;
    cursor_start(&c);
    PyCodeObject *co;
    int off;
    int found = 0;
    while (cursor_get(&c, &co, &off)) {
        if (!(code_bits(co) & mask)) {
            *code = co;
            *lasti = off;
            found = 1;
            break;
        }
        cursor_next(&c);
    }
    cursor_end(&c);
    return found;
}

/* Where the caller took the lock: (code, offset) of the first frame outside conctools and the
 * stdlib modules sites skip, cached per lock. New reference, never NULL. Allocates: call it before
 * acquiring, never inside the section. */
static PyObject *
caller_site(CoreObject *self)
{
    PyCodeObject *code;
    int lasti;
    if (!first_frame_without(BIT_SITE_SKIP, &code, &lasti)) {
        return Py_NewRef(g_question);
    }
    if (self->site != NULL && self->site_code == (void *)code && self->site_lasti == lasti) {
        return Py_NewRef(self->site);
    }
    g_allocated = 1;
    PyObject *offset = PyLong_FromLong(lasti);
    PyObject *site = offset ? PyTuple_Pack(2, (PyObject *)code, offset) : NULL;
    Py_XDECREF(offset);
    if (site == NULL) {
        swallow();
        return Py_NewRef(g_question);
    }
    Py_XSETREF(self->site, Py_NewRef(site));
    self->site_code = (void *)code;
    self->site_lasti = lasti;
    return site;
}

/* -- who is running ------------------------------------------------------------------------------- */

typedef struct {
    unsigned long long tid;
    unsigned long ident;
    PyObject *thread; /* borrowed (cached), may be NULL */
    PyObject *task;   /* new reference, may be NULL */
    PyObject *site;   /* new reference (ordered locks only) */
    PyObject *held;   /* new reference (ordered locks only) */
    PyObject *entry;  /* new reference (ordered locks only) */
} Me;

static PyObject *g_key_thread; /* the thread-state dict key of a thread's threading.Thread */
static unsigned long long g_me_tid;
static PyObject *g_me_thread;  /* strong */

static unsigned long long
current_tid(void)
{
    return (unsigned long long)CT_TSTATE()->id;
}

/* The calling thread's threading.Thread (borrowed), looked up once per thread (in its thread-state
 * dict, which dies with the thread) and cached for the last thread that asked. */
static PyObject *
current_thread_object(unsigned long long tid, unsigned long ident)
{
    if (g_me_thread != NULL && g_me_tid == tid) {
        return g_me_thread;
    }
    PyObject *tsdict = PyThreadState_GetDict(); /* borrowed */
    PyObject *thread = NULL;
    if (tsdict != NULL) {
        thread = PyDict_GetItemWithError(tsdict, g_key_thread); /* borrowed */
        if (thread == NULL && PyErr_Occurred()) PyErr_Clear();
    }
    if (thread == NULL && g_active != NULL) {
        g_allocated = 1;
        PyObject *key = PyLong_FromUnsignedLong(ident);
        if (key != NULL) {
            thread = PyDict_GetItemWithError(g_active, key); /* borrowed */
            Py_DECREF(key);
        }
        if (thread == NULL) {
            PyErr_Clear();
            return NULL; /* not a threading.Thread (yet): not cached, looked up again next time */
        }
        if (tsdict != NULL && PyDict_SetItem(tsdict, g_key_thread, thread) < 0) PyErr_Clear();
    }
    Py_INCREF(thread);
    Py_XSETREF(g_me_thread, thread);
    g_me_tid = tid;
    return thread;
}

static PyCFunction g_running_loop_meth; /* asyncio._get_running_loop's C function, and its self */
static PyObject *g_running_loop_self;

/* The loop running in this thread (new reference), or NULL. */
static PyObject *
running_loop(void)
{
    PyObject *loop;
#ifdef CT_TSTATE_LOOP
    loop = ((_PyThreadStateImpl *)CT_TSTATE())->asyncio_running_loop;
    if (loop == NULL || loop == Py_None) return NULL;
    return Py_NewRef(loop);
#else
    if (g_running_loop_meth != NULL) {
        loop = g_running_loop_meth(g_running_loop_self, NULL);
    }
    else if (g_running_loop != NULL) {
        loop = PyObject_CallNoArgs(g_running_loop);
    }
    else {
        return NULL;
    }
    if (loop == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (loop == Py_None) {
        Py_DECREF(loop);
        return NULL;
    }
    return loop;
#endif
}

#ifndef CT_TSTATE_LOOP
/* asyncio (3.11, 3.12) keeps a thread's running loop in the thread-state dict, and looks it up
 * there for a thread that has none on every call. Ours remembers "no loop" for the last thread that
 * asked, until that dict changes (its version tag moves on every change). */
static unsigned long long g_noloop_tid;
static PyObject *g_noloop_dict; /* identity only */
static uint64_t g_noloop_version;

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
static uint64_t
dict_version(PyObject *d)
{
    return ((PyDictObject *)d)->ma_version_tag;
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

/* The asyncio task running in this thread (new reference) or NULL: cheap where no loop runs. */
static PyObject *
current_task_of_thread(unsigned long long tid)
{
#ifndef CT_TSTATE_LOOP
    PyObject *tsdict = CT_TSTATE()->dict; /* borrowed; NULL until someone made it */
    if (tsdict != NULL && g_noloop_tid == tid && g_noloop_dict == tsdict && dict_version(tsdict) == g_noloop_version) {
        return NULL;
    }
#endif
    PyObject *loop = running_loop();
    if (loop == NULL) {
#ifndef CT_TSTATE_LOOP
        if (tsdict != NULL && PyDict_Check(tsdict)) {
            g_noloop_tid = tid;
            g_noloop_dict = tsdict;
            g_noloop_version = dict_version(tsdict);
        }
#else
        (void)tid;
#endif
        return NULL;
    }
    PyObject *task = PyObject_CallOneArg(g_current_task, loop);
    Py_DECREF(loop);
    if (task == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (task == Py_None) {
        Py_DECREF(task);
        return NULL;
    }
    return task;
}

static void
me_release(Me *me)
{
    Py_CLEAR(me->task);
    Py_CLEAR(me->site);
    Py_CLEAR(me->held);
    Py_CLEAR(me->entry);
}

/* -- lock order ----------------------------------------------------------------------------------- */

/* The calling thread's held-locks stack (lockorder._local.stack, a new reference). */
static uint64_t g_held_tid;
static PyObject *g_held_list;

static PyObject *
thread_held(unsigned long long tid)
{
    if (g_held_list != NULL && g_held_tid == tid) {
        return Py_NewRef(g_held_list);
    }
    if (g_local == NULL) return NULL;
    g_allocated = 1;
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

static long long
order_generation(void)
{
    if (g_generation == NULL || !PyList_Check(g_generation) || PyList_GET_SIZE(g_generation) < 1) return -1;
    long long g = PyLong_AsLongLong(PyList_GET_ITEM(g_generation, 0));
    if (g == -1 && PyErr_Occurred()) PyErr_Clear();
    return g;
}

/* The held-stack entry for this lock taken at site: (weakref, class key, name, serial, site),
 * cached per lock while the site does not change (new reference). */
static PyObject *
entry_for(CoreObject *self, PyObject *site)
{
    if (self->entry != NULL && PyTuple_GET_ITEM(self->entry, 4) == site) {
        return Py_NewRef(self->entry);
    }
    PyObject *wref = NULL, *key = NULL, *name = NULL, *serial = NULL, *entry = NULL;
    if (self->stats == NULL) return NULL;
    g_allocated = 1;
    wref = self->entry != NULL ? Py_NewRef(PyTuple_GET_ITEM(self->entry, 0)) : PyWeakref_NewRef((PyObject *)self, NULL);
    if (wref == NULL) goto done;
    key = PyObject_GetAttr(self->stats, s_key);
    if (key == NULL) goto done;
    name = Py_NewRef(self->name != NULL ? self->name : self->created);
    serial = PyLong_FromUnsignedLongLong(self->serial);
    if (serial == NULL) goto done;
    entry = PyTuple_Pack(5, wref, key, name, serial, site);
    if (entry != NULL) {
        Py_XSETREF(self->entry, Py_NewRef(entry));
    }
done:
    Py_XDECREF(wref);
    Py_XDECREF(key);
    Py_XDECREF(name);
    Py_XDECREF(serial);
    return entry;
}

static int
known_from(CoreObject *self, PyObject *h)
{
    for (int i = 0; i < 4; i++) {
        if (self->known[i] == h) return 1;
    }
    return 0;
}

static void
remember_known(CoreObject *self, PyObject *h)
{
    for (int i = 0; i < 4; i++) {
        if (self->known[i] == NULL) {
            self->known[i] = Py_NewRef(h);
            return;
        }
    }
    Py_SETREF(self->known[3], Py_NewRef(h));
}

/* 1 when every edge held -> entry is already in the graph between live locks of different classes
 * (the steady state: nothing to add); 0 when lockorder.check must look. */
static int
edges_known(CoreObject *self, PyObject *held, PyObject *entry)
{
    if (g_edges == NULL || !PyDict_Check(g_edges) || !PyList_Check(held)) {
        return 0;
    }
    long long gen = order_generation();
    if (gen != self->known_gen) {
        for (int i = 0; i < 4; i++) Py_CLEAR(self->known[i]);
        self->known_gen = gen;
    }
    PyObject *to_key = PyTuple_GET_ITEM(entry, 1);
    Py_ssize_t n = PyList_GET_SIZE(held);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(held, i);
        if (known_from(self, h)) {
            continue;
        }
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) < 2 || !PyWeakref_CheckRef(PyTuple_GET_ITEM(h, 0))) {
            return 0;
        }
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *other = NULL;
        if (PyWeakref_GetRef(PyTuple_GET_ITEM(h, 0), &other) != 1) {
            PyErr_Clear();
            return 0; /* dropped while held: check() prunes it */
        }
        Py_DECREF(other); /* only its identity is needed */
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
        g_allocated = 1;
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
        remember_known(self, h);
    }
    return 1;
}

/* A Python call that runs a garbage collection the bookkeeping above scheduled (3.12+ runs it at
 * the next eval-breaker check, which would otherwise come right after the acquire). */
static void
safe_point(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (g_safe_point != NULL) {
        PyObject *r = PyObject_CallNoArgs(g_safe_point);
        Py_XDECREF(r);
        swallow();
    }
#endif
}

/* Before acquiring: who we are, and for an ordered lock not re-entered, where and with what held,
 * checking the order now (the stack is the same as after the acquire). */
static void
prepare(CoreObject *self, Me *me, int reentry)
{
    empty_trash(self);
    PyThreadState *ts = CT_TSTATE();
    if (!me->tid) me->tid = (unsigned long long)ts->id;
    me->ident = ts->thread_id;
    me->thread = current_thread_object(me->tid, me->ident);
    me->task = current_task_of_thread(me->tid);
    me->site = me->held = me->entry = NULL;
    if (!self->ordered || reentry) {
        if (g_allocated) {
            g_allocated = 0;
            safe_point();
        }
        return;
    }
    me->site = caller_site(self);
    me->held = thread_held(me->tid);
    if (me->held == NULL || !PyList_Check(me->held)) {
        Py_CLEAR(me->held);
        return;
    }
    me->entry = entry_for(self, me->site);
    if (me->entry == NULL) {
        swallow();
        Py_CLEAR(me->held);
        return;
    }
    if (PyList_GET_SIZE(me->held) > 0 && !edges_known(self, me->held, me->entry)) {
        g_allocated = 1;
        PyObject *r = PyObject_CallFunctionObjArgs(g_check, me->held, me->entry, NULL);
        Py_XDECREF(r);
        swallow();
    }
    if (g_allocated) {
        g_allocated = 0;
        safe_point();
    }
}

/* Pop this lock off the held stack it was pushed on (no Python code, no allocation). */
static void
order_pop(CoreObject *self)
{
    PyObject *held = self->held;
    if (held == NULL) {
        return;
    }
    if (PyList_Check(held) && self->entry != NULL) {
        PyObject *wref = PyTuple_GET_ITEM(self->entry, 0);
        for (Py_ssize_t i = PyList_GET_SIZE(held) - 1; i >= 0; i--) {
            PyObject *h = PyList_GET_ITEM(held, i);
            if (PyTuple_Check(h) && PyTuple_GET_SIZE(h) > 0 && PyTuple_GET_ITEM(h, 0) == wref) {
                /* Deleting the item frees at most a tuple of ours (its parts live on). */
                if (PyList_SetSlice(held, i, i + 1, NULL) < 0) PyErr_Clear();
                break;
            }
        }
    }
    /* self->held's reference to the list: dropped outside the section */
    store_ref(self, &self->held, NULL);
}

/* -- taking and releasing (inside the critical section: stores only) ------------------------------ */

/* The lock was just taken by `me` (outermost level for an RLock). */
static void
took(CoreObject *self, Me *me, int contended, PyObject *wait_site)
{
    if (self->owner_tid != me->tid || self->owner_ident != me->ident) {
        self->owner_tid = me->tid;
        self->owner_ident = me->ident;
    }
    store_ref(self, &self->othread, me->thread);
    store_ref(self, &self->otask, me->task);
    self->n++;
    if (self->rlock) self->depth = 1;
    long long t = 0;
    if (self->hold != NULL && self->hold != Py_None && (contended || !(self->n & g_mask))) {
        t = mono_ns();
    }
    self->osince = self->t0 = t;
    if (me->entry != NULL && me->held != NULL) {
        store_ref(self, &self->osite, me->site);
        if (PyList_Append(me->held, me->entry) < 0) {
            PyErr_Clear();
        }
        else {
            store_ref(self, &self->held, me->held);
        }
    }
    else {
        store_ref(self, &self->osite, wait_site);
    }
}

/* About to release (outermost level): the hold time and the held stack. */
static void
releasing(CoreObject *self)
{
    if (self->held != NULL) {
        order_pop(self);
    }
    end_hold(self);
}

/* -- waits ------------------------------------------------------------------------------------------ */

/* Who holds the lock now (called with the GIL held right after a failed try: exact), as
 * (ident, thread key, thread, task, site, since) for locks.py, or None. */
static PyObject *
holder_snapshot(CoreObject *self)
{
    if (!self->owner_ident) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(kKOOOL)", self->owner_ident, self->owner_tid, self->othread ? self->othread : Py_None,
                         self->otask ? self->otask : Py_None, self->osite ? self->osite : Py_None, self->osince);
}

/* The wait has ended: stores into the wait record, out of the registry, into the pending queue
 * (its statistics and event are recorded later, outside any critical section). */
static void
wait_end(CoreObject *self, PyObject *wait, int acquired)
{
    if (wait == NULL || wait == Py_None) {
        return;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    long long now = mono_ns();
    PyObject *end = PyLong_FromLongLong(now);
    if (end != NULL) {
        if (PyObject_SetAttr(wait, s_end_ns, end) < 0) PyErr_Clear();
        if (g_progress != NULL && PyList_Check(g_progress) && PyList_GET_SIZE(g_progress) > 0) {
            PyList_SetItem(g_progress, 0, Py_NewRef(end)); /* the previous stamp is an int */
        }
        Py_DECREF(end);
    }
    if (PyObject_SetAttr(wait, s_acquired, acquired ? Py_True : Py_False) < 0) PyErr_Clear();
    PyObject *key = PyObject_GetAttr(wait, s_key);
    if (key != NULL) {
        if (self->waiters != NULL && PyDict_Check(self->waiters) && PyDict_DelItem(self->waiters, key) < 0)
            PyErr_Clear();
        if (g_waiting != NULL && PyDict_DelItem(g_waiting, key) < 0) PyErr_Clear();
        Py_DECREF(key);
    }
    PyErr_Clear();
    if (g_pending != NULL) {
        PyObject *r = PyObject_CallMethodOneArg(g_pending, s_append, wait);
        Py_XDECREF(r);
        PyErr_Clear();
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

static PyObject *g_true_minus_one; /* (True, -1) */

/* The slow path: prepare the wait (Python, before blocking), block in the real lock, then record
 * the end with stores only. restore: the state for an RLock's _acquire_restore, else NULL. */
static PyObject *
contended(CoreObject *self, Me *me, double timeout, PyObject *restore)
{
    PyObject *holder = holder_snapshot(self);
    if (holder == NULL) {
        swallow();
        holder = Py_NewRef(Py_None);
    }
    PyObject *wait = NULL;
    if (g_wait_begin != NULL) {
        PyFrameObject *frame = PyEval_GetFrame();
        PyObject *to = timeout < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(timeout);
        if (to != NULL) {
            wait = PyObject_CallFunctionObjArgs(g_wait_begin, (PyObject *)self, frame ? (PyObject *)frame : Py_None,
                                                to, holder, NULL);
            Py_DECREF(to);
        }
        if (wait == NULL) {
            swallow();
        }
    }
    Py_DECREF(holder);
    if (self->hold == NULL || self->hold == Py_None) {
        /* The first contention: this lock times its holds from now on (made before the wait: the
         * histogram's constructor is Python code). */
        PyObject *h = g_hist_type ? PyObject_CallNoArgs(g_hist_type) : NULL;
        if (h != NULL) {
            store_ref(self, &self->hold, h);
            Py_DECREF(h);
        }
        swallow();
    }
    /* The acquire's arguments are made before the safe point too: nothing allocates after it. */
    PyObject *args = restore != NULL ? PyTuple_Pack(1, restore)
                     : timeout < 0   ? Py_NewRef(g_true_minus_one)
                                     : Py_BuildValue("(Od)", Py_True, timeout);
    g_allocated = 0;
    safe_point();
    PyObject *r = NULL;
    if (args != NULL) {
        if (restore != NULL) {
            r = call_varargs(m_rlock_acquire_restore, f_rlock_acquire_restore, self->lock, args);
            if (r != NULL) {
                Py_SETREF(r, Py_NewRef(Py_True));
            }
        }
        else {
            r = self->rlock ? call_varargs(m_rlock_acquire, f_rlock_acquire, self->lock, args)
                            : call_varargs(m_lock_acquire, f_lock_acquire, self->lock, args);
        }
        Py_DECREF(args); /* a tuple of ours: freeing it runs nothing */
    }
    if (r == NULL) { /* the real lock raised (a signal handler's exception): not acquired */
        wait_end(self, wait, 0);
        Py_XDECREF(wait);
        return NULL;
    }
    int got = r == Py_True;
    Py_DECREF(r);
    if (got) {
        PyObject *site = wait != NULL && wait != Py_None ? PyObject_GetAttr(wait, s_site) : NULL;
        PyErr_Clear();
        took(self, me, 1, site);
        Py_XDECREF(site); /* the wait record keeps it alive: not the last reference */
    }
    wait_end(self, wait, got);
    Py_XDECREF(wait);
    return PyBool_FromLong(got);
}

/* -- the methods locks.py installs ----------------------------------------------------------- */

static PyObject *
lock_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    Me me = {0};
    prepare(self, &me, 0);
    int got = try_acquire(self);
    PyObject *r;
    if (got < 0) {
        r = NULL;
    }
    else if (got) {
        took(self, &me, 0, NULL);
        r = Py_NewRef(Py_True);
    }
    else {
        r = contended(self, &me, -1.0, NULL);
    }
    me_release(&me);
    return r;
}

static PyObject *
lock_exit(CoreObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    releasing(self);
    PyObject *r = release_real(self);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
lock_release(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return lock_exit(self, NULL, 0);
}

/* Re-entry by the owner: immediate; only counted. -1 error, 0 not a re-entry, 1 done. */
static int
rlock_reenter(CoreObject *self, Me *me)
{
    if (self->depth <= 0 || self->owner_tid != me->tid) {
        return 0;
    }
    int got = try_acquire(self);
    if (got <= 0) {
        return got;
    }
    self->depth++;
    self->n++;
    return 1;
}

static PyObject *
rlock_enter(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    Me me = {0};
    me.tid = current_tid();
    int re = rlock_reenter(self, &me);
    if (re < 0) return NULL;
    if (re > 0) Py_RETURN_TRUE;
    prepare(self, &me, 0);
    int got = try_acquire(self);
    PyObject *r;
    if (got < 0) {
        r = NULL;
    }
    else if (got) {
        took(self, &me, 0, NULL);
        r = Py_NewRef(Py_True);
    }
    else {
        r = contended(self, &me, -1.0, NULL);
    }
    me_release(&me);
    return r;
}

static PyObject *
rlock_exit(CoreObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    int mine = self->depth > 0 && self->owner_tid == current_tid();
    if (mine && self->depth == 1) {
        releasing(self);
    }
    PyObject *r = release_real(self);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    if (mine) self->depth--;
    Py_RETURN_NONE;
}

static PyObject *
rlock_release(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return rlock_exit(self, NULL, 0);
}

/* acquire(blocking=True, timeout=-1): arguments are validated by the real lock's own code (a probe
 * on a fresh lock: the same errors, word for word), then the same paths as __enter__. */
static PyObject *
acquire_common(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs == 0 && nkw == 0) {
        return self->rlock ? rlock_enter(self, NULL) : lock_enter(self, NULL);
    }
    PyObject *blocking_obj = NULL, *timeout_obj = NULL;
    int bad = nargs > 2;
    if (nargs >= 1) blocking_obj = args[0];
    if (nargs >= 2) timeout_obj = args[1];
    for (Py_ssize_t i = 0; i < nkw && !bad; i++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(kw, "blocking") == 0 && blocking_obj == NULL) {
            blocking_obj = args[nargs + i];
        }
        else if (PyUnicode_CompareWithASCIIString(kw, "timeout") == 0 && timeout_obj == NULL) {
            timeout_obj = args[nargs + i];
        }
        else {
            bad = 1;
        }
    }
    if (bad || timeout_obj != NULL) {
        /* Let the real implementation raise what it raises (a fresh lock is free: no wait). */
        PyObject *probe = PyObject_CallNoArgs(self->rlock ? g_rlock_type : g_allocate_lock);
        if (probe == NULL) return NULL;
        PyObject *meth = PyObject_GetAttr(probe, s_acquire);
        PyObject *r = meth ? PyObject_Vectorcall(meth, args, (size_t)nargs, kwnames) : NULL;
        Py_XDECREF(meth);
        if (r == NULL) {
            Py_DECREF(probe);
            return NULL;
        }
        int probed = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (probed > 0) {
            PyObject *rr = PyObject_CallMethodNoArgs(probe, s_release);
            Py_XDECREF(rr);
            PyErr_Clear();
        }
        Py_DECREF(probe);
        if (bad) { /* accepted by the real lock: cannot happen, but never guess */
            PyErr_SetString(PyExc_TypeError, "acquire() got unexpected arguments");
            return NULL;
        }
    }
    int blocking = blocking_obj == NULL ? 1 : PyObject_IsTrue(blocking_obj);
    if (blocking < 0) return NULL;
    double timeout = -1.0;
    if (timeout_obj != NULL) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1.0 && PyErr_Occurred()) return NULL;
    }
    if (blocking && timeout == -1.0) {
        return self->rlock ? rlock_enter(self, NULL) : lock_enter(self, NULL);
    }
    Me me = {0};
    me.tid = current_tid();
    if (self->rlock) {
        int re = rlock_reenter(self, &me);
        if (re < 0) return NULL;
        if (re > 0) Py_RETURN_TRUE;
    }
    prepare(self, &me, 0);
    int got = try_acquire(self);
    PyObject *res;
    if (got < 0) {
        res = NULL;
    }
    else if (got) {
        took(self, &me, 0, NULL);
        res = Py_NewRef(Py_True);
    }
    else if (!blocking || timeout == 0.0) {
        res = Py_NewRef(Py_False); /* a poll: not a wait */
    }
    else {
        res = contended(self, &me, timeout, NULL);
    }
    me_release(&me);
    return res;
}

static PyObject *
core_acquire(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return acquire_common(self, args, nargs, kwnames);
}

static PyObject *
core_locked(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return NULL;
    }
    return call_noargs(m_lock_locked, self->lock);
}

static PyObject *
rlock_is_owned(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return NULL;
    }
    return call_noargs(m_rlock_is_owned, self->lock);
}

static PyObject *
rlock_recursion_count(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return NULL;
    }
    return call_noargs(m_rlock_recursion_count, self->lock);
}

/* Condition.wait()'s release of every level: the hold ends, the lock leaves the held stack. */
static PyObject *
rlock_release_save(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    int owned = rlock_owned(self);
    if (owned < 0) return NULL;
    if (!owned) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    releasing(self);
    PyObject *state = call_noargs(m_rlock_release_save, self->lock);
    if (state != NULL) self->depth = 0;
    return state;
}

/* Condition.wait()'s re-acquisition: an acquisition like any other (counted once, timed, ordered,
 * a wait when contended), restoring the saved depth. */
static PyObject *
rlock_acquire_restore(CoreObject *self, PyObject *state)
{
    if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) < 1) {
        /* Not the state _release_save returned: the real lock says what is wrong with it. */
        PyObject *args = PyTuple_Pack(1, state);
        PyObject *r = args ? call_varargs(m_rlock_acquire_restore, f_rlock_acquire_restore, self->lock, args) : NULL;
        Py_XDECREF(args);
        return r;
    }
    long count = PyLong_AsLong(PyTuple_GET_ITEM(state, 0));
    if (count == -1 && PyErr_Occurred()) return NULL;
    Me me = {0};
    prepare(self, &me, 0);
    int got = try_acquire(self);
    PyObject *res = NULL;
    if (got > 0) {
        took(self, &me, 0, NULL);
        for (long i = 1; i < count; i++) { /* re-entries: immediate, and not acquisitions of their own */
            PyObject *r = call_varargs(m_rlock_acquire, f_rlock_acquire, self->lock, g_false_args);
            Py_XDECREF(r);
            if (r == NULL) swallow();
        }
        self->depth = count;
        res = Py_NewRef(Py_None);
    }
    else if (got == 0) {
        PyObject *r = contended(self, &me, -1.0, state);
        if (r != NULL) {
            Py_DECREF(r);
            self->depth = count;
            res = Py_NewRef(Py_None);
        }
    }
    me_release(&me);
    return res;
}

/* -- creation, the registry of live locks, death ------------------------------------------------ */

static int
is_on(PyObject *list)
{
    if (list == NULL || !PyList_Check(list) || PyList_GET_SIZE(list) < 1) return 0;
    int r = PyObject_IsTrue(PyList_GET_ITEM(list, 0));
    if (r < 0) PyErr_Clear();
    return r > 0;
}

/* Creation sites, cached by (code of the creating frame, code and offset of the user frame it
 * serves, kind, name): what locks._register computed for the first lock made there. Holds its
 * code objects, so a cached pointer always means the same code. */
#define SITE_CACHE 1024
typedef struct {
    PyObject *inner, *user, *kind, *name; /* strong; name may be Py_None */
    int lasti;
    PyObject *created, *stats;            /* strong */
    PyObject *epoch;                      /* the epoch object stats.epoch was last set to (identity) */
} SiteEntry;
static SiteEntry g_sites[SITE_CACHE];

static void
clear_site_cache(void)
{
    for (int i = 0; i < SITE_CACHE; i++) {
        Py_CLEAR(g_sites[i].inner);
        Py_CLEAR(g_sites[i].user);
        Py_CLEAR(g_sites[i].kind);
        Py_CLEAR(g_sites[i].name);
        Py_CLEAR(g_sites[i].created);
        Py_CLEAR(g_sites[i].stats);
        Py_CLEAR(g_sites[i].epoch);
    }
    for (int i = 0; i < CODE_CACHE; i++) {
        Py_CLEAR(g_code_cache[i].code);
    }
}

/* The creation frames: inner = the first frame outside conctools, user = the first frame outside
 * conctools and the stdlib modules a creation site skips. 0 when there is no such frame. */
static int
creation_frames(PyCodeObject **inner, PyCodeObject **user, int *lasti)
{
    FrameCursor c;
    cursor_start(&c);
    PyCodeObject *co;
    int off;
    int found = 0;
    *inner = NULL;
    while (cursor_get(&c, &co, &off)) {
        int bits = code_bits(co);
        if (*inner == NULL && !(bits & BIT_OWN)) {
            *inner = co;
        }
        if (*inner != NULL && !(bits & BIT_CREATION_SKIP)) {
            *user = co;
            *lasti = off;
            found = 1;
            break;
        }
        cursor_next(&c);
    }
    cursor_end(&c);
    return found;
}

static SiteEntry *
site_slot(PyCodeObject *inner, PyCodeObject *user, int lasti, PyObject *kind, PyObject *name)
{
    uintptr_t h = ((uintptr_t)inner >> 4) * 31u + ((uintptr_t)user >> 4) * 17u + (uintptr_t)lasti * 7u +
                  ((uintptr_t)kind >> 4) + ((uintptr_t)name >> 4);
    return &g_sites[h & (SITE_CACHE - 1)];
}

static int
published(void)
{
    return g_current != NULL && g_published != NULL && PyList_GET_SIZE(g_current) > 0 &&
           PyList_GET_SIZE(g_published) > 0 && PyList_GET_ITEM(g_published, 0) == PyList_GET_ITEM(g_current, 0);
}

static void
stamp_epoch(SiteEntry *e)
{
    if (g_epoch == NULL || !PyList_Check(g_epoch) || PyList_GET_SIZE(g_epoch) < 1) return;
    PyObject *epoch = PyList_GET_ITEM(g_epoch, 0);
    if (e->epoch == epoch) return;
    if (PyObject_SetAttr(e->stats, s_epoch, epoch) < 0) {
        PyErr_Clear();
        return;
    }
    Py_XSETREF(e->epoch, Py_NewRef(epoch));
}

static PyObject *s_ct_stats, *s_ct_created, *s_ct_name;

/* Name and class of a new primitive from the cache: 1 done (fields set), 0 not cached. */
static int
register_cached(PyObject *prim, PyObject *kind, PyObject *name, CoreObject *core)
{
    PyCodeObject *inner = NULL, *user = NULL;
    int lasti = 0;
    if (!published() || !creation_frames(&inner, &user, &lasti)) {
        return 0;
    }
    SiteEntry *e = site_slot(inner, user, lasti, kind, name);
    if (e->stats == NULL || e->inner != (PyObject *)inner || e->user != (PyObject *)user || e->lasti != lasti ||
        e->kind != kind || e->name != name) {
        return 0;
    }
    if (core != NULL) {
        Py_XSETREF(core->stats, Py_NewRef(e->stats));
        Py_XSETREF(core->created, Py_NewRef(e->created));
        Py_XSETREF(core->name, name == Py_None ? NULL : Py_NewRef(name));
    }
    else if (PyObject_SetAttr(prim, s_ct_stats, e->stats) < 0 || PyObject_SetAttr(prim, s_ct_created, e->created) < 0 ||
             PyObject_SetAttr(prim, s_ct_name, name == Py_None ? e->created : name) < 0) {
        PyErr_Clear();
        return 0;
    }
    stamp_epoch(e);
    return 1;
}

/* After the Python path named a new primitive: remember its site for the next ones. */
static void
remember_site(PyObject *kind, PyObject *name, PyObject *stats, PyObject *created)
{
    PyCodeObject *inner = NULL, *user = NULL;
    int lasti = 0;
    if (stats == NULL || created == NULL || !creation_frames(&inner, &user, &lasti)) {
        return;
    }
    SiteEntry *e = site_slot(inner, user, lasti, kind, name);
    Py_XSETREF(e->inner, Py_NewRef((PyObject *)inner));
    Py_XSETREF(e->user, Py_NewRef((PyObject *)user));
    Py_XSETREF(e->kind, Py_NewRef(kind));
    Py_XSETREF(e->name, Py_NewRef(name));
    e->lasti = lasti;
    Py_XSETREF(e->created, Py_NewRef(created));
    Py_XSETREF(e->stats, Py_NewRef(stats));
    Py_CLEAR(e->epoch);
    stamp_epoch(e);
}

static void
link_core(CoreObject *self)
{
    if (self->linked) return;
    self->prev = NULL;
    self->next = g_head;
    if (g_head != NULL) g_head->prev = self;
    g_head = self;
    self->linked = 1;
    g_live++;
}

static void
unlink_core(CoreObject *self)
{
    if (!self->linked) return;
    if (self->prev != NULL) self->prev->next = self->next;
    else g_head = self->next;
    if (self->next != NULL) self->next->prev = self->prev;
    self->prev = self->next = NULL;
    self->linked = 0;
    g_live--;
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
    Py_XSETREF(self->lock, lock);
    self->rlock = rlock;
    if (self->serial == 0) self->serial = ++g_serial;
    PyObject *kind = rlock ? s_rlock_kind : s_lock_kind;
    if (!register_cached((PyObject *)self, kind, name, self)) {
        PyErr_Clear();
        PyFrameObject *frame = PyEval_GetFrame();
        PyObject *r = PyObject_CallFunctionObjArgs(g_register, (PyObject *)self, kind, name,
                                                   frame ? (PyObject *)frame : Py_None, NULL);
        if (r == NULL) return NULL;
        Py_DECREF(r);
        remember_site(kind, name, self->stats, self->created);
        PyErr_Clear();
    }
    self->ordered = is_on(g_order_enabled);
    link_core(self);
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

/* try_register(prim, kind, name) -> bool: a Python-level primitive's name and class from the cache. */
static PyObject *
py_try_register(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "try_register(prim, kind, name)");
        return NULL;
    }
    return PyBool_FromLong(register_cached(args[0], args[1], args[2], NULL));
}

/* remember_site(kind, name, stats, created): the Python path's result, for try_register. */
static PyObject *
py_remember_site(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "remember_site(kind, name, stats, created)");
        return NULL;
    }
    remember_site(args[0], args[1], args[2], args[3]);
    PyErr_Clear();
    Py_RETURN_NONE;
}

/* -- the type ----------------------------------------------------------------------------------- */

static int
core_traverse(CoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->lock);
    Py_VISIT(self->othread);
    Py_VISIT(self->otask);
    Py_VISIT(self->osite);
    Py_VISIT(self->hold);
    Py_VISIT(self->held);
    Py_VISIT(self->entry);
    Py_VISIT(self->site);
    for (int i = 0; i < 4; i++) Py_VISIT(self->known[i]);
    for (int i = 0; i < 3; i++) Py_VISIT(self->trash[i]);
    Py_VISIT(self->stats);
    Py_VISIT(self->name);
    Py_VISIT(self->created);
    Py_VISIT(self->waiters);
    return 0;
}

static int
core_clear(CoreObject *self)
{
    Py_CLEAR(self->lock);
    Py_CLEAR(self->othread);
    Py_CLEAR(self->otask);
    Py_CLEAR(self->osite);
    Py_CLEAR(self->hold);
    Py_CLEAR(self->held);
    Py_CLEAR(self->entry);
    Py_CLEAR(self->site);
    for (int i = 0; i < 4; i++) Py_CLEAR(self->known[i]);
    for (int i = 0; i < 3; i++) Py_CLEAR(self->trash[i]);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->name);
    Py_CLEAR(self->created);
    Py_CLEAR(self->waiters);
    return 0;
}

/* A dying lock hands its counters to its class (only one that was acquired has any). */
static void
retire(CoreObject *self)
{
    if ((self->n == 0 && self->hold == NULL) || self->stats == NULL || g_retire == NULL) {
        return;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *n = PyLong_FromLongLong(self->n);
    if (n != NULL) {
        PyObject *r = PyObject_CallFunctionObjArgs(g_retire, self->stats, n, self->hold ? self->hold : Py_None, NULL);
        Py_XDECREF(r);
        Py_DECREF(n);
    }
    PyErr_Clear();
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

static void
core_dealloc(CoreObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    unlink_core(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    retire(self);
    core_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
core_get_owner(CoreObject *self, void *Py_UNUSED(closure))
{
    if (!self->owner_ident) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(self->owner_ident);
}

static int
core_set_owner(CoreObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || value == Py_None) {
        self->owner_ident = 0;
        self->owner_tid = 0;
        return 0;
    }
    unsigned long ident = PyLong_AsUnsignedLong(value);
    if (ident == (unsigned long)-1 && PyErr_Occurred()) return -1;
    self->owner_ident = ident;
    /* Python sets _owner from the acquiring thread itself: that thread's state. */
    self->owner_tid = ident == PyThread_get_thread_ident() ? current_tid() : 0;
    return 0;
}

static PyObject *
core_get_name(CoreObject *self, void *Py_UNUSED(closure))
{
    PyObject *v = self->name != NULL ? self->name : self->created;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_ct_name");
        return NULL;
    }
    return Py_NewRef(v);
}

static int
core_set_name(CoreObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    Py_XSETREF(self->name, Py_XNewRef(value));
    return 0;
}

static PyObject *
core_get_serial(CoreObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->serial);
}

static int
core_set_serial(CoreObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    unsigned long long v = value ? PyLong_AsUnsignedLongLong(value) : 0;
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    self->serial = v;
    return 0;
}

/* _acq / _rel: the real lock's bound methods, made on demand (slow paths and tests only). */
static PyObject *
core_get_acq(CoreObject *self, void *Py_UNUSED(closure))
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_acq");
        return NULL;
    }
    return PyObject_GetAttr(self->lock, s_acquire);
}

static PyObject *
core_get_rel(CoreObject *self, void *Py_UNUSED(closure))
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_rel");
        return NULL;
    }
    return PyObject_GetAttr(self->lock, s_release);
}

static PyObject *
core_get_osite(CoreObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->osite != NULL ? self->osite : Py_None);
}

static int
core_set_osite(CoreObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    Py_XSETREF(self->osite, (value == NULL || value == Py_None) ? NULL : Py_NewRef(value));
    return 0;
}

static PyGetSetDef core_getset[] = {
    {"_owner", (getter)core_get_owner, (setter)core_set_owner, NULL, NULL},
    {"_ct_name", (getter)core_get_name, (setter)core_set_name, NULL, NULL},
    {"_ct_serial", (getter)core_get_serial, (setter)core_set_serial, NULL, NULL},
    {"_acq", (getter)core_get_acq, NULL, NULL, NULL},
    {"_rel", (getter)core_get_rel, NULL, NULL, NULL},
    {"_osite", (getter)core_get_osite, (setter)core_set_osite, NULL, NULL},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_lock", T_OBJECT_EX, offsetof(CoreObject, lock), 0, NULL},
    {"_ct_n", T_LONGLONG, offsetof(CoreObject, n), 0, NULL},
    {"_t0", T_LONGLONG, offsetof(CoreObject, t0), 0, NULL},
    {"_osince", T_LONGLONG, offsetof(CoreObject, osince), 0, NULL},
    {"_othread", T_OBJECT, offsetof(CoreObject, othread), 0, NULL},
    {"_otask", T_OBJECT, offsetof(CoreObject, otask), 0, NULL},
    {"_ct_hold", T_OBJECT, offsetof(CoreObject, hold), 0, NULL},
    {"_ct_held", T_OBJECT, offsetof(CoreObject, held), 0, NULL},
    {"_ct_entry", T_OBJECT, offsetof(CoreObject, entry), READONLY, NULL},
    {"_owner_tid", T_ULONGLONG, offsetof(CoreObject, owner_tid), READONLY, NULL},
    {"_ct_ordered", T_INT, offsetof(CoreObject, ordered), 0, NULL},
    {"_ct_stats", T_OBJECT_EX, offsetof(CoreObject, stats), 0, NULL},
    {"_ct_created", T_OBJECT_EX, offsetof(CoreObject, created), 0, NULL},
    {"_ct_waiters", T_OBJECT, offsetof(CoreObject, waiters), 0, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CoreObject, weakreflist), READONLY, NULL},
    {NULL},
};

static PyMethodDef core_methods[] = {
    {"_c_lock_init", (PyCFunction)(void (*)(void))lock_init, METH_VARARGS | METH_KEYWORDS,
     "_c_lock_init($self, /, name=None)\n--\n\nA traced threading.Lock."},
    {"_c_rlock_init", (PyCFunction)(void (*)(void))rlock_init, METH_VARARGS | METH_KEYWORDS,
     "_c_rlock_init($self, /, name=None)\n--\n\nA traced threading.RLock."},
    {"_c_lock_enter", (PyCFunction)lock_enter, METH_NOARGS, NULL},
    {"_c_lock_exit", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL, NULL},
    {"_c_lock_release", (PyCFunction)lock_release, METH_NOARGS,
     "_c_lock_release($self, /)\n--\n\nRelease the lock (any thread may), as threading.Lock.release."},
    {"_c_rlock_enter", (PyCFunction)rlock_enter, METH_NOARGS, NULL},
    {"_c_rlock_exit", (PyCFunction)(void (*)(void))rlock_exit, METH_FASTCALL, NULL},
    {"_c_rlock_release", (PyCFunction)rlock_release, METH_NOARGS,
     "_c_rlock_release($self, /)\n--\n\nRelease one level, as threading.RLock.release."},
    {"_c_acquire", (PyCFunction)(void (*)(void))core_acquire, METH_FASTCALL | METH_KEYWORDS,
     "_c_acquire($self, /, blocking=True, timeout=-1)\n--\n\nAcquire the lock, as threading's acquire()."},
    {"_c_locked", (PyCFunction)core_locked, METH_NOARGS, "_c_locked($self, /)\n--\n\nTrue if the lock is held."},
    {"_c_is_owned", (PyCFunction)rlock_is_owned, METH_NOARGS, NULL},
    {"_c_recursion_count", (PyCFunction)rlock_recursion_count, METH_NOARGS, NULL},
    {"_c_release_save", (PyCFunction)rlock_release_save, METH_NOARGS, NULL},
    {"_c_acquire_restore", (PyCFunction)rlock_acquire_restore, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot core_slots[] = {
    {Py_tp_doc, "The fields and C paths of a traced lock (conctools.locks)."},
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

/* -- module functions ------------------------------------------------------------------------- */

static PyObject *
setup(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"mask", "mono", "histogram", "sub_bits", "skip_prefixes", "internal_prefixes",
                             "keep_prefix", "pkg_dir", "local", "held_stack", "check", "edges", "generation",
                             "allocate_lock", "rlock_type", "order_enabled", "current", "published", "register",
                             "retire", "epoch", "wait_begin", "pending", "waiting", "progress", "safe_point",
                             "active", "running_loop", "current_task", NULL};
    long long mask;
    int sub_bits;
    PyObject *v[27];
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "LOO!iO!O!UUOOOO!O!OOO!O!O!OOO!OOO!O!OO!OO:setup", kwlist, &mask, &v[0], &PyType_Type, &v[1],
            &sub_bits, &PyTuple_Type, &v[2], &PyTuple_Type, &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &PyDict_Type,
            &v[9], &PyList_Type, &v[10], &v[11], &v[12], &PyList_Type, &v[13], &PyList_Type, &v[14], &PyList_Type,
            &v[15], &v[16], &v[17], &PyList_Type, &v[18], &v[19], &v[20], &PyDict_Type, &v[21], &PyList_Type, &v[22],
            &v[23], &PyDict_Type, &v[24], &v[25], &v[26])) {
        return NULL;
    }
    if (sub_bits < 1 || sub_bits > 16) {
        PyErr_SetString(PyExc_ValueError, "sub_bits out of range");
        return NULL;
    }
    if (!PyType_Check(v[12])) {
        PyErr_SetString(PyExc_TypeError, "rlock_type must be a type");
        return NULL;
    }
    /* The real locks' own methods: from their types (allocate_lock is a function: its lock's type). */
    PyObject *probe = PyObject_CallNoArgs(v[11]);
    if (probe == NULL) return NULL;
    PyObject *lock_type = (PyObject *)Py_TYPE(probe);
    int lf = 0, rf = 0, af = 0;
    m_lock_acquire = method_of(lock_type, "acquire", &lf);
    m_lock_release = m_lock_acquire ? method_of(lock_type, "release", NULL) : NULL;
    m_lock_locked = m_lock_release ? method_of(lock_type, "locked", NULL) : NULL;
    Py_DECREF(probe);
    if (m_lock_locked == NULL) return NULL;
    if ((m_rlock_acquire = method_of(v[12], "acquire", &rf)) == NULL ||
        (m_rlock_release = method_of(v[12], "release", NULL)) == NULL ||
        (m_rlock_is_owned = method_of(v[12], "_is_owned", NULL)) == NULL ||
        (m_rlock_recursion_count = method_of(v[12], "_recursion_count", NULL)) == NULL ||
        (m_rlock_release_save = method_of(v[12], "_release_save", NULL)) == NULL ||
        (m_rlock_acquire_restore = method_of(v[12], "_acquire_restore", &af)) == NULL) {
        return NULL;
    }
    f_lock_acquire = lf;
    f_rlock_acquire = rf;
    f_rlock_acquire_restore = af;
    if (!(lf & (METH_VARARGS | METH_FASTCALL)) || !(rf & (METH_VARARGS | METH_FASTCALL)) ||
        !(af & (METH_VARARGS | METH_FASTCALL | METH_O))) {
        PyErr_SetString(PyExc_TypeError, "conctools._speedups: unexpected calling convention of the real locks");
        return NULL;
    }
    g_mask = mask;
    g_sub_bits = sub_bits;
    PyObject **slots[27] = {&g_mono, &g_hist_type, &g_skip_prefixes, &g_internal, &g_keep_prefix, &g_pkg_dir,
                            &g_local, &g_held_stack, &g_check, &g_edges, &g_generation, &g_allocate_lock,
                            &g_rlock_type, &g_order_enabled, &g_current, &g_published, &g_register, &g_retire,
                            &g_epoch, &g_wait_begin, &g_pending, &g_waiting, &g_progress, &g_safe_point, &g_active,
                            &g_running_loop, &g_current_task};
    for (int i = 0; i < 27; i++) {
        Py_XSETREF(*slots[i], Py_NewRef(v[i]));
    }
    g_running_loop_meth = NULL;
    g_running_loop_self = NULL;
    if (PyCFunction_Check(g_running_loop) && (PyCFunction_GET_FLAGS(g_running_loop) & METH_NOARGS)) {
        g_running_loop_meth = PyCFunction_GET_FUNCTION(g_running_loop);
        g_running_loop_self = PyCFunction_GET_SELF(g_running_loop); /* borrowed: g_running_loop keeps it */
    }
    clear_site_cache();
    Py_RETURN_NONE;
}

static PyObject *
py_clear_caches(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    clear_site_cache();
    Py_CLEAR(g_held_list);
    Py_CLEAR(g_me_thread);
    g_me_tid = 0;
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

static PyObject *
py_current_thread_key(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(current_tid());
}

/* live(): every live traced Lock/RLock (strong references, for the registry). */
static PyObject *
py_live(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = g_live, i = 0;
    PyObject **items = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(PyObject *));
    if (items == NULL) return PyErr_NoMemory();
    /* No allocation of Python objects while walking: a collection could unlink nodes under us. */
    for (CoreObject *c = g_head; c != NULL && i < n; c = c->next) {
        if (Py_REFCNT(c) > 0 && c->lock != NULL) {
            items[i++] = Py_NewRef((PyObject *)c);
        }
    }
    PyObject *list = PyList_New(i);
    if (list == NULL) {
        for (Py_ssize_t k = 0; k < i; k++) Py_DECREF(items[k]);
        PyMem_Free(items);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < i; k++) PyList_SET_ITEM(list, k, items[k]);
    PyMem_Free(items);
    return list;
}

/* acquisitions(): the sum of every live lock's acquisition counter (watchdog progress). */
static PyObject *
py_acquisitions(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    long long total = 0;
    for (CoreObject *c = g_head; c != NULL; c = c->next) total += c->n;
    return PyLong_FromLongLong(total);
}

/* raw_stack(limit): (code, offset, code, offset, ...) of the caller's stack, innermost first,
 * without frame objects (lines are resolved only when a report needs them). */
static PyObject *
py_raw_stack(PyObject *Py_UNUSED(module), PyObject *arg)
{
    long limit = PyLong_AsLong(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (limit < 0) limit = 0;
    if (limit > 256) limit = 256;
    PyObject *codes[256];
    int offs[256];
    long n = 0;
    FrameCursor c;
    cursor_start(&c);
    PyCodeObject *co;
    int off;
    while (n < limit && cursor_get(&c, &co, &off)) {
        codes[n] = Py_NewRef((PyObject *)co);
        offs[n] = off;
        n++;
        cursor_next(&c);
    }
    cursor_end(&c);
    PyObject *out = PyTuple_New(2 * n);
    if (out == NULL) {
        for (long i = 0; i < n; i++) Py_DECREF(codes[i]);
        return NULL;
    }
    for (long i = 0; i < n; i++) {
        PyTuple_SET_ITEM(out, 2 * i, codes[i]);
        PyObject *o = PyLong_FromLong(offs[i]);
        if (o == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, 2 * i + 1, o);
    }
    return out;
}

static PyMethodDef module_methods[] = {
    {"thread_state_id", (PyCFunction)py_thread_state_id, METH_O,
     "thread_state_id(ident): the thread-state id of the live thread with this id, or None"},
    {"current_thread_key", (PyCFunction)py_current_thread_key, METH_NOARGS,
     "current_thread_key(): the calling thread's thread-state id (never reused in the process)"},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     "setup(...): what the C paths need from conctools.locks"},
    {"clear_caches", (PyCFunction)py_clear_caches, METH_NOARGS, "clear_caches(): forget cached creation sites"},
    {"try_register", (PyCFunction)(void (*)(void))py_try_register, METH_FASTCALL,
     "try_register(prim, kind, name) -> bool: name a primitive from the cached creation sites"},
    {"remember_site", (PyCFunction)(void (*)(void))py_remember_site, METH_FASTCALL,
     "remember_site(kind, name, stats, created): cache a creation site"},
    {"live", (PyCFunction)py_live, METH_NOARGS, "live(): every live traced Lock and RLock"},
    {"acquisitions", (PyCFunction)py_acquisitions, METH_NOARGS, "acquisitions(): total of the live locks' counters"},
    {"raw_stack", (PyCFunction)py_raw_stack, METH_O, "raw_stack(limit): (code, offset, ...) innermost first"},
    {"bucket_of", (PyCFunction)py_bucket_of, METH_O, "bucket_of(value): recorder.bucket_of, as the C path computes it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "conctools._speedups",
    .m_doc = "C paths for conctools' traced locks (optional: conctools works without them).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                     \
    do {                                                      \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            goto fail;                                        \
    } while (0)

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) return NULL;
    INTERN(s_acquire, "acquire");
    INTERN(s_release, "release");
    INTERN(s_locked, "locked");
    INTERN(s_is_owned, "_is_owned");
    INTERN(s_recursion_count, "_recursion_count");
    INTERN(s_release_save, "_release_save");
    INTERN(s_acquire_restore, "_acquire_restore");
    INTERN(s_stack, "stack");
    INTERN(s_key, "key");
    INTERN(s_end_ns, "end_ns");
    INTERN(s_acquired, "acquired");
    INTERN(s_append, "append");
    INTERN(s_buckets, "buckets");
    INTERN(s_count, "count");
    INTERN(s_total_ns, "total_ns");
    INTERN(s_max_ns, "max_ns");
    INTERN(s_add, "add");
    INTERN(s_epoch, "epoch");
    INTERN(s_lock_kind, "Lock");
    INTERN(s_rlock_kind, "RLock");
    INTERN(s_thread_key, "thread_key");
    INTERN(s_site, "site");
    INTERN(s_ct_stats, "_ct_stats");
    INTERN(s_ct_created, "_ct_created");
    INTERN(s_ct_name, "_ct_name");
    INTERN(g_key_thread, "conctools.thread");
    if ((g_false_args = PyTuple_Pack(1, Py_False)) == NULL) goto fail;
    if ((g_true_args = PyTuple_Pack(1, Py_True)) == NULL) goto fail;
    if ((g_true_minus_one = Py_BuildValue("(Oi)", Py_True, -1)) == NULL) goto fail;
    if ((g_question = PyUnicode_FromString("?")) == NULL) goto fail;
    if ((g_trash_list = PyList_New(0)) == NULL) goto fail;
    /* locks.py uses this module only when the versions agree (a stale build in a source tree
     * falls back to pure Python instead of failing). Bump on any change to the interface. */
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "INTERNAL_FRAMES", CT_INTERNAL_FRAMES) < 0) goto fail;
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
