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
#if defined(__linux__)
#include <sched.h>
#endif

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
#include "internal/pycore_ceval.h"  /* _PY_GC_SCHEDULED_BIT */
#define CT_TSTATE_LOOP 1
#elif PY_VERSION_HEX >= 0x030C0000
#include "internal/pycore_interp.h" /* interp->ceval.gc_scheduled */
#endif
#ifdef CT_UNDEF_BUILD_CORE
#undef Py_BUILD_CORE
#endif
#else
#define CT_INTERNAL_FRAMES 0
#define CT_TSTATE() PyThreadState_Get()
#endif

#define API_VERSION 36

typedef struct CoreObject {
    PyObject_HEAD
    PyObject *lock;              /* _lock: the real _thread.lock / _thread.RLock */
    int rlock;                   /* 1 for an RLock */
    int ordered;                 /* _ct_ordered: lock-order checking (decided at creation) */
    long depth;                  /* an RLock's depth for its owner, kept by its own methods */
    int released;                /* the holder fields belong to a holder that has released the lock */
    /* The holder, valid while the lock is held (a Lock leaves them as they were on release). */
    unsigned long owner_ident;   /* _owner: its thread id, 0 = none */
    unsigned long long owner_tid;/* _owner_tid: its thread-state id (never reused), 0 = unknown */
    PyObject *othread;           /* _othread: its ThreadInfo (below), when it has one */
    PyObject *otask;             /* _otask: its asyncio task, when taken inside one */
    PyObject *osite;             /* _osite: where it was taken: (code, offset) or "file:LINE"; NULL unknown */
    long long osince;            /* _osince: when it took the lock (0 = not timed) */
    long long t0;                /* _t0: start of a timed hold, 0 = untimed */
    long long n;                 /* _ct_n: acquisitions */
    PyObject *hold;              /* _ct_hold: hold-time Histogram, NULL until the first contention */
    PyObject *held;              /* _ct_held: the held-locks stack this lock was pushed on */
    PyObject *entry;             /* _ct_entry: the cached held-stack entry (ref, key, name, serial, site), or NULL */
    PyObject *lockref;           /* the LockRef of its entries (their ref and serial), NULL until the first */
    PyObject *ckey;              /* its class key (its stats' key, which never changes), NULL until the first entry */
    const void *miss_site;       /* the site of the last entry made and not cached (its identity only) */
    PyObject *entry_alt[3];      /* the entries of the sites before it, most recent first (a queue's mutex is
                                  * taken by put, get and task_done in turn: one entry each, not one per turn) */
    PyObject *known[2];          /* class keys of held locks whose edge to this lock is known (strong refs): by
                                    the key, not the held entry, as each future's condition is a new entry */
    long long known_gen;         /* lockorder generation those were checked in */
    PyObject *trash[2];          /* references dropped inside a critical section, released later */
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

/* The base of the Python-level traced primitives (Condition, Semaphore, Event, Barrier and the
 * asyncio ones): their identity and counters as C fields (no dict entries), and a place in a list of
 * live primitives (no weakref) that its deallocation leaves. */
typedef struct TrackedObject {
    PyObject_HEAD
    PyObject *stats;     /* _ct_stats */
    PyObject *name;      /* name= given, or NULL (_ct_name is then _ct_created) */
    PyObject *created;   /* _ct_created */
    PyObject *hold;      /* _ct_hold (None, never NULL once registered: fields Python reads on every
                          * acquisition are object slots, which the interpreter's attribute caches serve) */
    PyObject *waiters;   /* _ct_waiters (None until the first wait) */
    PyObject *n;         /* _ct_n: acquisitions (semaphores, asyncio locks), an int */
    PyObject *progress;  /* _ct_progress: notify/set/pass count, an int */
    unsigned long long serial;
    struct TrackedObject *prev, *next;
    int linked;
} TrackedObject;

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
/* -- set by setup_runs(), from conctools/lockorder.py (the next lock of a run: see run_next()) -- */
static PyObject *g_runs;            /* lockorder._runs: id(held stack) -> run */
static PyObject *g_inst_in;         /* lockorder._inst_in: serial -> the run (or a tuple of runs) with an edge into it */
static PyObject *g_inst_has_out;    /* lockorder._inst_has_out */
static PyObject *g_inst_count;      /* lockorder._inst_count: [n] */
static PyObject *g_inst_full_skip;  /* lockorder._inst_full_skip: [skip, warned] */
static PyObject *g_inst_prune_at;   /* lockorder._inst_prune_at: [n] */
static Py_ssize_t g_inst_max_edges; /* lockorder.INSTANCE_MAX_EDGES */
static PyObject *g_order_locked;    /* lockorder._mutex.locked (the bound method: the mutex itself is not needed) */
static PyObject *g_run_log;         /* lockorder._run_log (a deque), for run_start() */
static PyObject *g_inst_stacks;     /* lockorder._inst_stacks: (class key, site) -> stacks taken there */
static Py_ssize_t g_inst_stacks_per_site = -1; /* lockorder.INSTANCE_STACKS_PER_SITE (-1: run_start() is off) */
static Py_ssize_t g_runs_looked_at; /* lockorder.RUNS_LOOKED_AT_PER_RUN */
static PyObject *s_popleft;         /* "popleft" */
static PyObject *g_wait_type;       /* locks._Wait (a class with __slots__) */
static PyObject *g_flush;           /* locks.flush_waits */
static PyObject *g_site_text;       /* locks._wait_site_text(code, offset) -> "file.py:LINE" */
static PyObject *g_begin_wait_slow; /* LockStats.begin_wait (unbound): a new site's entry */
static Py_ssize_t g_flush_at = 64;
static long long g_stacks_per_site = 8;
static PyObject *g_threshold;       /* locks._threshold: [seconds] (a wait at least this long is an event) */
static PyObject *g_unsampled;       /* locks._unsampled: {recorder: lock waits counted, not kept} */
static long long g_events_cap = 264; /* EVENTS_PER_SITE + STACKS_PER_SITE */
static PyObject *s_mutex, *s_events, *s_timeouts, *s_wait, *s_champion;
static PyObject *g_lock_type;       /* _thread.lock (the type of allocate_lock()'s locks) */
/* Offsets of recorder.Histogram's slots (buckets, count, total_ns, max_ns), read from its member
 * descriptors at setup; -1: not found (hist_add_fields then goes through attribute access). */
static Py_ssize_t g_hist_off[4] = {-1, -1, -1, -1};

static PyObject *s_acquire, *s_release, *s_locked, *s_is_owned, *s_recursion_count, *s_release_save,
    *s_acquire_restore, *s_stack, *s_key, *s_end_ns, *s_acquired, *s_append, *s_buckets, *s_count,
    *s_total_ns, *s_max_ns, *s_add, *s_epoch, *s_lock_kind, *s_rlock_kind, *s_thread_key, *s_site, *s_retired,
    *s_lock_attr, *s_enter, *s_exit;

static PyObject *py_raw_stack(PyObject *module, PyObject *arg);
static PyObject *wait_begin(PyObject *prim, PyObject *timeout, PyObject *holder, int by_task, int event,
                            PyObject *task_arg);
static void wait_finish(PyObject *w, int acquired, int settle);
struct TrackedObject;
static void init_tracked(struct TrackedObject *self);
static PyObject *s_ct_stats, *s_ct_created, *s_ct_name;
static PyObject *g_empty_str;       /* "" */
static PyObject *g_zero_int;        /* 0 */
static PyObject *g_false_args;      /* (False,) */
static PyObject *g_true_args;       /* (True,) */
static PyObject *g_question;        /* "?" */
static PyObject *g_trash_list;      /* overflow of the per-lock trash slots */
static PyTypeObject *g_core_type;
static PyTypeObject *g_tracked_type;
static TrackedObject *g_tracked_head;
static Py_ssize_t g_tracked_live;

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

/* A lock is tracked by the garbage collector only once it refers to something that could refer
 * back to it (a task, a wait record, a reference waiting in its trash): most locks never do. */
static void
track(CoreObject *self)
{
    if (!PyObject_GC_IsTracked((PyObject *)self)) {
        PyObject_GC_Track((PyObject *)self);
    }
}

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
    /* (No tracking needed for the trash: what can refer back to a lock, a task, went through
     * otask before, which tracked the lock; the rest are sites, held stacks, ThreadInfos.) */
    for (int i = 0; i < 2; i++) {
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
    for (int i = 0; i < 2; i++) {
        Py_CLEAR(self->trash[i]);
    }
    if (g_trash_list != NULL && PyList_GET_SIZE(g_trash_list) > 0) {
        PyList_SetSlice(g_trash_list, 0, PyList_GET_SIZE(g_trash_list), NULL);
        PyErr_Clear();
    }
}

/* -- clocks and histograms ------------------------------------------------------------------ */

/* PyLong_AsLongLong of an int, without the byte-array path that CPython 3.11-3.13 take for any value of
 * more than one digit (every clock reading in ns): -1 with an error set when it is not an int or too big. */
static inline long long
as_ll(PyObject *v)
{
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "int too big for a C long long");
        return -1;
    }
    return n;
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

/* The object slot of `obj` at byte offset `off` (an aio.Lock's or aio.Semaphore's asyncio field, a
 * Condition's _lock). */
#define OBJ_SLOT(obj, off) ((PyObject **)((char *)(obj) + (off)))

/* Histogram.add(value) on a recorder.Histogram (slots buckets, count, total_ns, max_ns), done here:
 * ints and a dict entry only (no garbage collection can start, no Python code runs). Anything else
 * (a subclass, another object) goes through its own add(). */
/* The offset of a writable object slot `name` of type `tp` (a member descriptor of its own), or -1. */
static Py_ssize_t
object_slot_offset(PyTypeObject *tp, const char *name)
{
    PyObject *d = PyDict_GetItemString(tp->tp_dict, name); /* borrowed */
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) return -1;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
    return m->offset;
}

static void
hist_find_slots(void)
{
    static const char *names[4] = {"buckets", "count", "total_ns", "max_ns"};
    for (int i = 0; i < 4; i++) g_hist_off[i] = -1;
    if (g_hist_type == NULL || !PyType_Check(g_hist_type)) return;
    Py_ssize_t off[4];
    for (int i = 0; i < 4; i++) {
        off[i] = object_slot_offset((PyTypeObject *)g_hist_type, names[i]);
        if (off[i] < 0) return;
    }
    for (int i = 0; i < 4; i++) g_hist_off[i] = off[i];
}

/* hist_add_fields() on a recorder.Histogram itself: its slots read and written in place (the same
 * stores as through attribute access, without the lookups). -1: a slot is unset or not an int (the
 * caller goes the slow way, which raises what attribute access raises). */
static int
hist_add_slots(PyObject *hist, long long value)
{
    PyObject **f[4];
    for (int i = 0; i < 4; i++) {
        f[i] = (PyObject **)((char *)hist + g_hist_off[i]);
        if (*f[i] == NULL || (i == 0 ? !PyDict_CheckExact(*f[i]) : !PyLong_CheckExact(*f[i]))) return -1;
    }
    long long count = as_ll(*f[1]), total = as_ll(*f[2]), max = as_ll(*f[3]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    PyObject *idx = PyLong_FromLongLong(bucket_of(value));
    if (idx == NULL) return -2;
    PyObject *old = PyDict_GetItemWithError(*f[0], idx); /* borrowed */
    long long n = old != NULL ? PyLong_AsLongLong(old) : 0;
    PyObject *one = (old == NULL && PyErr_Occurred()) || (n == -1 && PyErr_Occurred()) ? NULL : PyLong_FromLongLong(n + 1);
    PyObject *c = one ? PyLong_FromLongLong(count + 1) : NULL, *t = c ? PyLong_FromLongLong(total + value) : NULL;
    PyObject *m = t && value > max ? PyLong_FromLongLong(value) : NULL;
    int rc = -2;
    if (t != NULL && (value <= max || m != NULL) && PyDict_SetItem(*f[0], idx, one) == 0) {
        Py_SETREF(*f[1], c);
        Py_SETREF(*f[2], t);
        if (m != NULL) Py_SETREF(*f[3], m);
        c = t = m = NULL;
        rc = 0;
    }
    Py_DECREF(idx);
    Py_XDECREF(one);
    Py_XDECREF(c);
    Py_XDECREF(t);
    Py_XDECREF(m);
    return rc;
}

static int
hist_add_fields(PyObject *hist, long long value)
{
    if (g_hist_off[0] >= 0 && g_hist_type != NULL && Py_IS_TYPE(hist, (PyTypeObject *)g_hist_type)) {
        int r = hist_add_slots(hist, value);
        if (r != -1) return r == 0 ? 0 : -1;
    }
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
 * conctools' own (bit 2)? A cache that holds its code objects, so a cached pointer always means the
 * same code: two ways per set, the newest first, indexed by a multiplicative hash of the pointer. (It
 * was direct-mapped by the pointer's low bits: the code objects of one module lie close together, and
 * two hot ones sharing a slot, taken in turn on every lock's creation or site walk, missed each time:
 * ~20 prefix comparisons per miss, 8 misses per future in a fan-out of futures.) */
#define CODE_CACHE 1024 /* entries: 512 sets of 2 */
static struct {
    PyObject *code;
    int bits;
} g_code_cache[CODE_CACHE];

static int
code_bits(PyCodeObject *code)
{
    size_t h = (size_t)((((uint64_t)(uintptr_t)code >> 4) * 0x9E3779B97F4A7C15ull) >> 54) & ~(size_t)1;
    if (g_code_cache[h].code == (PyObject *)code) {
        return g_code_cache[h].bits;
    }
    if (g_code_cache[h + 1].code == (PyObject *)code) {
        int hit = g_code_cache[h + 1].bits; /* the newest first */
        PyObject *other = g_code_cache[h].code;
        g_code_cache[h + 1].code = other;
        g_code_cache[h + 1].bits = g_code_cache[h].bits;
        g_code_cache[h].code = (PyObject *)code;
        g_code_cache[h].bits = hit;
        return hit;
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
    PyObject *evicted = g_code_cache[h + 1].code;
    g_code_cache[h + 1] = g_code_cache[h];
    g_code_cache[h].code = (PyObject *)code;
    g_code_cache[h].bits = bits;
    Py_XDECREF(evicted);
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
#define SITE_TUPLES 1024
static PyObject *g_site_tuples[SITE_TUPLES];

static PyObject *
caller_site(CoreObject *self)
{
    PyCodeObject *code;
    int lasti;
    if (!first_frame_without(BIT_SITE_SKIP, &code, &lasti)) {
        return Py_NewRef(g_question);
    }
    /* One (code, offset) tuple per site, shared by every lock taken there (a program with many locks
     * of one class keeps one). */
    size_t h = (((uintptr_t)code >> 4) * 31u + (uintptr_t)lasti) & (SITE_TUPLES - 1);
    PyObject *cached = g_site_tuples[h];
    if (cached != NULL && PyTuple_GET_ITEM(cached, 0) == (PyObject *)code &&
        PyLong_AsLong(PyTuple_GET_ITEM(cached, 1)) == lasti) {
        return Py_NewRef(cached);
    }
    g_allocated = 1;
    PyObject *offset = PyLong_FromLong(lasti);
    PyObject *site = offset ? PyTuple_Pack(2, (PyObject *)code, offset) : NULL;
    Py_XDECREF(offset);
    if (site == NULL) {
        swallow();
        return Py_NewRef(g_question);
    }
    Py_XSETREF(g_site_tuples[h], Py_NewRef(site));
    return site;
}

/* -- ThreadInfo: a thread's identity, as locks keep it ----------------------------------------- */

/* A lock keeps its holder's ThreadInfo rather than its threading.Thread: the Thread could refer back
 * to the lock (a Thread subclass holding its own lock), and a lock that can be part of no reference
 * cycle need not be tracked by the garbage collector (most locks: collections stay as cheap as the
 * stdlib's, whose locks are not tracked). It holds a weak reference to the Thread and a copy of its
 * name, so an ended thread is still called by its own name. Not a GC type: it refers to nothing that
 * could refer back to it. */
typedef struct {
    PyObject_HEAD
    unsigned long ident;
    unsigned long long tid;
    PyObject *wthread; /* weak reference to the threading.Thread, or NULL */
    PyObject *name;    /* its name when last seen */
} ThreadInfoObject;

static PyTypeObject *g_threadinfo_type;
static PyObject *s_name;

static PyObject *
threadinfo_thread(ThreadInfoObject *self)
{
    if (self->wthread == NULL) return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *t = NULL;
    if (PyWeakref_GetRef(self->wthread, &t) != 1) {
        PyErr_Clear();
        return NULL;
    }
    return t;
#else
    PyObject *t = PyWeakref_GetObject(self->wthread);
    if (t == NULL || t == Py_None) {
        PyErr_Clear();
        return NULL;
    }
    return Py_NewRef(t);
#endif
}

static PyObject *
threadinfo_get_thread(ThreadInfoObject *self, void *Py_UNUSED(closure))
{
    PyObject *t = threadinfo_thread(self);
    return t != NULL ? t : Py_NewRef(Py_None);
}

/* The thread's name: the live Thread's (it may have been renamed), else the last one seen. */
static PyObject *
threadinfo_get_name(ThreadInfoObject *self, void *Py_UNUSED(closure))
{
    PyObject *t = threadinfo_thread(self);
    if (t != NULL) {
        PyObject *name = PyObject_GetAttr(t, s_name);
        Py_DECREF(t);
        if (name != NULL && PyUnicode_Check(name)) {
            Py_XSETREF(self->name, Py_NewRef(name));
            return name;
        }
        Py_XDECREF(name);
        PyErr_Clear();
    }
    if (self->name != NULL) return Py_NewRef(self->name);
    return PyUnicode_FromFormat("thread-%lu", self->ident);
}

static PyObject *
threadinfo_repr(ThreadInfoObject *self)
{
    return PyUnicode_FromFormat("<ThreadInfo ident=%lu key=%llu name=%R>", self->ident, self->tid,
                                self->name ? self->name : Py_None);
}

static void
threadinfo_dealloc(ThreadInfoObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(self->wthread);
    Py_CLEAR(self->name);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyGetSetDef threadinfo_getset[] = {
    {"thread", (getter)threadinfo_get_thread, NULL, "the threading.Thread while it exists, else None", NULL},
    {"name", (getter)threadinfo_get_name, NULL, "the thread's name (its last one, once it has ended)", NULL},
    {NULL},
};

static PyMemberDef threadinfo_members[] = {
    {"ident", T_ULONG, offsetof(ThreadInfoObject, ident), READONLY, NULL},
    {"key", T_ULONGLONG, offsetof(ThreadInfoObject, tid), READONLY, NULL},
    {NULL},
};

static PyType_Slot threadinfo_slots[] = {
    {Py_tp_doc, "A thread's identity as a traced lock keeps it (ident, thread-state id, Thread, name)."},
    {Py_tp_dealloc, threadinfo_dealloc},
    {Py_tp_repr, threadinfo_repr},
    {Py_tp_getset, threadinfo_getset},
    {Py_tp_members, threadinfo_members},
    {0, NULL},
};

static PyType_Spec threadinfo_spec = {
    .name = "conctools._speedups.ThreadInfo",
    .basicsize = sizeof(ThreadInfoObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = threadinfo_slots,
};

static PyObject *
new_threadinfo(unsigned long ident, unsigned long long tid, PyObject *thread)
{
    ThreadInfoObject *info = PyObject_New(ThreadInfoObject, g_threadinfo_type);
    if (info == NULL) return NULL;
    Py_INCREF(g_threadinfo_type); /* a heap type: its instances hold a reference */
    info->ident = ident;
    info->tid = tid;
    info->wthread = NULL;
    info->name = NULL;
    if (thread != NULL) {
        info->wthread = PyWeakref_NewRef(thread, NULL);
        if (info->wthread == NULL) PyErr_Clear();
        PyObject *name = PyObject_GetAttr(thread, s_name);
        if (name != NULL && PyUnicode_Check(name)) {
            info->name = name;
        }
        else {
            Py_XDECREF(name);
            PyErr_Clear();
        }
    }
    return (PyObject *)info;
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
static PyObject *g_key_held;   /* ... and of its held-locks stack */

/* Per-thread caches (C thread-local storage), valid while the thread-state id and the cache
 * generation (bumped by clear_caches) match. They hold borrowed references only: the objects are
 * kept alive by the thread-state dict, which lives as long as the thread. */
static unsigned long long g_cache_gen = 1;
/* The initial-exec model where the compiler has it: a load at a fixed offset from the thread pointer,
 * where the default for a shared object calls __tls_get_addr at every use (~3% of the overhead of an
 * asyncio program's contended waits on 3.13). 48 bytes, well within what the C library sets aside for
 * libraries loaded later (glibc: 512 bytes at least; musl: any). */
#if defined(__GNUC__) && defined(__ELF__)
#define CT_TLS __thread __attribute__((tls_model("initial-exec")))
#else
#define CT_TLS __thread
#endif
static CT_TLS unsigned long long t_tid, t_gen;
static CT_TLS PyObject *t_thread;      /* its threading.Thread, or NULL */
static CT_TLS PyObject *t_held;        /* its lockorder held stack, or NULL */
static CT_TLS PyObject *t_noloop_dict; /* "no loop" seen with this tsdict version */
/* lockorder.check is running in this thread (set by it: order_checking()), where a finalizer run by its
 * allocations takes a lock. Not reset by tls_check(): check() sets and clears it itself. */
static CT_TLS int t_checking;
#ifndef CT_TSTATE_LOOP
static CT_TLS uint64_t t_noloop_version;
#endif

static unsigned long long
current_tid(void)
{
    return (unsigned long long)CT_TSTATE()->id;
}

static void
tls_check(unsigned long long tid)
{
    if (t_tid != tid || t_gen != g_cache_gen) {
        t_tid = tid;
        t_gen = g_cache_gen;
        t_thread = t_held = t_noloop_dict = NULL;
    }
}

/* The calling thread's ThreadInfo (borrowed), made once per thread and kept in its thread-state dict
 * (NULL while the thread has no threading.Thread yet). */
static PyObject *
current_thread_object(unsigned long long tid, unsigned long ident)
{
    tls_check(tid);
    if (t_thread != NULL) {
        return t_thread;
    }
    PyObject *tsdict = PyThreadState_GetDict(); /* borrowed */
    if (tsdict == NULL) {
        return NULL;
    }
    PyObject *info = PyDict_GetItemWithError(tsdict, g_key_thread); /* borrowed */
    if (info == NULL && PyErr_Occurred()) PyErr_Clear();
    if (info != NULL && Py_IS_TYPE(info, g_threadinfo_type) && ((ThreadInfoObject *)info)->tid == tid) {
        t_thread = info;
        return info;
    }
    if (g_active == NULL) return NULL;
    g_allocated = 1;
    PyObject *thread = NULL;
    PyObject *key = PyLong_FromUnsignedLong(ident);
    if (key != NULL) {
        thread = PyDict_GetItemWithError(g_active, key); /* borrowed */
        Py_DECREF(key);
    }
    if (thread == NULL) {
        PyErr_Clear();
        return NULL; /* not a threading.Thread (yet): looked up again next time */
    }
    info = new_threadinfo(ident, tid, thread);
    if (info == NULL) {
        PyErr_Clear();
        return NULL;
    }
    int err = PyDict_SetItem(tsdict, g_key_thread, info);
    Py_DECREF(info); /* the dict keeps it (or it is gone) */
    if (err < 0) {
        PyErr_Clear();
        return NULL;
    }
    t_thread = info;
    return info;
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
 * there for a thread that has none on every call. Ours remembers "no loop" per thread, until that
 * dict changes (its version tag moves on every change). */
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

/* 3.12 and 3.13: asyncio.current_task(loop) is _asyncio._current_tasks.get(loop) (the C module's dict of each
 * running loop's task), read here directly when current_task is that module's function: a call of it parses
 * its keyword argument first, most of its cost (~260 instructions; three times an `async with` of a semaphore
 * and a lock, issue 12). NULL elsewhere (3.11 and 3.14+ keep it differently; a replaced current_task; no GIL,
 * where a borrowed task could go away meanwhile). A new reference, or NULL. */
static PyObject *
tasks_by_loop_of(PyObject *current_task)
{
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
    if (current_task == NULL || !PyCFunction_Check(current_task)) return NULL;
    PyObject *mod = PyCFunction_GET_SELF(current_task); /* borrowed */
    if (mod == NULL || !PyModule_Check(mod)) return NULL;
    const char *name = PyModule_GetName(mod);
    if (name == NULL || strcmp(name, "_asyncio") != 0) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *d = PyObject_GetAttrString(mod, "_current_tasks");
    if (d == NULL || !PyDict_CheckExact(d)) {
        Py_XDECREF(d);
        PyErr_Clear();
        return NULL;
    }
    return d;
#else
    (void)current_task;
    return NULL;
#endif
}

static PyObject *g_tasks_by_loop; /* tasks_by_loop_of(g_current_task) */

/* The task loop runs now (new reference, NULL when none), as current_task(loop) finds it: 1, or 0 when the
 * caller must call current_task (no error set either way). */
static int
task_of_loop(PyObject *tasks_by_loop, PyObject *loop, PyObject **task)
{
    *task = NULL;
    if (tasks_by_loop == NULL) return 0;
    PyObject *t = PyDict_GetItemWithError(tasks_by_loop, loop); /* borrowed */
    if (t == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *task = t != NULL && t != Py_None ? Py_NewRef(t) : NULL;
    return 1;
}

/* The asyncio task running in this thread (new reference) or NULL: cheap where no loop runs. */
static PyObject *
current_task_of_thread(unsigned long long tid)
{
#ifndef CT_TSTATE_LOOP
    PyObject *tsdict = CT_TSTATE()->dict; /* borrowed; NULL until someone made it */
    tls_check(tid);
    if (tsdict != NULL && t_noloop_dict == tsdict && dict_version(tsdict) == t_noloop_version) {
        return NULL;
    }
#endif
    PyObject *loop = running_loop();
    if (loop == NULL) {
#ifndef CT_TSTATE_LOOP
        if (tsdict != NULL && PyDict_Check(tsdict)) {
            t_noloop_dict = tsdict;
            t_noloop_version = dict_version(tsdict);
        }
#else
        (void)tid;
#endif
        return NULL;
    }
    PyObject *task;
    if (task_of_loop(g_tasks_by_loop, loop, &task)) {
        Py_DECREF(loop);
        return task;
    }
    task = PyObject_CallOneArg(g_current_task, loop);
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

/* A held-locks stack (lockorder.HeldStack's C twin): a list whose `version` is bumped by every change
 * (its methods, slicing, `+=`, `del`, and the pushes and pops below), so that a run of one class
 * (run_next) knows the stack is the one it left by comparing the version, not the items: O(1) per
 * lock instead of O(locks held). */
typedef struct {
    PyListObject list;
    unsigned long long version;
    /* Entries released while locks taken after them are still held, left as None at the bottom of the
     * stack (see order_pop): concurrent.futures releases the conditions of wait() and as_completed() in
     * the order it took them, and deleting the bottom one of 40,000 moved the 39,999 above it. Only the
     * thread's own releases leave them; anything else that reads or changes the stack drops them first
     * (held_compact), so no reader sees one. */
    Py_ssize_t dead;
} HeldStackObject;

static PyTypeObject HeldStack_Type;
static PySequenceMethods heldstack_as_sequence;
static PyMappingMethods heldstack_as_mapping;
static ssizeobjargproc g_list_ass_item;
static objobjargproc g_list_ass_subscript;
static binaryfunc g_list_inplace_concat;

#define HELD_BUMP(o) (((HeldStackObject *)(o))->version++)
#define HELD_DEAD(o) (((HeldStackObject *)(o))->dead)
#define IS_HELD_STACK(o) (Py_TYPE(o) == &HeldStack_Type)
/* Stacks this long or longer leave a released bottom entry as None rather than move the rest down. */
#define HELD_LAZY_AT 32

/* Drop the released entries left at the bottom of a held stack (no Python code, no allocation: the
 * Nones' references are dropped, the rest moved down once). */
static void
held_compact(PyObject *held)
{
    Py_ssize_t dead = HELD_DEAD(held), n = PyList_GET_SIZE(held), k = 0;
    HELD_DEAD(held) = 0;
    PyObject **items = ((PyListObject *)held)->ob_item;
    while (k < dead && k < n && items[k] == Py_None) k++; /* (the list changed behind our back: only those) */
    if (k == 0) return;
    for (Py_ssize_t i = 0; i < k; i++) Py_DECREF(items[i]);
    memmove(items, items + k, sizeof(PyObject *) * (size_t)(n - k));
    Py_SET_SIZE(held, n - k);
    HELD_BUMP(held);
}

#define HELD_SETTLE(o) \
    do { \
        if (HELD_DEAD(o)) held_compact(o); \
    } while (0)

static int
heldstack_ass_item(PyObject *self, Py_ssize_t i, PyObject *v)
{
    HELD_SETTLE(self);
    HELD_BUMP(self);
    return g_list_ass_item(self, i, v);
}

static int
heldstack_ass_subscript(PyObject *self, PyObject *key, PyObject *v)
{
    HELD_SETTLE(self);
    HELD_BUMP(self);
    return g_list_ass_subscript(self, key, v);
}

static PyObject *
heldstack_inplace_concat(PyObject *self, PyObject *other)
{
    HELD_SETTLE(self);
    HELD_BUMP(self);
    return g_list_inplace_concat(self, other);
}

static PyObject *
heldstack_append(PyObject *self, PyObject *item)
{
    HELD_SETTLE(self);
    HELD_BUMP(self);
    if (PyList_Append(self, item) < 0) return NULL;
    Py_RETURN_NONE;
}

/* The list methods that change it, by index in heldstack_forwarded (bumped, then list's own). */
static const char *const heldstack_forwarded[] = {"extend", "insert", "pop", "remove", "clear", "sort", "reverse"};
#define HELD_FORWARDED 7
static PyObject *g_list_methods[HELD_FORWARDED];

static PyObject *
heldstack_forward(int which, PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HELD_SETTLE(self);
    HELD_BUMP(self);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *stack[8];
    if (nargs + nkw + 1 > 8) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return NULL;
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[i + 1] = args[i];
    return PyObject_Vectorcall(g_list_methods[which], stack, (size_t)(nargs + 1), kwnames);
}

#define HELD_FORWARD(name, which)                                                                         \
    static PyObject *heldstack_##name(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,         \
                                      PyObject *kwnames)                                                 \
    {                                                                                                     \
        return heldstack_forward(which, self, args, (size_t)nargsf, kwnames);                            \
    }
HELD_FORWARD(extend, 0)
HELD_FORWARD(insert, 1)
HELD_FORWARD(pop, 2)
HELD_FORWARD(remove, 3)
HELD_FORWARD(clear, 4)
HELD_FORWARD(sort, 5)
HELD_FORWARD(reverse, 6)

#define HELD_METHOD(name) {#name, (PyCFunction)(void (*)(void))heldstack_##name, METH_FASTCALL | METH_KEYWORDS, NULL}
/* Drop the released entries left at the bottom (lockorder.held_stack() calls it when it finds one). */
static PyObject *
heldstack_compact(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    HELD_SETTLE(self);
    Py_RETURN_NONE;
}

static PyMethodDef heldstack_methods[] = {
    {"append", heldstack_append, METH_O, NULL},
    {"_compact", heldstack_compact, METH_NOARGS, NULL},
    HELD_METHOD(extend),
    HELD_METHOD(insert),
    HELD_METHOD(pop),
    HELD_METHOD(remove),
    HELD_METHOD(clear),
    HELD_METHOD(sort),
    HELD_METHOD(reverse),
    {NULL},
};

static PyMemberDef heldstack_members[] = {
    {"version", T_ULONGLONG, offsetof(HeldStackObject, version), READONLY, "bumped by every change"},
    {NULL},
};

/* A static type (its instances hold no reference to it, as list's own dealloc expects). */
static int
heldstack_ready(PyObject *module)
{
    for (int i = 0; i < HELD_FORWARDED; i++) {
        g_list_methods[i] = PyObject_GetAttrString((PyObject *)&PyList_Type, heldstack_forwarded[i]);
        if (g_list_methods[i] == NULL) return -1;
    }
    heldstack_as_sequence = *PyList_Type.tp_as_sequence;
    heldstack_as_mapping = *PyList_Type.tp_as_mapping;
    g_list_ass_item = heldstack_as_sequence.sq_ass_item;
    g_list_inplace_concat = heldstack_as_sequence.sq_inplace_concat;
    g_list_ass_subscript = heldstack_as_mapping.mp_ass_subscript;
    heldstack_as_sequence.sq_ass_item = heldstack_ass_item;
    heldstack_as_sequence.sq_inplace_concat = heldstack_inplace_concat;
    heldstack_as_mapping.mp_ass_subscript = heldstack_ass_subscript;
    HeldStack_Type.tp_name = "conctools._speedups.HeldStack";
    HeldStack_Type.tp_basicsize = sizeof(HeldStackObject);
    HeldStack_Type.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
    HeldStack_Type.tp_doc = "A thread's held-locks stack: a list whose version is bumped by every change.";
    HeldStack_Type.tp_base = &PyList_Type;
    HeldStack_Type.tp_traverse = PyList_Type.tp_traverse;
    HeldStack_Type.tp_clear = PyList_Type.tp_clear;
    HeldStack_Type.tp_methods = heldstack_methods;
    HeldStack_Type.tp_members = heldstack_members;
    HeldStack_Type.tp_as_sequence = &heldstack_as_sequence;
    HeldStack_Type.tp_as_mapping = &heldstack_as_mapping;
    if (PyType_Ready(&HeldStack_Type) < 0) return -1;
    return PyModule_AddObject(module, "HeldStack", Py_NewRef((PyObject *)&HeldStack_Type));
}

/* The calling thread's held-locks stack (lockorder._local.stack, a new reference), also kept in
 * its thread-state dict for the thread-local cache. */
static PyObject *
thread_held(unsigned long long tid)
{
    tls_check(tid);
    if (t_held != NULL) {
        return Py_NewRef(t_held);
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
    PyObject *tsdict = PyThreadState_GetDict(); /* borrowed */
    if (tsdict != NULL && PyDict_SetItem(tsdict, g_key_held, held) == 0) {
        t_held = held;
    }
    else {
        PyErr_Clear();
    }
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

/* -- LockRef: a held entry's reference to its lock and its serial, in one small object (issue 12) ------------
 * The entry's first and fourth items, where a weak reference and an int were (80 + 32 bytes per lock for its
 * life, the first a GC object counted towards a collection): 32 bytes, no GC header. Called, it returns the
 * lock, or None once the lock is gone: the lock clears it first thing when it is deallocated or cleared by the
 * collector, where its weak references are cleared. It hashes and compares as its serial, an int, so that the
 * lock-order tables (keyed by serial) take either, and entries of Python-level primitives (a weak reference
 * and an int) mix with these. 40,000 futures held by wait() kept 8.6 MiB of weak references and ints. */
typedef struct {
    PyObject_HEAD
    PyObject *obj; /* the lock (borrowed), NULL once it is gone */
    unsigned long long serial;
} LockRefObject;

static PyTypeObject LockRef_Type = {PyVarObject_HEAD_INIT(NULL, 0)};
#define IS_LOCKREF(o) Py_IS_TYPE((o), &LockRef_Type)
/* A serial of the lock-order tables: an int, or a LockRef (comparing them runs no Python code). */
#define IS_SERIAL(o) (PyLong_CheckExact(o) || IS_LOCKREF(o))

static PyObject *
lockref_call(LockRefObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a LockRef takes no arguments");
        return NULL;
    }
    return Py_NewRef(self->obj != NULL ? self->obj : Py_None);
}

static Py_hash_t
lockref_hash(LockRefObject *self)
{
    /* as the int's: serials are far below the modulus of int hashing (2**61 - 1) */
    Py_hash_t h = (Py_hash_t)(self->serial % ((1ULL << 61) - 1));
    return h == -1 ? -2 : h;
}

/* The serial of a LockRef or of a non-negative int: 1, else 0 (no exception set). */
static int
serial_value(PyObject *o, unsigned long long *v)
{
    if (IS_LOCKREF(o)) {
        *v = ((LockRefObject *)o)->serial;
        return 1;
    }
    if (!PyLong_CheckExact(o)) return 0;
    *v = PyLong_AsUnsignedLongLong(o);
    if (*v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static PyObject *
lockref_richcompare(PyObject *a, PyObject *b, int op)
{
    unsigned long long x, y;
    if (!serial_value(a, &x) || !serial_value(b, &y)) Py_RETURN_NOTIMPLEMENTED;
    Py_RETURN_RICHCOMPARE(x, y, op);
}

static PyObject *
lockref_repr(LockRefObject *self)
{
    return PyUnicode_FromFormat("%llu", self->serial); /* (as the int: a cycle's keys are "class#serial") */
}

static PyObject *
lockref_index(LockRefObject *self)
{
    return PyLong_FromUnsignedLongLong(self->serial);
}

static PyNumberMethods lockref_as_number = {.nb_index = (unaryfunc)lockref_index, .nb_int = (unaryfunc)lockref_index};

static void
lockref_dealloc(PyObject *self)
{
    Py_TYPE(self)->tp_free(self);
}

static int
lockref_ready(PyObject *module)
{
    LockRef_Type.tp_name = "conctools._speedups.LockRef";
    LockRef_Type.tp_basicsize = sizeof(LockRefObject);
    LockRef_Type.tp_flags = Py_TPFLAGS_DEFAULT;
    LockRef_Type.tp_doc = "A held-lock entry's reference to its lock (None once gone), hashing and comparing as its serial.";
    LockRef_Type.tp_dealloc = lockref_dealloc;
    LockRef_Type.tp_call = (ternaryfunc)lockref_call;
    LockRef_Type.tp_hash = (hashfunc)lockref_hash;
    LockRef_Type.tp_richcompare = lockref_richcompare;
    LockRef_Type.tp_repr = (reprfunc)lockref_repr;
    LockRef_Type.tp_as_number = &lockref_as_number;
    if (PyType_Ready(&LockRef_Type) < 0) return -1;
    return PyModule_AddObject(module, "LockRef", Py_NewRef((PyObject *)&LockRef_Type));
}

/* The lock's LockRef (new reference), made at its first entry; a serial changed since (a new identity for
 * the graph) makes a new one, and the old one then says the lock is gone. */
static PyObject *
lock_ref(CoreObject *self)
{
    LockRefObject *r = (LockRefObject *)self->lockref;
    if (r != NULL && r->serial == self->serial) return Py_NewRef((PyObject *)r);
    if (r != NULL) {
        r->obj = NULL;
        Py_CLEAR(self->lockref);
    }
    r = PyObject_New(LockRefObject, &LockRef_Type);
    if (r == NULL) return NULL;
    r->obj = (PyObject *)self;
    r->serial = self->serial;
    self->lockref = (PyObject *)r;
    return Py_NewRef((PyObject *)r);
}

/* The lock is going (deallocated, or cleared by the collector): its LockRef says so from now on. */
static void
lock_ref_clear(CoreObject *self)
{
    if (self->lockref != NULL) {
        ((LockRefObject *)self->lockref)->obj = NULL;
        Py_CLEAR(self->lockref);
    }
}

/* -- RunIndex: serials -> small ints (a run's index of its locks, lockorder's run[2]; the graph's counts
 * of out-edges, lockorder._inst_has_out) ------------------------------------------------------------ *
 * What a dict of serial -> int does for lockorder, in 12 bytes a slot (the serial's value and the int)
 * rather than a dict entry and often an int object per lock (~33-65 bytes): 40,000 futures held by one
 * wait() are one run of 40,000 locks, and the runs of the locks alive are kept for the graph (issue 12:
 * memory). Keys are serials, ints or LockRefs, and compare as their value (as in a dict: hash and equality
 * are the int's); nothing else is a key (TypeError). Values are ints from 0 to 2**32 - 2. Holds no
 * reference to anything. */
typedef struct {
    PyObject_HEAD
    Py_ssize_t used;
    Py_ssize_t size;            /* 0, or a power of two: 1 << bits */
    int bits;
    unsigned long long *serials; /* size of them, then size uint32 indexes + 1 (0: an empty slot) */
} RunIndexObject;

static PyTypeObject RunIndex_Type = {PyVarObject_HEAD_INIT(NULL, 0)};
#define IS_RUN_INDEX(o) Py_IS_TYPE((o), &RunIndex_Type)
#define RI_VALS(r) ((uint32_t *)((r)->serials + (r)->size))

/* The key's serial, else -1 with TypeError set. */
static int
ri_key(PyObject *key, unsigned long long *v)
{
    if (serial_value(key, v)) return 0;
    PyErr_Format(PyExc_TypeError, "RunIndex keys are serials (ints or LockRefs), not %.100s", Py_TYPE(key)->tp_name);
    return -1;
}

/* Where serial v's probe starts (size > 0): Fibonacci hashing (the top bits of the product), as serials
 * of one run often go up in steps of 2 or 4. */
static size_t
ri_home(RunIndexObject *r, unsigned long long v)
{
    return (size_t)((v * 0x9E3779B97F4A7C15ULL) >> (64 - r->bits));
}

/* The slot of serial v: where it is, or the empty one it would go in (size > 0). */
static Py_ssize_t
ri_slot(RunIndexObject *r, unsigned long long v)
{
    size_t mask = (size_t)r->size - 1;
    size_t i = ri_home(r, v);
    uint32_t *vals = RI_VALS(r);
    while (vals[i] != 0 && r->serials[i] != v) i = (i + 1) & mask;
    return (Py_ssize_t)i;
}

/* The index of serial v, -1 when it has none. */
static Py_ssize_t
ri_find(RunIndexObject *r, unsigned long long v)
{
    if (r->size == 0) return -1;
    Py_ssize_t i = ri_slot(r, v);
    uint32_t x = RI_VALS(r)[i];
    return x == 0 ? -1 : (Py_ssize_t)x - 1;
}

static int
ri_grow(RunIndexObject *r)
{
    Py_ssize_t size = r->size ? r->size * 2 : 8;
    if (size > PY_SSIZE_T_MAX / 16) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned long long *mem = PyMem_Calloc((size_t)size, sizeof(unsigned long long) + sizeof(uint32_t));
    if (mem == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    RunIndexObject old = *r;
    r->serials = mem;
    r->size = size;
    r->bits = old.size ? old.bits + 1 : 3;
    if (old.size > 0) {
        uint32_t *vals = RI_VALS(&old), *nvals = RI_VALS(r);
        for (Py_ssize_t i = 0; i < old.size; i++) {
            if (vals[i] == 0) continue;
            Py_ssize_t j = ri_slot(r, old.serials[i]);
            r->serials[j] = old.serials[i];
            nvals[j] = vals[i];
        }
        PyMem_Free(old.serials);
    }
    return 0;
}

/* serial v -> index (0 or more): 0, else -1 with an exception set. */
static int
ri_set(RunIndexObject *r, unsigned long long v, Py_ssize_t index)
{
    if (index < 0 || index >= (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "RunIndex: index out of range");
        return -1;
    }
    if ((r->used + 1) * 3 > r->size * 2 && ri_grow(r) < 0) return -1;
    Py_ssize_t i = ri_slot(r, v);
    uint32_t *vals = RI_VALS(r);
    if (vals[i] == 0) r->used++;
    r->serials[i] = v;
    vals[i] = (uint32_t)index + 1;
    return 0;
}

/* Remove serial v: 1, or 0 when it is not there (backward-shift deletion: no tombstones). */
static int
ri_remove(RunIndexObject *r, unsigned long long v)
{
    if (r->size == 0) return 0;
    size_t mask = (size_t)r->size - 1, i = (size_t)ri_slot(r, v);
    uint32_t *vals = RI_VALS(r);
    if (vals[i] == 0) return 0;
    for (size_t j = (i + 1) & mask; vals[j] != 0; j = (j + 1) & mask) {
        size_t home = ri_home(r, r->serials[j]);
        /* j's entry may move back to i when its home is not within (i, j] (cyclically) */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            r->serials[i] = r->serials[j];
            vals[i] = vals[j];
            i = j;
        }
    }
    vals[i] = 0;
    r->used--;
    return 1;
}

static PyObject *
ri_clear(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    RunIndexObject *r = (RunIndexObject *)self;
    PyMem_Free(r->serials);
    r->serials = NULL;
    r->used = r->size = 0;
    r->bits = 0;
    Py_RETURN_NONE;
}

static PyObject *
ri_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "RunIndex() takes no arguments");
        return NULL;
    }
    RunIndexObject *r = (RunIndexObject *)type->tp_alloc(type, 0);
    if (r != NULL) {
        r->used = r->size = 0;
        r->bits = 0;
        r->serials = NULL;
    }
    return (PyObject *)r;
}

static void
ri_dealloc(PyObject *self)
{
    PyMem_Free(((RunIndexObject *)self)->serials);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t
ri_length(PyObject *self)
{
    return ((RunIndexObject *)self)->used;
}

static PyObject *
ri_subscript(PyObject *self, PyObject *key)
{
    unsigned long long v;
    if (ri_key(key, &v) < 0) return NULL;
    Py_ssize_t i = ri_find((RunIndexObject *)self, v);
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return PyLong_FromSsize_t(i);
}

static int
ri_ass_subscript(PyObject *self, PyObject *key, PyObject *value)
{
    unsigned long long v;
    if (ri_key(key, &v) < 0) return -1;
    if (value == NULL) {
        if (ri_remove((RunIndexObject *)self, v)) return 0;
        PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    Py_ssize_t index = PyLong_AsSsize_t(value);
    if (index == -1 && PyErr_Occurred()) return -1;
    return ri_set((RunIndexObject *)self, v, index);
}

static int
ri_contains(PyObject *self, PyObject *key)
{
    unsigned long long v;
    if (!serial_value(key, &v)) return 0; /* (as a dict of ints says of anything else) */
    return ri_find((RunIndexObject *)self, v) >= 0;
}

static PyObject *
ri_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    unsigned long long v;
    Py_ssize_t i = serial_value(args[0], &v) ? ri_find((RunIndexObject *)self, v) : -1;
    if (i >= 0) return PyLong_FromSsize_t(i);
    return Py_NewRef(nargs == 2 ? args[1] : Py_None);
}

static PyObject *
ri_sizeof(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    RunIndexObject *r = (RunIndexObject *)self;
    return PyLong_FromSsize_t((Py_ssize_t)sizeof(RunIndexObject) +
                              r->size * (Py_ssize_t)(sizeof(unsigned long long) + sizeof(uint32_t)));
}

static PyMappingMethods ri_as_mapping = {ri_length, ri_subscript, ri_ass_subscript};
static PySequenceMethods ri_as_sequence = {.sq_contains = ri_contains};
static PyMethodDef ri_methods[] = {
    {"get", (PyCFunction)(void (*)(void))ri_get, METH_FASTCALL, "get(serial, default=None): its index, or default"},
    {"clear", ri_clear, METH_NOARGS, "clear(): remove every serial"},
    {"__sizeof__", ri_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* A serial -> int table of lockorder's (a dict, or a RunIndex): the int of key in *v: 1, 0 when it has none
 * (*v = 0), -1 on an error (set). */
static int
tbl_get(PyObject *t, PyObject *key, Py_ssize_t *v)
{
    *v = 0;
    if (IS_RUN_INDEX(t)) {
        unsigned long long k;
        if (ri_key(key, &k) < 0) return -1;
        Py_ssize_t i = ri_find((RunIndexObject *)t, k);
        if (i < 0) return 0;
        *v = i;
        return 1;
    }
    PyObject *o = PyDict_GetItemWithError(t, key); /* borrowed */
    if (o == NULL) return PyErr_Occurred() ? -1 : 0;
    *v = PyLong_AsSsize_t(o);
    return *v == -1 && PyErr_Occurred() ? -1 : 1;
}

/* key -> v in table t: 0, else -1 with an exception set. */
static int
tbl_set(PyObject *t, PyObject *key, Py_ssize_t v)
{
    if (IS_RUN_INDEX(t)) {
        unsigned long long k;
        return ri_key(key, &k) < 0 ? -1 : ri_set((RunIndexObject *)t, k, v);
    }
    PyObject *o = PyLong_FromSsize_t(v);
    int r = o != NULL ? PyDict_SetItem(t, key, o) : -1;
    Py_XDECREF(o);
    return r;
}

/* Remove key from table t: 0, else -1 with an exception set (KeyError when it is not there). */
static int
tbl_del(PyObject *t, PyObject *key)
{
    return IS_RUN_INDEX(t) ? ri_ass_subscript(t, key, NULL) : PyDict_DelItem(t, key);
}

#define IS_TABLE(o) (IS_RUN_INDEX(o) || PyDict_CheckExact(o))

static int
run_index_ready(PyObject *module)
{
    RunIndex_Type.tp_name = "conctools._speedups.RunIndex";
    RunIndex_Type.tp_basicsize = sizeof(RunIndexObject);
    RunIndex_Type.tp_flags = Py_TPFLAGS_DEFAULT;
    RunIndex_Type.tp_doc = "Lock order's serials -> small ints (a run's index of its locks, the graph's out-edge counts): "
                           "a compact dict.";
    RunIndex_Type.tp_new = ri_new;
    RunIndex_Type.tp_dealloc = ri_dealloc;
    RunIndex_Type.tp_as_mapping = &ri_as_mapping;
    RunIndex_Type.tp_as_sequence = &ri_as_sequence;
    RunIndex_Type.tp_methods = ri_methods;
    RunIndex_Type.tp_hash = PyObject_HashNotImplemented;
    if (PyType_Ready(&RunIndex_Type) < 0) return -1;
    return PyModule_AddObject(module, "RunIndex", Py_NewRef((PyObject *)&RunIndex_Type));
}

/* The lock a held entry's first item refers to (a LockRef, or a weak reference: a Python-level primitive's):
 * borrowed, and only its identity may be used; Py_None once it is gone; NULL for anything else (no
 * exception set). */
static PyObject *
held_ref_target(PyObject *ref)
{
    if (IS_LOCKREF(ref)) {
        PyObject *o = ((LockRefObject *)ref)->obj;
        return o != NULL ? o : Py_None;
    }
    if (!PyWeakref_CheckRef(ref)) return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    int r = PyWeakref_GetRef(ref, &obj);
    if (r < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (r == 0) return Py_None;
    Py_DECREF(obj); /* (alive, so held elsewhere: only its identity is used) */
    return obj;
#else
    PyObject *obj = PyWeakref_GetObject(ref); /* borrowed */
    if (obj == NULL) PyErr_Clear();
    return obj;
#endif
}

/* Acquisitions after which a lock keeps the entries of its previous sites (entry_alt). */
#define ENTRY_ALT_AFTER 16
/* Acquisitions after which a lock caches its entry at all (entry_for). */
#define ENTRY_CACHE_AFTER 8

/* The held-stack entry for this lock taken at site: (LockRef, class key, name, LockRef, site) (new reference).
 * It is cached on the lock only once the lock has been taken ENTRY_CACHE_AFTER times, and then at the second
 * entry made in a row for one site (with the previous sites' too from ENTRY_ALT_AFTER: entry_alt): a lock
 * taken a few times (a Future's condition: by set_result(), wait(), as_completed(), result()) keeps no entry
 * once released. Its entries then live only
 * as long as the held stack and lock order's runs need them (issue 12: 40,000 futures held by a wait() kept
 * one more entry each, 80 bytes, for their life). */
static PyObject *
entry_for(CoreObject *self, PyObject *site)
{
    if (self->entry != NULL && PyTuple_GET_ITEM(self->entry, 4) == site) {
        return Py_NewRef(self->entry);
    }
    for (int i = 0; i < 3; i++) {
        PyObject *alt = self->entry_alt[i];
        if (alt != NULL && PyTuple_GET_ITEM(alt, 4) == site) {
            /* Swapped with the current one (no reference changes hands, nothing is freed). */
            self->entry_alt[i] = self->entry;
            self->entry = alt;
            return Py_NewRef(alt);
        }
    }
    PyObject *wref = NULL, *key = NULL, *name = NULL, *entry = NULL;
    if (self->stats == NULL) return NULL;
    g_allocated = 1;
    wref = lock_ref(self);
    if (wref == NULL) goto done;
    if (self->ckey == NULL) {
        /* (the lock's stats never change: a Future's condition is taken at ~6 sites once each, an attribute
         * lookup saved at every one but the first; and the last stats' key is kept, for the next lock of
         * that class: the futures of a fan-out are many locks of one class, each taken a few times) */
        static PyObject *last_stats, *last_key; /* (strong references: a stats object never changes its key) */
        if (self->stats != last_stats) {
            PyObject *k = PyObject_GetAttr(self->stats, s_key);
            if (k == NULL) goto done;
            Py_XSETREF(last_key, k);
            Py_XSETREF(last_stats, Py_NewRef(self->stats));
        }
        self->ckey = Py_NewRef(last_key);
    }
    key = Py_NewRef(self->ckey);
    name = Py_NewRef(self->name != NULL ? self->name : self->created); /* (it may have been renamed) */
    entry = PyTuple_Pack(5, wref, key, name, wref, site);
    if (entry != NULL) {
        /* The entry cannot be part of a reference cycle: the garbage collector need not walk it (lock-order
         * records keep thousands alive). */
        if (PyObject_GC_IsTracked(entry)) PyObject_GC_UnTrack(entry);
        /* The oldest alternative goes (a tuple of ours: the held stack may still have it). A lock taken
         * only a few times keeps no alternatives: a Future's condition is taken at ~5 sites once each,
         * and 40,000 futures held by wait() kept ~4 entries each alive (issue 12: memory). */
        PyObject *oldest;
        if (self->n >= ENTRY_ALT_AFTER) {
            oldest = self->entry_alt[2];
            self->entry_alt[2] = self->entry_alt[1];
            self->entry_alt[1] = self->entry_alt[0];
            self->entry_alt[0] = self->entry;
            self->entry = Py_NewRef(entry);
        }
        else if (self->n >= ENTRY_CACHE_AFTER && (const void *)site == self->miss_site) {
            oldest = self->entry;
            self->entry = Py_NewRef(entry);
        }
        else {
            oldest = NULL; /* not cached (yet): see above */
            self->miss_site = site;
        }
        Py_XDECREF(oldest);
    }
done:
    Py_XDECREF(wref);
    Py_XDECREF(key);
    Py_XDECREF(name);
    return entry;
}

static int
known_from(CoreObject *self, PyObject *h)
{
    for (int i = 0; i < 2; i++) {
        if (self->known[i] == h) return 1;
    }
    return 0;
}

static void
remember_known(CoreObject *self, PyObject *h)
{
    for (int i = 0; i < 2; i++) {
        if (self->known[i] == NULL) {
            self->known[i] = Py_NewRef(h);
            return;
        }
    }
    Py_SETREF(self->known[1], Py_NewRef(h));
}

/* Is the edge between the classes from_key -> to_key in the graph (lockorder._edges)? 1 yes (then remembered
 * on the lock: known_from()), 0 no or cannot tell (no exception set). */
static int
class_edge_known(CoreObject *self, PyObject *from_key, PyObject *to_key)
{
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
    remember_known(self, from_key);
    return 1;
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
        for (int i = 0; i < 2; i++) Py_CLEAR(self->known[i]);
        self->known_gen = gen;
    }
    PyObject *to_key = PyTuple_GET_ITEM(entry, 1);
    Py_ssize_t n = PyList_GET_SIZE(held);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(held, i);
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) < 2) {
            return 0;
        }
        if (known_from(self, PyTuple_GET_ITEM(h, 1))) {
            continue; /* (a lock of that class: not this one, and the edge is known) */
        }
        PyObject *other = held_ref_target(PyTuple_GET_ITEM(h, 0)); /* (only its identity is needed) */
        if (other == NULL || other == Py_None) {
            return 0; /* not an entry, or dropped while held: check() prunes it */
        }
        if (other == (PyObject *)self) {
            continue; /* re-entry is not an edge */
        }
        PyObject *from_key = PyTuple_GET_ITEM(h, 1);
        int same = PyObject_RichCompareBool(from_key, to_key, Py_EQ);
        if (same != 0) {
            PyErr_Clear();
            return 0; /* same class: ordered per instance, in Python */
        }
        if (!class_edge_known(self, from_key, to_key)) return 0;
    }
    return 1;
}

/* Is item i of list l the object o (no comparison that could run code)? */
#define LIST_IS(l, i, o) (PyList_GET_ITEM((l), (i)) == (o))

/* An int in a one-item list (lockorder's counters), or -1. */
static Py_ssize_t
counter_of(PyObject *list)
{
    if (list == NULL || !PyList_CheckExact(list) || PyList_GET_SIZE(list) < 1) return -1;
    Py_ssize_t n = PyLong_AsSsize_t(PyList_GET_ITEM(list, 0));
    if (n == -1 && PyErr_Occurred()) PyErr_Clear();
    return n;
}

/* Is lockorder.check running in this thread (a finalizer run by its allocations takes a lock)? It says so
 * in a C thread-local (order_checking()) beside its lockorder._local.checking: reading that threading.local
 * from C took ~400 instructions, at each lock of a run. */
static int
order_checking(void)
{
    return t_checking;
}

/* Is lockorder._mutex held (by a Python thread in the middle of an update)? 1 also when it cannot tell. */
static int
order_mutex_locked(void)
{
    if (g_order_locked == NULL) return 1;
    PyObject *locked = PyObject_CallNoArgs(g_order_locked);
    if (locked == NULL) {
        PyErr_Clear();
        return 1;
    }
    Py_DECREF(locked);
    return locked != Py_False;
}

/* The index of `to` in `run`'s list of locks of its class (lockorder's run[2][to]: a lock with an edge into
 * it, 1 or more), with *same that list (borrowed); -1 for anything else (no exception set). */
static Py_ssize_t
run_index(PyObject *run, PyObject *to, PyObject **same)
{
    if (!PyList_CheckExact(run) || PyList_GET_SIZE(run) < 11) return -1;
    PyObject *serials = PyList_GET_ITEM(run, 2);
    *same = PyList_GET_ITEM(run, 5);
    if (!PyList_CheckExact(*same) || !IS_TABLE(serials)) return -1;
    Py_ssize_t n;
    if (tbl_get(serials, to, &n) != 1) {
        PyErr_Clear();
        return -1;
    }
    return n >= 1 && n < PyList_GET_SIZE(*same) ? n : -1;
}

/* The runs of a value of lockorder._inst_in (*v: a run, or a tuple of them): *runs points at them; their
 * count. */
static Py_ssize_t
runs_of(PyObject **v, PyObject ***runs)
{
    if (PyTuple_CheckExact(*v)) {
        *runs = &PyTuple_GET_ITEM(*v, 0);
        return PyTuple_GET_SIZE(*v);
    }
    *runs = v;
    return 1;
}

/* The serial that `run`'s edge into `to` is from (borrowed: the run keeps it), or NULL (no exception set):
 * the entry before `to`'s in the run's locks of the class (lockorder._pred). */
static PyObject *
run_pred(PyObject *run, PyObject *to)
{
    PyObject *same;
    Py_ssize_t i = run_index(run, to, &same);
    if (i < 0) return NULL;
    PyObject *h = PyList_GET_ITEM(same, i - 1);
    if (!PyTuple_CheckExact(h) || PyTuple_GET_SIZE(h) < 5) return NULL;
    return PyTuple_GET_ITEM(h, 3);
}

/* Is `frm` -> `to` an edge of the graph (`known`: lockorder._inst_in[to], a run or a tuple of them)?
 * 1 yes, 0 no, -1 cannot tell (Python looks). Serials are ints or LockRefs: comparing them runs no code. */
static int
edge_in(PyObject *known, PyObject *frm, PyObject *to)
{
    PyObject **runs;
    Py_ssize_t k = runs_of(&known, &runs); /* (anything but a run: run_pred() says so) */
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *p = run_pred(runs[i], to);
        if (p == NULL) return -1;
        if (!IS_SERIAL(p) || !IS_SERIAL(frm)) return -1;
        int eq = PyObject_RichCompareBool(p, frm, Py_EQ);
        if (eq != 0) {
            if (eq < 0) PyErr_Clear();
            return eq < 0 ? -1 : 1;
        }
    }
    return 0;
}

/* lockorder._inst_in's new value for a lock whose value was `known` (NULL: none, a run, or a tuple of runs)
 * once `run` has an edge into it too: a new reference, or NULL (an exception set, or none for a value of
 * another shape). */
static PyObject *
runs_with(PyObject *known, PyObject *run)
{
    if (known == NULL) return Py_NewRef(run);
    if (PyList_CheckExact(known)) return PyTuple_Pack(2, known, run);
    if (!PyTuple_CheckExact(known)) return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(known);
    PyObject *into = PyTuple_New(k + 1);
    if (into != NULL) {
        for (Py_ssize_t i = 0; i < k; i++) PyTuple_SET_ITEM(into, i, Py_NewRef(PyTuple_GET_ITEM(known, i)));
        PyTuple_SET_ITEM(into, k, Py_NewRef(run));
    }
    return into;
}

/* The next lock of a run (lockorder._runs, _run_edge): `held` is exactly the held stack its owner had
 * after the run's last lock, and `entry`'s lock is of the run's class and not in it. Adds the lock to the
 * run, and its edge from the previous lock of the run to the graph as lockorder._add_instance_edge does
 * (lockorder._inst_in[to] = the run: no object made), when that needs no stack (its site has all of its
 * stacks), no cycle search (the lock taken leads to no other of its class), no pruning and no warning;
 * 1 when done here; 0 when this lock continues no run (lockorder.check would look at the whole held stack:
 * run_start() may do it); -1 when lockorder.check must look. concurrent.futures.wait() and as_completed() take
 * 24 such locks per call of 25 futures: ~2 us of Python each, ~0.1 us here. Runs with the collector off
 * (nothing it could start may see half an edge) and no Python code; while lockorder._mutex is held (a
 * Python thread in the middle of an update), Python does it. */
static int
run_next(PyObject *held, PyObject *entry)
{
    if (g_runs == NULL || !PyDict_CheckExact(g_runs) || PyDict_GET_SIZE(g_runs) == 0) return 0;
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) < 5 || !PyList_Check(held)) return -1;
    Py_ssize_t n = PyList_GET_SIZE(held);
    if (n < 1) return 0;
    PyObject *key = PyLong_FromVoidPtr(held);
    if (key == NULL) {
        PyErr_Clear();
        return -1;
    }
    PyObject *run = PyDict_GetItemWithError(g_runs, key); /* borrowed */
    Py_DECREF(key);
    if (run == NULL) {
        int failed = PyErr_Occurred() != NULL;
        PyErr_Clear();
        return failed ? -1 : 0;
    }
    if (!PyList_CheckExact(run) || PyList_GET_SIZE(run) < 11) return -1;
    PyObject *expect = PyList_GET_ITEM(run, 0); /* a list, or a versioned stack's expected length (an int) */
    PyObject *serials = PyList_GET_ITEM(run, 2);
    PyObject *same = PyList_GET_ITEM(run, 5);
    PyObject *to = PyTuple_GET_ITEM(entry, 3);
    if ((IS_HELD_STACK(held) ? !PyLong_CheckExact(expect) : !PyList_CheckExact(expect)) || !IS_TABLE(serials) ||
        !PyList_CheckExact(same) || !IS_SERIAL(to)) {
        return -1; /* (not a shape Python makes: it looks) */
    }
    if ((IS_HELD_STACK(held) ? PyLong_AsSsize_t(expect) : PyList_GET_SIZE(expect)) != n) {
        PyErr_Clear();
        return 0; /* (not the stack the run left) */
    }
    /* A site that may still need stacks: Python takes them, for a new edge (one already known, as
     * when as_completed() takes the futures a wait() took before, needs none). */
    int stacks_done = PyList_GET_ITEM(run, 6) == PyTuple_GET_ITEM(entry, 4);
    long long version = -1;
    if (IS_HELD_STACK(held)) {
        /* The version it had once the run's last lock was pushed (that push made it so: the same
         * length and innermost lock besides rule out a failed acquire followed by another change). */
        version = PyLong_AsLongLong(PyList_GET_ITEM(run, 9));
        if (version == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        if (version < 0 || (unsigned long long)version != ((HeldStackObject *)held)->version) {
            return 0; /* (its innermost lock: the run's last, below) */
        }
    }
    else {
        if (!PyList_CheckExact(held)) return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!LIST_IS(expect, i, PyList_GET_ITEM(held, i))) return 0;
        }
    }
    PyObject *run_key = PyList_GET_ITEM(run, 1), *to_key = PyTuple_GET_ITEM(entry, 1);
    if (run_key != to_key) {
        int eq = PyObject_RichCompareBool(run_key, to_key, Py_EQ);
        if (eq != 1) {
            PyErr_Clear();
            return eq == 0 ? 0 : -1;
        }
    }
    Py_ssize_t ignored;
    int in_run = tbl_get(serials, to, &ignored);
    if (in_run != 0) {
        PyErr_Clear();
        return in_run == 1 ? 0 : -1; /* (in the run: a re-entry, which the whole walk skips) */
    }
    PyObject *inner = PyList_GET_ITEM(held, n - 1);
    if (!PyTuple_CheckExact(inner) || PyTuple_GET_SIZE(inner) < 5) {
        return -1;
    }
    Py_ssize_t n_same = PyList_GET_SIZE(same);
    if (n_same < 1 || PyList_GET_ITEM(same, n_same - 1) != inner) return 0; /* (the run's last lock) */
    PyObject *prev = held_ref_target(PyTuple_GET_ITEM(inner, 0));
    if (prev == NULL || prev == Py_None) {
        return 0;
    }
    if (order_checking() || order_mutex_locked()) return -1;
    Py_ssize_t count = counter_of(g_inst_count), skip = counter_of(g_inst_full_skip);
    Py_ssize_t prune_at = counter_of(g_inst_prune_at);
    if (count < 0 || skip != 0 || prune_at < 0 || count >= g_inst_max_edges) return -1;
    PyObject *frm = PyTuple_GET_ITEM(inner, 3);
    if (!IS_SERIAL(frm)) return -1;
    PyObject *known = PyDict_GetItemWithError(g_inst_in, to); /* borrowed */
    if (known == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    int edge_known = 0;
    if (known != NULL) {
        edge_known = edge_in(known, frm, to);
        if (edge_known < 0) return -1;
    }
    if (!edge_known && !stacks_done) return -1;
    if (!edge_known && PyDict_GET_SIZE(g_inst_in) + (known == NULL) >= prune_at) {
        return -1; /* Python prunes */
    }
    if (!edge_known) {
        int leads_on = tbl_get(g_inst_has_out, to, &ignored);
        if (leads_on != 0) {
            PyErr_Clear();
            return -1; /* the new edge may close a cycle: Python looks */
        }
    }
    g_allocated = 1;
    int gc_was = PyGC_Disable(); /* no collection (no finalizer) until the run and the graph agree */
    int ok = 0;
    PyObject *into = NULL, *n_count = NULL;
    /* The run (lockorder._run_edge): the lock, then its index (what the graph reads it by) */
    if (version >= 0) {
        PyObject *length = PyLong_FromSsize_t(n + 1);
        if (length == NULL || PyList_SetItem(run, 0, length) < 0) goto done;
    }
    else if (PyList_Append(expect, entry) < 0) {
        goto done;
    }
    if (PyList_Append(same, entry) < 0 || tbl_set(serials, to, n_same) < 0) goto done;
    if (version >= 0) {
        PyObject *next = PyLong_FromLongLong(version + 1); /* after this lock's push */
        if (next == NULL || PyList_SetItem(run, 9, next) < 0) goto done;
    }
    if (!edge_known) {
        into = runs_with(known, run);
        if (into == NULL) goto done;
        Py_ssize_t outs;
        if (tbl_get(g_inst_has_out, frm, &outs) < 0 || outs < 0) goto done;
        n_count = PyLong_FromSsize_t(count + 1);
        if (n_count == NULL) goto done;
        /* The graph (no allocation of a tracked object from here: dicts and tables only grow). The count
         * first: should a later step fail, a lock said to lead on only makes a cycle search that finds none. */
        if (tbl_set(g_inst_has_out, frm, outs + 1) < 0) goto done;
        if (PyDict_SetItem(g_inst_in, to, into) < 0) goto done;
        if (PyList_SetItem(g_inst_count, 0, Py_NewRef(n_count)) < 0) goto done;
    }
    ok = 1;
done:
    Py_XDECREF(into);
    Py_XDECREF(n_count);
    if (!ok) {
        PyErr_Clear();
        /* (out of memory, half-way: the held stack no longer matches the run, the next lock starts a new one) */
        PyDict_Clear(g_runs);
    }
    if (gc_was) PyGC_Enable();
    return 1;
}

static PyObject *drop_dead_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* Set lockorder._inst_count[0] to n; -1 on an error (set). */
static int
set_inst_count(Py_ssize_t n)
{
    PyObject *v = PyLong_FromSsize_t(n);
    return v == NULL ? -1 : PyList_SetItem(g_inst_count, 0, v);
}

/* lockorder._drop_old_runs, for run_start() (its caller has the collector off, and lockorder._mutex free
 * with no Python code run since: no other thread is in the middle of an update). 0, or -1 on an error. */
static int
drop_old_runs(void)
{
    Py_ssize_t n = PyObject_Length(g_run_log);
    if (n < 0) return -1;
    for (Py_ssize_t i = 0; i < n && i < g_runs_looked_at; i++) {
        PyObject *run = PyObject_CallMethodNoArgs(g_run_log, s_popleft);
        if (run == NULL) return -1;
        PyObject *args[3] = {run, g_inst_in, g_inst_has_out};
        PyObject *r = drop_dead_run(NULL, args, 3);
        Py_ssize_t dropped = r == NULL ? -2 : PyLong_AsSsize_t(r);
        Py_XDECREF(r);
        int err = dropped == -2 || PyErr_Occurred() != NULL;
        if (!err && dropped > 0) err = set_inst_count(counter_of(g_inst_count) - dropped) < 0;
        PyErr_Clear();
        if (err || dropped < 0) { /* alive (or an error): it stays, last */
            PyObject *a = PyObject_CallMethodOneArg(g_run_log, s_append, run);
            Py_XDECREF(a);
            PyErr_Clear();
        }
        Py_DECREF(run); /* (a dropped run is freed here: lists, tuples and ints of ours, no finalizer) */
        if (err) return -1;
    }
    return 0;
}

/* The first lock of a run (lockorder.check -> _instance_edge_from -> _add_instance_edge), in C: `entry`'s lock
 * is taken while locks of its class are held, and this thread's held stack is not as a run left it
 * (run_next() said 0). Python walks the held stack, makes the run of the locks of the class held and adds
 * the edge from the innermost of them; this does the same when every lock held is alive and not this one,
 * every edge from a lock of another class is known, the stack is a versioned one with no task running, and
 * the edge needs no stack (its site has all of its stacks), no cycle search, no pruning and no warning.
 * 1 when done here, 0 when lockorder.check must look (nothing changed). A fan-out of futures starts a run at
 * each wait() and as_completed(): ~40k instructions of Python each, a tenth of that here. As run_next(): the
 * collector off and no Python code from the first look at the tables to the last change. */
static int
run_start(CoreObject *self, Me *me, PyObject *held, PyObject *entry)
{
    if (g_inst_stacks_per_site < 0 || g_runs == NULL || !PyDict_CheckExact(g_runs) || g_edges == NULL ||
        !PyDict_Check(g_edges) || me->task != NULL || me->thread == NULL || order_checking()) {
        return 0;
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) < 5 || !IS_HELD_STACK(held)) return 0;
    /* The thread's name first (Thread.name is Python code: whatever it runs comes before the look) */
    PyObject *thread = threadinfo_thread((ThreadInfoObject *)me->thread);
    if (thread == NULL) return 0;
    PyObject *tname = PyObject_GetAttr(thread, s_name);
    Py_DECREF(thread);
    if (tname == NULL) {
        PyErr_Clear();
        return 0;
    }
    g_allocated = 1;
    int gc_was = PyGC_Disable(); /* no collection (no finalizer) until the run and the graph agree */
    int done = 0, started = 0;
    PyObject *same = NULL, *serials = NULL, *run = NULL, *site_key = NULL, *into = NULL, *run_id = NULL;
    PyObject *key = PyTuple_GET_ITEM(entry, 1), *to = PyTuple_GET_ITEM(entry, 3), *site = PyTuple_GET_ITEM(entry, 4);
    Py_ssize_t n = PyList_GET_SIZE(held), ignored;
    if (n < 1 || HELD_DEAD(held) != 0 || !IS_SERIAL(to) || order_mutex_locked()) goto done;
    Py_ssize_t count = counter_of(g_inst_count), skip = counter_of(g_inst_full_skip);
    Py_ssize_t prune_at = counter_of(g_inst_prune_at);
    if (count < 0 || skip != 0 || prune_at < 0 || count >= g_inst_max_edges) goto done;
    /* lockorder.check's walk: the locks of the class held, in order; the other classes' edges known */
    same = PyList_New(0);
    if (same == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(held, i);
        if (!PyTuple_CheckExact(h) || PyTuple_GET_SIZE(h) < 5) goto done;
        PyObject *other = held_ref_target(PyTuple_GET_ITEM(h, 0));
        if (other == NULL || other == Py_None) goto done; /* (dropped while held: Python prunes it) */
        if (other == (PyObject *)self) continue;           /* re-entry is not an edge */
        PyObject *h_key = PyTuple_GET_ITEM(h, 1);
        int eq = h_key == key ? 1 : PyObject_RichCompareBool(h_key, key, Py_EQ);
        if (eq < 0) goto done;
        if (eq) {
            if (!IS_SERIAL(PyTuple_GET_ITEM(h, 3)) || PyList_Append(same, h) < 0) goto done;
        }
        else if (!known_from(self, h_key) && !class_edge_known(self, h_key, key)) {
            goto done; /* (a new edge between classes: Python records it) */
        }
    }
    Py_ssize_t n_same = PyList_GET_SIZE(same);
    if (n_same < 1) goto done;
    PyObject *inner = PyList_GET_ITEM(same, n_same - 1), *frm = PyTuple_GET_ITEM(inner, 3);
    int in_same = 0; /* (the lock taken among them: a serial used twice, Python looks) */
    for (Py_ssize_t i = 0; i < n_same && !in_same; i++) {
        in_same = PyTuple_GET_ITEM(PyList_GET_ITEM(same, i), 3) == to;
    }
    if (in_same) goto done;
    /* _add_instance_edge's questions, before anything changes */
    PyObject *known = PyDict_GetItemWithError(g_inst_in, to); /* borrowed */
    if (known == NULL && PyErr_Occurred()) goto done;
    int edge_known = known != NULL ? edge_in(known, frm, to) : 0;
    if (edge_known < 0) goto done;
    if (!edge_known) {
        if (PyTuple_CheckExact(site)) {
            if (PyTuple_GET_SIZE(site) != 2) goto done; /* (not a site code_site() makes) */
            PyObject *code_id = PyLong_FromVoidPtr(PyTuple_GET_ITEM(site, 0)); /* (id(code): see lockorder) */
            site_key = code_id == NULL ? NULL : PyTuple_Pack(3, key, code_id, PyTuple_GET_ITEM(site, 1));
            Py_XDECREF(code_id);
        }
        else {
            site_key = PyTuple_Pack(2, key, site);
        }
        if (site_key == NULL) goto done;
        PyObject *taken = PyDict_GetItemWithError(g_inst_stacks, site_key); /* borrowed */
        if (taken == NULL && PyErr_Occurred()) goto done;
        Py_ssize_t t = taken == NULL ? 0 : PyLong_AsSsize_t(taken);
        if (t == -1 && PyErr_Occurred()) goto done;
        /* (a stack to take for this edge: Python takes it) */
        if (t < g_inst_stacks_per_site && PyDict_GET_SIZE(g_inst_stacks) < 10000) goto done;
        if (PyDict_GET_SIZE(g_inst_in) + (known == NULL) >= prune_at) goto done; /* (Python prunes) */
        int leads_on = tbl_get(g_inst_has_out, to, &ignored);
        if (leads_on != 0) goto done; /* (the new edge may close a cycle: Python looks) */
        Py_ssize_t outs;
        if (tbl_get(g_inst_has_out, frm, &outs) < 0) goto done;
    }
    /* _instance_edge_from: the run */
    serials = RunIndex_Type.tp_alloc(&RunIndex_Type, 0);
    if (serials == NULL) goto done;
    for (Py_ssize_t i = 0; i < n_same; i++) {
        if (tbl_set(serials, PyTuple_GET_ITEM(PyList_GET_ITEM(same, i), 3), i) < 0) goto done;
    }
    if (tbl_set(serials, to, n_same) < 0) goto done;
    PyObject *items[11] = {PyLong_FromSsize_t(n + 1),
                           Py_NewRef(key),
                           Py_NewRef(serials),
                           Py_NewRef(tname),
                           Py_NewRef(Py_None), /* (no task: see above) */
                           Py_NewRef(same),
                           Py_NewRef(edge_known ? Py_None : site), /* (a new edge: the site has its stacks) */
                           PyLong_FromSsize_t(n_same - 1),
                           Py_NewRef(Py_False),
                           PyLong_FromUnsignedLongLong(((HeldStackObject *)held)->version + 1),
                           Py_NewRef(Py_None)};
    run = PyList_New(11);
    for (int i = 0; i < 11; i++) {
        if (run != NULL && items[i] != NULL) {
            PyList_SET_ITEM(run, i, items[i]);
        }
        else {
            Py_XDECREF(items[i]);
            if (run != NULL) PyList_SET_ITEM(run, i, Py_NewRef(Py_None));
            Py_CLEAR(run);
        }
    }
    if (run == NULL) goto done;
    if (PyObject_GC_IsTracked(same)) PyObject_GC_UnTrack(same); /* (nothing in a run refers back to it) */
    if (PyObject_GC_IsTracked(run)) PyObject_GC_UnTrack(run);
    if (PyList_Append(same, entry) < 0) goto done;
    run_id = PyLong_FromVoidPtr(held);
    if (run_id == NULL) goto done;
    /* From here on the tables change: a failure clears lockorder._runs (the next lock starts a new run) */
    started = 1;
    if (PyDict_GET_SIZE(g_runs) >= 1024) PyDict_Clear(g_runs); /* (stacks of threads and tasks that are gone) */
    if (PyDict_SetItem(g_runs, run_id, run) < 0) goto done;
    if (PyObject_Length(g_run_log) > 0 && drop_old_runs() < 0) goto done;
    if (edge_known) {
        done = 1;
        goto done;
    }
    /* _add_instance_edge: the edge (`to` and `frm` are alive: the runs dropped had neither) */
    known = PyDict_GetItemWithError(g_inst_in, to);
    if (known == NULL && PyErr_Occurred()) goto done;
    into = runs_with(known, run);
    if (into == NULL) goto done;
    if (PyDict_SetItem(g_inst_in, to, into) < 0) goto done;
    if (set_inst_count(counter_of(g_inst_count) + 1) < 0) goto done;
    Py_INCREF(Py_True);
    if (PyList_SetItem(run, 8, Py_True) < 0 || drop_old_runs() < 0) goto done;
    PyObject *a = PyObject_CallMethodOneArg(g_run_log, s_append, run);
    if (a == NULL) goto done;
    Py_DECREF(a);
    Py_ssize_t outs;
    if (tbl_get(g_inst_has_out, frm, &outs) < 0 || tbl_set(g_inst_has_out, frm, outs + 1) < 0) goto done;
    done = 1;
done:
    if (started && !done) {
        PyErr_Clear();
        PyDict_Clear(g_runs); /* (out of memory, half-way: the held stack no longer matches a run) */
        done = 1;             /* (Python would find the tables as they are: not worth a second try) */
    }
    PyErr_Clear();
    Py_XDECREF(same);
    Py_XDECREF(serials);
    Py_XDECREF(run);
    Py_XDECREF(site_key);
    Py_XDECREF(into);
    Py_XDECREF(run_id);
    Py_DECREF(tname);
    if (gc_was) PyGC_Enable();
    return done;
}

/* Is a garbage collection due (3.12+ runs one at the next eval-breaker check, which would
 * otherwise come right after the acquire)? Unknown elsewhere: 1. */
static int __attribute__((unused))
gc_due(void)
{
#if CT_INTERNAL_FRAMES && PY_VERSION_HEX >= 0x030D0000
    return _Py_eval_breaker_bit_is_set(_PyThreadState_GET(), _PY_GC_SCHEDULED_BIT) ? 1 : 0;
#elif CT_INTERNAL_FRAMES && PY_VERSION_HEX >= 0x030C0000
    return _Py_atomic_load_relaxed(&_PyInterpreterState_GET()->ceval.gc_scheduled) ? 1 : 0;
#else
    return 1;
#endif
}

/* Python 3.12+: the bookkeeping of a contended wait (its record, the holder snapshot) makes no
 * garbage collection due. 3.12+ runs a collection that an allocation made due at the next eval-breaker
 * check (3.12: of any thread; 3.13: of the allocating one), which after a wait's allocations is the
 * safe point: the waiting thread collects where a plain run never does. A finalizer that then blocks
 * on the contested lock holds that collection open (no other can be made due meanwhile) while the
 * other threads allocate, and the collection due when it ends runs at the next check of the thread
 * that allocates next (3.12: of any thread), e.g. right after a blocking acquire, inside a critical
 * section. So the collector is off while the record is made, and the young generation's count is put
 * back: a wait's allocations are not counted, as they do not exist in a plain run. (3.11 collects
 * inside the allocation itself, before the wait, where nothing is held.) */
typedef struct {
    int enabled; /* the collector was enabled, and is disabled until gc_quiet_end() */
    int count;   /* the young generation's count before */
} GcQuiet;

static void
gc_quiet_begin(GcQuiet *q)
{
    q->enabled = 0;
    q->count = -1;
#if CT_INTERNAL_FRAMES && PY_VERSION_HEX >= 0x030C0000
    q->count = _PyInterpreterState_GET()->gc.generations[0].count;
    q->enabled = PyGC_Disable();
#endif
}

static void
gc_quiet_end(GcQuiet *q)
{
#if CT_INTERNAL_FRAMES && PY_VERSION_HEX >= 0x030C0000
    if (q->count >= 0) {
        struct gc_generation *young = &_PyInterpreterState_GET()->gc.generations[0];
        if (young->count > q->count) young->count = q->count;
    }
    if (q->enabled) PyGC_Enable();
#else
    (void)q;
#endif
}

/* A Python call (its first instruction checks the eval breaker) that runs a collection due, before
 * the acquire. Its finalizers may allocate and make another one due: a few rounds, while one is. */
static void
safe_point(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    for (int round = 0; g_safe_point != NULL && round < 4 && gc_due(); round++) {
        PyObject *r = PyObject_CallNoArgs(g_safe_point);
        Py_XDECREF(r);
        swallow();
    }
#endif
}

/* The last step before an acquire: run a collection that is due. Where the flag can be read, whoever
 * made it due: on 3.12 any thread's allocation does, and conctools' own threads (the samplers, the
 * watchdog) allocate while the program runs; the collection would otherwise run at the first check
 * after the acquire, inside the caller's critical section (the resource tracker's RLock, whose
 * finalizers re-enter it: "ResourceTracker called reentrantly"). A plain run has no such threads.
 * Elsewhere, only when this bookkeeping allocated. */
static void
settle(void)
{
#if CT_INTERNAL_FRAMES && PY_VERSION_HEX >= 0x030C0000
    g_allocated = 0;
    safe_point(); /* a flag read when nothing is due */
#else
    if (g_allocated) {
        g_allocated = 0;
        safe_point();
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
        settle();
        return;
    }
    me->site = caller_site(self);
    me->held = thread_held(me->tid);
    if (me->held == NULL || !PyList_Check(me->held)) {
        Py_CLEAR(me->held);
        settle();
        return;
    }
    if (IS_HELD_STACK(me->held)) HELD_SETTLE(me->held);
    me->entry = entry_for(self, me->site);
    if (me->entry == NULL) {
        swallow();
        Py_CLEAR(me->held);
        settle();
        return;
    }
    int done = PyList_GET_SIZE(me->held) == 0 || edges_known(self, me->held, me->entry);
    if (!done) {
        done = run_next(me->held, me->entry);
        if (done == 0) done = run_start(self, me, me->held, me->entry);
    }
    if (done <= 0) {
        g_allocated = 1;
        PyObject *r = PyObject_CallFunctionObjArgs(g_check, me->held, me->entry, NULL);
        Py_XDECREF(r);
        swallow();
    }
    settle();
}

/* Pop this lock off the held stack it was pushed on (no Python code, no allocation). */
static void
order_pop(CoreObject *self)
{
    PyObject *held = self->held;
    if (held == NULL) {
        return;
    }
    if (PyList_Check(held) && self->lockref != NULL) {
        PyObject *wref = self->lockref; /* (every entry of this lock has it first: entry_for) */
        int lazy = IS_HELD_STACK(held);
        if (lazy && HELD_DEAD(held) > 0 &&
            (HELD_DEAD(held) > PyList_GET_SIZE(held) || PyList_GET_ITEM(held, HELD_DEAD(held) - 1) != Py_None)) {
            held_compact(held); /* (changed behind our back by list's own methods: drops only real Nones) */
        }
        Py_ssize_t dead = lazy ? HELD_DEAD(held) : 0;
        if (lazy) {
            tls_check(current_tid());
            lazy = held == t_held && PyList_GET_SIZE(held) - dead >= HELD_LAZY_AT;
        }
        /* From both ends: the innermost lock is the usual one, but concurrent.futures releases the
         * conditions it took for wait() and as_completed() in the order it took them (outermost first):
         * O(1) either way, where a walk from the top made releasing n of them O(n^2). */
        for (Py_ssize_t i = PyList_GET_SIZE(held) - 1, j = dead; i >= j; i--, j++) {
            Py_ssize_t at = -1;
            PyObject *h = PyList_GET_ITEM(held, i);
            if (PyTuple_Check(h) && PyTuple_GET_SIZE(h) > 0 && PyTuple_GET_ITEM(h, 0) == wref) {
                at = i;
            }
            else {
                h = PyList_GET_ITEM(held, j);
                if (PyTuple_Check(h) && PyTuple_GET_SIZE(h) > 0 && PyTuple_GET_ITEM(h, 0) == wref) at = j;
            }
            if (at >= 0 && at == PyList_GET_SIZE(held) - 1) {
                /* The innermost: the list keeps its room (a stack that goes from empty to one lock and
                 * back, as most do, would otherwise be reallocated at every push and pop). Frees at most
                 * a tuple of ours (its parts live on). */
                Py_SET_SIZE(held, at);
                Py_DECREF(h);
                if (IS_HELD_STACK(held)) {
                    HELD_BUMP(held);
                    if (dead > 0 && at == dead) held_compact(held); /* (only released ones left) */
                }
                break;
            }
            if (at >= 0 && lazy && at == dead) {
                /* The bottom one of a long stack (see HeldStackObject.dead): None in its place, the rest
                 * moved down once half of the stack is such. Frees at most a tuple of ours. */
                ((PyListObject *)held)->ob_item[at] = Py_NewRef(Py_None);
                Py_DECREF(h);
                HELD_DEAD(held) = dead + 1;
                HELD_BUMP(held);
                if (2 * (dead + 1) >= PyList_GET_SIZE(held)) held_compact(held);
                break;
            }
            if (at >= 0) {
                /* Deleting the item frees at most a tuple of ours (its parts live on). */
                if (PyList_SetSlice(held, at, at + 1, NULL) < 0) {
                    PyErr_Clear();
                }
                else if (IS_HELD_STACK(held)) {
                    HELD_BUMP(held);
                }
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
    self->released = 0;
    store_ref(self, &self->othread, me->thread);
    if (me->task != NULL) track(self);
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
            if (IS_HELD_STACK(me->held)) HELD_BUMP(me->held);
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
    self->released = 1;
    if (self->held != NULL) {
        order_pop(self);
    }
    end_hold(self);
}

/* A wait record: one party's blocked wait, from its start to its end (locks._Wait on the pure path).
 *
 * Not a garbage-collector container (issue 12): 20,000 tasks parked on one asyncio semaphore made
 * 20,000 tracked records that lived as long as their waits, which the collector counted as allocations
 * (more young collections), walked in every collection, and promoted to the oldest generation (one
 * more full collection in the asyncio benchmark). The cycles through a record cannot be garbage while
 * it is in use: while it waits, the registry's waiting table holds its primitive, which holds the
 * record in its waiters table, or (a young asyncio wait, see g_young) the extension's list of young
 * waits holds it (so the record, its task and its holders are reachable from a module global until
 * the wait ends, traced or not by the collector), and when it ends, wait_finish() drops
 * its references to the primitive, the task and the holder; what it keeps then (names, sites, thread
 * infos, statistics) cannot refer back to it except through its site's entry (entry.champion), which
 * its class's statistics keep for the life of the process. */
enum {
    W_ACQUIRED, W_END_NS, W_ENTRY, W_EVENT, W_HOLDER, W_HOLDER_EXITED, W_IDENT, W_KEY, W_LOCK_ID, W_LOCK_NAME,
    W_PREV_TASK, W_PREV_THREAD, W_PRIM, W_REC, W_SITE, W_STACK, W_START_NS, W_STATS, W_TASK, W_TASK_NAME,
    W_THREAD, W_THREAD_KEY, W_TIMEOUT_S, W_SETTLED,
    /* (no attribute) an asyncio wait made lazily (see wait_begin): its holder when it began (a task or None)
     * until its end fills what only a sampled wait needs; NULL once it is complete */
    W_LAZY, W_COUNT
};
typedef struct WaitObject {
    PyObject_HEAD
    PyObject *f[W_COUNT];
    /* A young asyncio wait (see young_link): its neighbours in g_young, oldest first, and when it was
     * linked. Not in the waiters tables until promote_waits() puts it there. */
    struct WaitObject *yprev, *ynext;
    long long ysince;
} WaitObject;

/* -- young asyncio waits (issue 12; JFR's cost model: a wait is only worth registering once it lasts) --
 * A lazy asyncio wait (see wait_begin) is not put in its primitive's waiters table nor in the registry's
 * waiting table when it begins: it is linked at the tail of this list, O(1), with no hashing and no
 * allocation. Most end before anything reads those tables (a semaphore's 20,000 parked tasks each wait
 * a fraction of a second) and are unlinked, O(1). Every reader of the tables first calls
 * promote_waits(), which moves the waits at least that old (all of them for 0) from this list into the
 * tables, exactly as wait_begin() used to put them there: the watchdog's scans promote those older than
 * its interval (a shorter wait cannot be part of anything it reports), everything else promotes all.
 * The list holds a reference to each record, as the tables did. With the GIL only: a free-threaded
 * build registers every wait at once. */
static struct WaitObject *g_young_head, *g_young_tail;
static Py_ssize_t g_young_n;

/* Is this wait in g_young? */
static int
is_young(WaitObject *w)
{
    return w->yprev != NULL || g_young_head == w;
}

static PyTypeObject *g_waitrecord_type;
static int g_wait_ready;

static int
setup_wait_type(PyObject *type)
{
    g_wait_ready = 0;
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, g_waitrecord_type) ||
        ((PyTypeObject *)type)->tp_basicsize != g_waitrecord_type->tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "wait_type must be a slot-less subclass of WaitRecord");
        return -1;
    }
    g_wait_ready = 1;
    return 0;
}

/* Store into a field of a wait record (a new reference is taken; NULL clears it). */
static void
wset(PyObject *w, int i, PyObject *v)
{
    Py_XSETREF(((WaitObject *)w)->f[i], Py_XNewRef(v));
}

/* Same, giving away the reference to v (which may be NULL: an error, cleared). */
static void
wsteal(PyObject *w, int i, PyObject *v)
{
    if (v == NULL) {
        PyErr_Clear();
        return;
    }
    Py_XSETREF(((WaitObject *)w)->f[i], v);
}

static PyObject *
wget(PyObject *w, int i)
{
    return ((WaitObject *)w)->f[i]; /* borrowed, may be NULL */
}

static void
waitrecord_clear(WaitObject *self)
{
    for (int i = 0; i < W_COUNT; i++) Py_CLEAR(self->f[i]);
}

static void
waitrecord_dealloc(WaitObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    waitrecord_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

#define WMEMBER(name, idx) {name, T_OBJECT_EX, offsetof(WaitObject, f) + (idx) * sizeof(PyObject *), 0, NULL}
static PyMemberDef waitrecord_members[] = {
    WMEMBER("acquired", W_ACQUIRED), WMEMBER("end_ns", W_END_NS), WMEMBER("entry", W_ENTRY),
    WMEMBER("event", W_EVENT), WMEMBER("holder", W_HOLDER), WMEMBER("holder_exited", W_HOLDER_EXITED),
    WMEMBER("ident", W_IDENT), WMEMBER("key", W_KEY), WMEMBER("lock_id", W_LOCK_ID),
    WMEMBER("lock_name", W_LOCK_NAME), WMEMBER("prev_task", W_PREV_TASK), WMEMBER("prev_thread", W_PREV_THREAD),
    WMEMBER("prim", W_PRIM), WMEMBER("rec", W_REC),
    WMEMBER("site", W_SITE), WMEMBER("stack", W_STACK), WMEMBER("start_ns", W_START_NS),
    WMEMBER("stats", W_STATS), WMEMBER("task", W_TASK), WMEMBER("task_name", W_TASK_NAME),
    WMEMBER("thread", W_THREAD),
    WMEMBER("thread_key", W_THREAD_KEY), WMEMBER("timeout_s", W_TIMEOUT_S), WMEMBER("settled", W_SETTLED), {NULL},
};

static PyType_Slot waitrecord_slots[] = {
    {Py_tp_doc, "One party's blocked wait on a traced primitive (conctools.locks)."},
    {Py_tp_dealloc, waitrecord_dealloc},
    {Py_tp_members, waitrecord_members},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL},
};

static PyType_Spec waitrecord_spec = {
    .name = "conctools._speedups.WaitRecord",
    .basicsize = sizeof(WaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, /* (not a GC container: see above) */
    .slots = waitrecord_slots,
};

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

static PyObject *g_true_minus_one; /* (True, -1) */

/* -- brief waits (issue 12: the lock convoy) ------------------------------------------------------ *
 * A contended acquisition first waits briefly (g_brief_ns) in the real lock, before any bookkeeping. A
 * wait that ends within that window is still counted exactly (per lock and site, its time in the
 * histogram, its holder when it began): what the bookkeeping needs is copied into a slot (stores and
 * references to live objects only: no allocation, no Python code, as the critical section has begun),
 * and brief_drain() records it later, outside any critical section (at a later contended wait's start,
 * as wait_begin() flushes, and from flush_waits()), as wait_settle() records any wait, making its event
 * when it is sampled. A wait still blocked after the window makes the full record as before, dated from
 * the window's start. Taken only where nothing is lost: the lock has been contended before (its holds
 * are timed), and the wait's site is known and has captured its quota of stacks. This cuts what a
 * contended acquisition costs by ~40%, but it is not what ended the threads program's convoy (its waits
 * last hundreds of microseconds: the GIL's hand-offs, not the bookkeeping); the yield below is. */
#define BRIEF_SLOTS 256
#define BRIEF_DRAIN_AT 64
typedef struct {
    PyObject *stats, *entry, *site, *lock_name, *rec; /* strong */
    void *lock_id;
    /* the holder when the wait began (h_thread, h_task strong; h_ident 0: unknown, see contended()) */
    unsigned long h_ident;
    unsigned long long h_tid;
    PyObject *h_thread, *h_task, *h_site; /* (h_task: its name) */
    long long h_since;
    int h_exited;                     /* 1 ended, 0 alive, -1 not known */
    PyObject *prev_thread, *prev_task; /* strong, may be NULL: the previous owner (holder unknown) */
    /* the waiter */
    unsigned long ident;
    unsigned long long tid;
    PyObject *thread, *task; /* strong, may be NULL (task: its name) */
    long long start_ns, end_ns;
    double timeout;
    int acquired;
    int longest; /* (set when it is recorded) */
} BriefWait;
static BriefWait g_brief[BRIEF_SLOTS];
static Py_ssize_t g_brief_n;        /* slots filled */
static Py_ssize_t g_brief_inflight; /* slots promised to waits in their window */
static long long g_brief_ns = 50000;
static PyObject *g_brief_args;      /* (True, g_brief_ns in seconds) */
static long long g_brief_total;     /* waits that ended in their window (tests, benchmarks) */
static long long g_yield_ns = 1000000; /* how long a waiter may let the lock's next owner have the GIL */
static long long g_yields, g_yields_won; /* times it did; times the lock was then free */

/* Has the thread (ident, thread-state id) ended? 1 yes, 0 no, -1 not known. No allocation. */
static int
thread_gone(unsigned long ident, unsigned long long tid)
{
    if (!tid) return -1;
    PyInterpreterState *interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL; ts = PyThreadState_Next(ts)) {
        if (ts->thread_id == ident) return (unsigned long long)PyThreadState_GetID(ts) != tid;
    }
    return 1;
}

static PyObject *wait_site_cached(void);
static long long int_attr(PyObject *obj, PyObject *attr);
static PyObject *s_sites, *s_stacks; /* (defined below) */
static void brief_drain(void);
static PyObject *task_name_of(PyObject *task);

/* The brief wait: 1 acquired (counted, the holder fields set), 0 not within the window (or not taken:
 * *start_ns is then 0), -1 the real lock raised. */
static int
brief_wait(CoreObject *self, Me *me, double timeout, long long *start_ns)
{
    *start_ns = 0;
    if (g_brief_ns <= 0 || g_brief_args == NULL || !g_wait_ready || self->hold == NULL || self->hold == Py_None ||
        self->stats == NULL || (timeout >= 0 && timeout * 1e9 <= (double)g_brief_ns) || g_current == NULL ||
        PyList_GET_SIZE(g_current) < 1) {
        return 0;
    }
    if (g_brief_n >= BRIEF_DRAIN_AT) {
        /* as wait_begin()'s flush: not counted by the collector, and nothing due when the lock is taken */
        GcQuiet quiet;
        gc_quiet_begin(&quiet);
        brief_drain();
        gc_quiet_end(&quiet);
        g_allocated = 0;
        safe_point();
    }
    if (g_brief_n + g_brief_inflight >= BRIEF_SLOTS) return 0;
    PyObject *site = wait_site_cached();
    if (site == NULL) return 0;
    PyObject *sites = PyObject_GetAttr(self->stats, s_sites);
    PyObject *entry = sites != NULL && PyDict_CheckExact(sites) ? PyDict_GetItemWithError(sites, site) : NULL;
    Py_XINCREF(entry);
    Py_XDECREF(sites);
    PyErr_Clear();
    if (entry == NULL || int_attr(entry, s_stacks) < g_stacks_per_site) {
        Py_XDECREF(entry);
        Py_DECREF(site);
        return 0;
    }
    BriefWait b = {0};
    b.stats = Py_NewRef(self->stats);
    b.entry = entry;
    b.site = site;
    b.lock_name = Py_NewRef(self->name != NULL ? self->name : self->created != NULL ? self->created : g_question);
    b.rec = Py_NewRef(PyList_GET_ITEM(g_current, 0));
    b.lock_id = (void *)self;
    int resolve_later = self->released;
    if (!resolve_later && self->owner_ident) {
        b.h_ident = self->owner_ident;
        b.h_tid = self->owner_tid;
        b.h_thread = Py_XNewRef(self->othread);
        b.h_task = Py_XNewRef(self->otask); /* (its name, below: a slot keeps no task alive) */
        b.h_site = Py_XNewRef(self->osite);
        b.h_since = self->osince;
        b.h_exited = thread_gone(b.h_ident, b.h_tid);
    }
    b.ident = me->ident;
    b.tid = me->tid;
    b.thread = Py_XNewRef(me->thread);
    b.task = Py_XNewRef(me->task);
    b.timeout = timeout;
    if ((b.task != NULL && b.task != Py_None) || (b.h_task != NULL && b.h_task != Py_None)) {
        /* Tasks by their names, as wait_begin() keeps them (its Python call as wait_begin() makes it) */
        GcQuiet quiet;
        gc_quiet_begin(&quiet);
        if (b.task != NULL && b.task != Py_None) Py_SETREF(b.task, task_name_of(b.task));
        if (b.h_task != NULL && b.h_task != Py_None) Py_SETREF(b.h_task, task_name_of(b.h_task));
        gc_quiet_end(&quiet);
        g_allocated = 0;
        safe_point();
    }
    PyObject *args = Py_NewRef(g_brief_args); /* (set_brief_wait() may replace it meanwhile) */
    g_brief_inflight++;
    b.start_ns = *start_ns = mono_ns();
    PyObject *r = NULL;
#if defined(__linux__)
    if (resolve_later && g_yield_ns > 0 && (timeout < 0 || timeout * 1e9 > (double)(g_brief_ns + g_yield_ns))) {
        /* The lock went to a thread that waits for the GIL (its blocking acquire has returned, its
         * took() has not run yet): let that thread have the GIL until it has run (its section is
         * usually a few instructions), then try again holding it, without joining the lock's queue.
         * Queued, this thread would be handed the lock as the other one releases it, and would then
         * wait for the GIL in its turn while the one that has it comes back for the lock: a convoy,
         * where every acquisition waits. Not queued, the lock is free when the other one releases it. */
        long long deadline = b.start_ns + g_yield_ns;
        for (;;) {
            int late = 0;
            Py_BEGIN_ALLOW_THREADS
            struct timespec ts;
            for (int spins = 0; __atomic_load_n(&self->released, __ATOMIC_RELAXED); spins++) {
                if (spins < 16) {
                    sched_yield(); /* the other thread usually has the GIL within microseconds */
                }
                else {
                    struct timespec nap = {0, 20000}; /* then without keeping a CPU busy */
                    nanosleep(&nap, NULL);
                }
                if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0 ||
                    (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec >= deadline) {
                    late = 1;
                    break;
                }
            }
            Py_END_ALLOW_THREADS
            g_yields++;
            r = self->rlock ? call_varargs(m_rlock_acquire, f_rlock_acquire, self->lock, g_false_args)
                            : call_varargs(m_lock_acquire, f_lock_acquire, self->lock, g_false_args);
            if (r != Py_False) {
                if (r == Py_True) g_yields_won++;
                break;
            }
            Py_CLEAR(r); /* (a bool: not the last reference) */
            /* Handed again to a thread that waits for the GIL (one queued before): again, until the
             * queue has drained or the time is up; held by a thread that has had the GIL since: queue. */
            if (late || !self->released || mono_ns() >= deadline) break;
        }
    }
    if (r == NULL && !PyErr_Occurred())
#endif
    r = self->rlock ? call_varargs(m_rlock_acquire, f_rlock_acquire, self->lock, args)
                    : call_varargs(m_lock_acquire, f_lock_acquire, self->lock, args);
    g_brief_inflight--;
    Py_DECREF(args); /* a tuple of True and a float: freeing it runs nothing */
    b.end_ns = mono_ns();
    int got = r == Py_True;
    if (r != NULL && !got) { /* still blocked: the full record (the slot's references are dropped) */
        Py_DECREF(r);
        Py_DECREF(b.stats);
        Py_DECREF(b.entry);
        Py_DECREF(b.site);
        Py_DECREF(b.lock_name);
        Py_DECREF(b.rec);
        Py_XDECREF(b.h_thread);
        Py_XDECREF(b.h_task);
        Py_XDECREF(b.h_site);
        Py_XDECREF(b.thread);
        Py_XDECREF(b.task);
        return 0;
    }
    Py_XDECREF(r); /* True: not the last reference */
    /* From here on stores only: the lock may be held (the drain at the next wait's start, or
     * flush_waits(), drops these references, outside any critical section). */
    b.acquired = got;
    if (resolve_later && self->othread != NULL) {
        b.prev_thread = Py_NewRef(self->othread);
        b.prev_task = Py_XNewRef(self->otask);
    }
    g_brief[g_brief_n++] = b; /* (a slot was promised: g_brief_n + g_brief_inflight < BRIEF_SLOTS) */
    g_brief_total++;
    if (got) {
        took(self, me, 1, site);
        PyObject *end = PyLong_FromLongLong(b.end_ns); /* an int: not tracked by the collector */
        if (end != NULL && g_progress != NULL && PyList_Check(g_progress) && PyList_GET_SIZE(g_progress) > 0) {
            PyList_SetItem(g_progress, 0, end); /* the previous stamp is an int */
        }
        else {
            Py_XDECREF(end);
        }
        PyErr_Clear();
        return 1;
    }
    return -1;
}


/* The slow path: prepare the wait (Python, before blocking), block in the real lock, then record
 * the end with stores only. restore: the state for an RLock's _acquire_restore, else NULL. */
static PyObject *
contended(CoreObject *self, Me *me, double timeout, PyObject *restore)
{
    /* First a brief wait in the real lock, before any bookkeeping (see brief_wait()). */
    long long brief_start = 0;
    double remaining = timeout;
    if (restore == NULL) {
        int b = brief_wait(self, me, timeout, &brief_start);
        if (b > 0) return Py_NewRef(Py_True);
        if (b < 0) return NULL;
        if (brief_start && timeout >= 0) {
            remaining = timeout - (double)(mono_ns() - brief_start) / 1e9;
            if (remaining < 0) remaining = 0;
        }
    }
    /* Who holds it: the holder fields, set right after each acquisition with the GIL held. Unless the
     * last holder has released it and the thread that took it since has not had the GIL back yet (its
     * blocking acquire returned without the GIL): then the holder is known only later, and is the
     * thread the lock passed through last before this waiter got it (JFR's previousOwner). */
    int resolve_later = self->released;
    GcQuiet quiet;
    gc_quiet_begin(&quiet);
    PyObject *holder = resolve_later ? Py_NewRef(Py_None) : holder_snapshot(self);
    if (holder == NULL) {
        swallow();
        holder = Py_NewRef(Py_None);
    }
    PyObject *wait = NULL;
    PyObject *to = timeout < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(timeout);
    if (to != NULL) {
        wait = wait_begin((PyObject *)self, to, holder, 0, 1, me->task != NULL ? me->task : Py_None);
        Py_DECREF(to);
    }
    if (wait == NULL) {
        swallow();
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
    if (brief_start && wait != NULL && wait != Py_None) {
        wsteal(wait, W_START_NS, PyLong_FromLongLong(brief_start)); /* the wait began with its window */
    }
    PyObject *args = restore != NULL ? PyTuple_Pack(1, restore)
                     : timeout < 0   ? Py_NewRef(g_true_minus_one)
                                     : Py_BuildValue("(Od)", Py_True, remaining);
    gc_quiet_end(&quiet);
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
        wait_finish(wait, 0, 0);
        Py_XDECREF(wait);
        return NULL;
    }
    int got = r == Py_True;
    Py_DECREF(r);
    if (resolve_later && wait != NULL && wait != Py_None && self->othread != NULL) {
        /* Stores only (existing objects): the previous owner, before took() overwrites it. */
        wset(wait, W_PREV_THREAD, self->othread);
        wset(wait, W_PREV_TASK, self->otask != NULL ? self->otask : Py_None);
    }
    if (got) {
        PyObject *site = wait != NULL && wait != Py_None ? PyObject_GetAttr(wait, s_site) : NULL;
        PyErr_Clear();
        took(self, me, 1, site);
        Py_XDECREF(site); /* the wait record keeps it alive: not the last reference */
    }
    wait_finish(wait, got, 0);
    Py_XDECREF(wait);
    return PyBool_FromLong(got);
}


/* -- wait records (locks._Wait), made and ended in C -------------------------------------------- */

/* Where a wait is: "file.py:LINE" of the first frame outside conctools and the stdlib modules a
 * site skips, cached per (code, offset); also that frame's code (borrowed). New reference. */
#define WSITE_CACHE 512
static struct {
    PyObject *code; /* strong */
    int lasti;
    PyObject *text; /* strong */
} g_wsites[WSITE_CACHE];

static PyObject *
wait_site(PyCodeObject **where)
{
    PyCodeObject *code = NULL;
    int lasti = 0;
    if (!first_frame_without(BIT_CREATION_SKIP, &code, &lasti)) {
        FrameCursor c;
        cursor_start(&c);
        int found = cursor_get(&c, &code, &lasti);
        cursor_end(&c);
        if (!found) {
            *where = NULL;
            return Py_NewRef(g_question);
        }
    }
    *where = code;
    size_t h = (((uintptr_t)code >> 4) * 31u + (uintptr_t)lasti) & (WSITE_CACHE - 1);
    if (g_wsites[h].code == (PyObject *)code && g_wsites[h].lasti == lasti) {
        return Py_NewRef(g_wsites[h].text);
    }
    PyObject *offset = PyLong_FromLong(lasti);
    PyObject *text = offset ? PyObject_CallFunctionObjArgs(g_site_text, (PyObject *)code, offset, NULL) : NULL;
    Py_XDECREF(offset);
    if (text == NULL || !PyUnicode_Check(text)) {
        Py_XDECREF(text);
        swallow();
        return Py_NewRef(g_question);
    }
    Py_XSETREF(g_wsites[h].code, Py_NewRef((PyObject *)code));
    g_wsites[h].lasti = lasti;
    Py_XSETREF(g_wsites[h].text, Py_NewRef(text));
    return text;
}

/* Where an int attribute of a plain Python object lives, found without attribute access's general path
 * (the records these C paths update: LockStats and PoolState keep theirs in the instance dict, a site's
 * statistics in slots): *slot set for a writable object slot, else *dict (a new reference) for an
 * attribute no class attribute shadows. 0: neither (the caller uses attribute access). */
static int
int_field(PyObject *obj, PyObject *attr, PyObject ***slot, PyObject **dict)
{
    PyTypeObject *tp = Py_TYPE(obj);
    *slot = NULL;
    *dict = NULL;
    if (tp->tp_getattro != PyObject_GenericGetAttr || tp->tp_setattro != PyObject_GenericSetAttr) return 0;
    PyObject *descr = _PyType_Lookup(tp, attr); /* borrowed, no error */
    if (descr != NULL) {
        if (!Py_IS_TYPE(descr, &PyMemberDescr_Type)) return 0;
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return 0;
        *slot = (PyObject **)((char *)obj + m->offset);
        return **slot != NULL && PyLong_CheckExact(**slot);
    }
    if (tp->tp_dictoffset == 0) return 0;
    PyObject *d = PyObject_GenericGetDict(obj, NULL);
    if (d == NULL || !PyDict_CheckExact(d)) {
        Py_XDECREF(d);
        PyErr_Clear();
        return 0;
    }
    PyObject *v = PyDict_GetItemWithError(d, attr); /* borrowed */
    if (v == NULL || !PyLong_CheckExact(v)) {
        Py_DECREF(d);
        PyErr_Clear();
        return 0;
    }
    *dict = d;
    return 1;
}

/* obj.attr += delta for an int attribute (no Python code runs). */
static void
bump(PyObject *obj, PyObject *attr, long long delta)
{
    PyObject **slot, *d;
    if (int_field(obj, attr, &slot, &d)) {
        PyObject *cur = slot != NULL ? *slot : PyDict_GetItemWithError(d, attr); /* borrowed */
        long long n = as_ll(cur);
        PyObject *nv = n == -1 && PyErr_Occurred() ? NULL : PyLong_FromLongLong(n + delta);
        if (nv != NULL && slot != NULL) {
            Py_SETREF(*slot, nv);
        }
        else if (nv != NULL) {
            if (PyDict_SetItem(d, attr, nv) < 0) PyErr_Clear();
            Py_DECREF(nv);
        }
        Py_XDECREF(d);
        PyErr_Clear();
        return;
    }
    PyObject *v = PyObject_GetAttr(obj, attr);
    if (v == NULL) {
        PyErr_Clear();
        return;
    }
    long long n = as_ll(v);
    Py_DECREF(v);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return;
    }
    PyObject *nv = PyLong_FromLongLong(n + delta);
    if (nv != NULL) {
        if (PyObject_SetAttr(obj, attr, nv) < 0) PyErr_Clear();
        Py_DECREF(nv);
    }
}

static PyObject *s_sites, *s_contentions, *s_waits, *s_stacks, *s_function, *s_ct_waiters;

/* A primitive's stats, waiters table (made when missing) as new references. */
static PyObject *
prim_stats(PyObject *prim)
{
    if (PyObject_TypeCheck(prim, g_core_type)) return Py_XNewRef(((CoreObject *)prim)->stats);
    if (g_tracked_type != NULL && PyObject_TypeCheck(prim, g_tracked_type))
        return Py_XNewRef(((TrackedObject *)prim)->stats);
    return PyObject_GetAttr(prim, s_ct_stats);
}

static PyObject *
prim_waiters(PyObject *prim)
{
    PyObject **field = NULL;
    if (PyObject_TypeCheck(prim, g_core_type)) {
        track((CoreObject *)prim);
        field = &((CoreObject *)prim)->waiters;
    }
    else if (g_tracked_type != NULL && PyObject_TypeCheck(prim, g_tracked_type)) {
        field = &((TrackedObject *)prim)->waiters;
    }
    if (field != NULL) {
        if (*field == NULL || *field == Py_None) {
            Py_XSETREF(*field, PyDict_New());
        }
        return Py_XNewRef(*field);
    }
    PyObject *d = PyObject_GetAttr(prim, s_ct_waiters);
    if (d == NULL || d == Py_None) {
        Py_XDECREF(d);
        PyErr_Clear();
        d = PyDict_New();
        if (d != NULL && PyObject_SetAttr(prim, s_ct_waiters, d) < 0) PyErr_Clear();
    }
    return d;
}

/* Has the thread of a holder snapshot (ident, key, info, task, site, since) ended? */
static int
snapshot_exited(PyObject *snap)
{
    if (!PyTuple_Check(snap) || PyTuple_GET_SIZE(snap) < 2) return 0;
    unsigned long ident = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(snap, 0));
    unsigned long long key = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(snap, 1));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (!key) return -1; /* not known here: locks.py judges */
    PyInterpreterState *interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL; ts = PyThreadState_Next(ts)) {
        if (ts->thread_id == ident) {
            return (unsigned long long)PyThreadState_GetID(ts) != key;
        }
    }
    return 1;
}

static PyObject *g_holder_exited; /* locks._holder_exited */
static PyObject *g_holder_brief;  /* locks._holder_brief */
static PyObject *s_get_name;

/* A task's name (new reference), or None. */
static PyObject *
task_name_of(PyObject *task)
{
    if (task == NULL || task == Py_None) return Py_NewRef(Py_None);
    PyObject *name = PyObject_CallMethodNoArgs(task, s_get_name);
    if (name == NULL) {
        PyErr_Clear();
        name = PyObject_Repr(task);
        if (name == NULL) {
            PyErr_Clear();
            return Py_NewRef(Py_None);
        }
    }
    return name;
}

static PyObject *
prim_name(PyObject *prim)
{
    if (PyObject_TypeCheck(prim, g_core_type)) {
        CoreObject *c = (CoreObject *)prim;
        return Py_XNewRef(c->name != NULL ? c->name : c->created);
    }
    if (g_tracked_type != NULL && PyObject_TypeCheck(prim, g_tracked_type)) {
        TrackedObject *t = (TrackedObject *)prim;
        return Py_XNewRef(t->name != NULL ? t->name : t->created);
    }
    return PyObject_GetAttr(prim, s_ct_name);
}

/* A holder as a wait record keeps it until recorded: tasks by their names (see locks._holder_brief). */
static PyObject *
holder_brief(PyObject *holder)
{
    if (holder == Py_None) return Py_NewRef(Py_None);
    if (PyTuple_Check(holder) && PyTuple_GET_SIZE(holder) == 6) {
        PyObject *task = PyTuple_GET_ITEM(holder, 3);
        if (task == Py_None || PyUnicode_Check(task)) return Py_NewRef(holder);
        PyObject *name = task_name_of(task);
        PyObject *out = PyTuple_Pack(6, PyTuple_GET_ITEM(holder, 0), PyTuple_GET_ITEM(holder, 1),
                                     PyTuple_GET_ITEM(holder, 2), name, PyTuple_GET_ITEM(holder, 4),
                                     PyTuple_GET_ITEM(holder, 5));
        Py_DECREF(name);
        return out;
    }
    if (PyList_Check(holder)) return PyObject_CallOneArg(g_holder_brief, holder);
    return task_name_of(holder);
}

/* stats.begin_wait(site) for the record w: counted now, without a mutex (no Python code runs in between);
 * its site's entry and, for the first few waits per site, its stack stored into w. where: the code of the
 * wait's site (NULL: found here when it is needed). */
static void
begin_count(PyObject *w, PyObject *stats, PyObject *site, PyCodeObject *where)
{
    PyObject *sites = PyObject_GetAttr(stats, s_sites);
    PyObject *entry = sites && PyDict_Check(sites) ? Py_XNewRef(PyDict_GetItemWithError(sites, site)) : NULL;
    int want_stack = 0;
    if (entry != NULL) {
        bump(stats, s_contentions, 1);
        bump(entry, s_waits, 1);
        PyObject *st = PyObject_GetAttr(entry, s_stacks);
        long long stacks = st ? PyLong_AsLongLong(st) : g_stacks_per_site;
        Py_XDECREF(st);
        PyErr_Clear();
        want_stack = stacks < g_stacks_per_site;
        if (want_stack) bump(entry, s_stacks, 1);
    }
    else {
        PyErr_Clear();
        PyObject *pair = PyObject_CallFunctionObjArgs(g_begin_wait_slow, stats, site, g_empty_str, NULL);
        if (pair != NULL && PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2) {
            entry = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
            want_stack = PyObject_IsTrue(PyTuple_GET_ITEM(pair, 1)) > 0;
        }
        Py_XDECREF(pair);
        swallow();
    }
    Py_XDECREF(sites);
    wsteal(w, W_ENTRY, entry ? entry : Py_NewRef(Py_None));
    if (want_stack) {
        PyObject *limit = PyLong_FromLong(40);
        wsteal(w, W_STACK, limit ? py_raw_stack(NULL, limit) : NULL);
        Py_XDECREF(limit);
        if (where == NULL) {
            int lasti = 0;
            if (!first_frame_without(BIT_CREATION_SKIP, &where, &lasti)) where = NULL;
        }
        if (entry != NULL && where != NULL) {
            PyObject *fn = PyObject_GetAttr(entry, s_function);
            if (fn != NULL && PyUnicode_Check(fn) && PyUnicode_GET_LENGTH(fn) == 0) {
                if (PyObject_SetAttr(entry, s_function, where->co_name) < 0) PyErr_Clear();
            }
            Py_XDECREF(fn);
            PyErr_Clear();
        }
    }
    else {
        wset(w, W_STACK, Py_None);
    }
}

/* The calling thread's ident and thread-state id as ints (new references), kept for the last thread asked:
 * a loop's waits all come from its one thread. */
static unsigned long g_ident_last;
static unsigned long long g_tid_last;
static PyObject *g_ident_obj, *g_tid_obj;

static PyObject *
ident_int(unsigned long ident)
{
    if (g_ident_obj == NULL || g_ident_last != ident) {
        PyObject *v = PyLong_FromUnsignedLong(ident);
        if (v == NULL) return NULL;
        Py_XSETREF(g_ident_obj, v);
        g_ident_last = ident;
    }
    return Py_NewRef(g_ident_obj);
}

static PyObject *
tid_int(unsigned long long tid)
{
    if (g_tid_obj == NULL || g_tid_last != tid) {
        PyObject *v = PyLong_FromUnsignedLongLong(tid);
        if (v == NULL) return NULL;
        Py_XSETREF(g_tid_obj, v);
        g_tid_last = tid;
    }
    return Py_NewRef(g_tid_obj);
}

/* Link a young wait at the tail of g_young (the list takes a reference). */
static void
young_link(WaitObject *w, long long since)
{
    w->ysince = since;
    w->ynext = NULL;
    w->yprev = g_young_tail;
    if (g_young_tail != NULL) g_young_tail->ynext = w;
    else g_young_head = w;
    g_young_tail = w;
    g_young_n += 1;
    Py_INCREF(w);
}

/* Unlink a young wait; the list's reference is handed to the caller. */
static void
young_unlink(WaitObject *w)
{
    if (w->yprev != NULL) w->yprev->ynext = w->ynext;
    else g_young_head = w->ynext;
    if (w->ynext != NULL) w->ynext->yprev = w->yprev;
    else g_young_tail = w->yprev;
    w->yprev = w->ynext = NULL;
    g_young_n -= 1;
}

/* A wait's key in the waiters tables, (ident, id(task)) or (ident, None) without a task (task NULL): a new
 * reference, or NULL (an error set). */
static PyObject *
wait_key(PyObject *ident, PyObject *task)
{
    PyObject *key = ident != NULL ? PyTuple_New(2) : NULL;
    PyObject *task_id = key == NULL ? NULL : task != NULL ? PyLong_FromVoidPtr(task) : Py_NewRef(Py_None);
    if (task_id == NULL) {
        Py_XDECREF(key);
        return NULL;
    }
    PyTuple_SET_ITEM(key, 0, Py_NewRef(ident));
    PyTuple_SET_ITEM(key, 1, task_id);
    /* Two ints: nothing for the collector to walk (it would untrack the tuple at its first collection,
     * after walking it while the wait lasts: 20,000 of them for 20,000 parked tasks). */
    PyObject_GC_UnTrack(key);
    return key;
}

/* A young wait's key and start_ns, made when it leaves g_young (promoted or ended). */
static void
young_complete(WaitObject *w)
{
    if (w->f[W_START_NS] == NULL) wsteal((PyObject *)w, W_START_NS, PyLong_FromLongLong(w->ysince));
    if (w->f[W_KEY] == NULL && w->f[W_TASK] != NULL && w->f[W_TASK] != Py_None) {
        wsteal((PyObject *)w, W_KEY, wait_key(w->f[W_IDENT], w->f[W_TASK]));
    }
}

/* promote_waits(min_age_s=0.0) -> int: the young waits begun at least min_age_s ago go into their
 * primitive's waiters table and the registry's waiting table (see g_young); how many did. Never raises. */
static PyObject *
py_promote_waits(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    double min_age = nargs > 0 ? PyFloat_AsDouble(args[0]) : 0.0;
    if (min_age == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        min_age = 0.0;
    }
    long long cutoff = min_age > 0 ? mono_ns() - (long long)(min_age * 1e9) : LLONG_MAX;
    Py_ssize_t n = 0;
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    /* No collection meanwhile: its finalizers are Python code, which could let another thread run and end
     * a wait half-way through its promotion (and it would then not find it in the tables). */
    int gc_was = PyGC_Disable();
    /* One at a time from the head, each unlinked before anything that could run other code: another
     * thread may link or unlink waits meanwhile. */
    while (g_young_head != NULL && g_young_head->ysince <= cutoff) {
        WaitObject *w = g_young_head;
        young_unlink(w); /* (its reference is ours now) */
        young_complete(w);
        PyObject *key = wget((PyObject *)w, W_KEY), *prim = wget((PyObject *)w, W_PRIM);
        if (key != NULL && prim != NULL && prim != Py_None) {
            Py_INCREF(key);
            Py_INCREF(prim);
            PyObject *waiters = prim_waiters(prim);
            if (waiters != NULL && PyDict_Check(waiters)) {
                if (PyDict_SetItem(waiters, key, (PyObject *)w) < 0 ||
                    (g_waiting != NULL && PyDict_SetItem(g_waiting, key, prim) < 0)) {
                    PyErr_Clear();
                }
                /* Ended meanwhile all the same (its end clears its primitive): out of the tables again. */
                if (wget((PyObject *)w, W_PRIM) != prim) {
                    if (PyDict_GetItemWithError(waiters, key) == (PyObject *)w && PyDict_DelItem(waiters, key) < 0) {
                        PyErr_Clear();
                    }
                    if (g_waiting != NULL && PyDict_GetItemWithError(g_waiting, key) == prim &&
                        PyDict_DelItem(g_waiting, key) < 0) {
                        PyErr_Clear();
                    }
                }
                else {
                    n += 1;
                }
            }
            Py_XDECREF(waiters);
            Py_DECREF(key);
            Py_DECREF(prim);
            PyErr_Clear();
        }
        Py_DECREF(w);
    }
    if (gc_was) PyGC_Enable();
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return PyLong_FromSsize_t(n);
}

/* young_waits() -> int: how many asyncio waits are young now (not yet in the waiters tables). */
static PyObject *
py_young_waits(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(g_young_n);
}

/* locks._wait_begin in C: begin(prim, timeout_s, holder, by_task, event, task). The site is found
 * from the calling thread's frames (the first outside conctools and the stdlib modules sites skip).
 *
 * An asyncio wait (by_task, its task known, no timeout, its holder a task or None) is made lazily (issue
 * 12; JFR's cost model): what the watchdog, the registry and the lock table read while it waits is stored
 * now (the task, the primitive, the thread, the site, the start; its place in the waiters tables), and the
 * rest at its end, in wait_finish(): its counts (contentions, its site's waits and stack quota, the stack:
 * an asyncio wait ends in the very frames that waited), and only for a sampled wait, its names and its
 * holder's. Until then its fields entry, stack, task_name, lock_id and lock_name are unset (the lock
 * table counts such a wait as in progress: LockStats.row). */
static PyObject *
wait_begin(PyObject *prim, PyObject *timeout, PyObject *holder, int by_task, int event, PyObject *task_arg)
{
    if (!g_wait_ready) Py_RETURN_NONE;
    if (g_pending != NULL && PyObject_Length(g_pending) >= g_flush_at && g_flush != NULL) {
        PyObject *r = PyObject_CallNoArgs(g_flush);
        Py_XDECREF(r);
        swallow();
    }
    PyErr_Clear();
    PyObject *stats = prim_stats(prim);
    if (stats == NULL) {
        swallow();
        Py_RETURN_NONE;
    }
    PyObject *w = ((PyTypeObject *)g_wait_type)->tp_alloc((PyTypeObject *)g_wait_type, 0);
    if (w == NULL) {
        Py_DECREF(stats);
        swallow();
        Py_RETURN_NONE;
    }
    PyThreadState *ts = CT_TSTATE();
    unsigned long long tid = (unsigned long long)ts->id;
    unsigned long ident = ts->thread_id;
    wset(w, W_PRIM, prim);
    wsteal(w, W_IDENT, ident_int(ident));
    wsteal(w, W_THREAD_KEY, tid_int(tid));
    PyObject *info = current_thread_object(tid, ident);
    wset(w, W_THREAD, info ? info : Py_None);
    PyObject *task = task_arg == Py_False ? current_task_of_thread(tid) : Py_XNewRef(task_arg == Py_None ? NULL : task_arg);
    wset(w, W_TASK, task ? task : Py_None);
    int lazy = by_task && task != NULL && timeout == Py_None && !PyTuple_Check(holder) && !PyList_Check(holder);
    PyCodeObject *where = NULL;
    PyObject *site = wait_site(&where);
    wset(w, W_SITE, site);
    wset(w, W_STATS, stats);
    if (lazy) {
        wset(w, W_LAZY, holder);
        wset(w, W_HOLDER, Py_None);
        wset(w, W_HOLDER_EXITED, Py_None); /* (a task's loop runs in this thread) */
    }
    else {
        wsteal(w, W_TASK_NAME, task_name_of(task));
        wsteal(w, W_LOCK_ID, PyLong_FromVoidPtr(prim));
        wsteal(w, W_LOCK_NAME, prim_name(prim));
        if (wget(w, W_LOCK_NAME) == NULL) wset(w, W_LOCK_NAME, g_question);
        begin_count(w, stats, site, where);
        wsteal(w, W_HOLDER, holder_brief(holder));
        if (wget(w, W_HOLDER) == NULL) wset(w, W_HOLDER, Py_None);
        if (holder == Py_None) {
            wset(w, W_HOLDER_EXITED, Py_None);
        }
        else {
            int ex = PyTuple_Check(holder) ? snapshot_exited(holder) : -2;
            if (ex >= 0) {
                wset(w, W_HOLDER_EXITED, ex ? Py_True : Py_False);
            }
            else if (ex == -2 && !(PyList_Check(holder) && PyList_GET_SIZE(holder) > 0 &&
                                   PyTuple_Check(PyList_GET_ITEM(holder, 0)))) {
                wset(w, W_HOLDER_EXITED, Py_None); /* asyncio holders: their loop runs in this thread */
            }
            else {
                wsteal(w, W_HOLDER_EXITED, PyObject_CallOneArg(g_holder_exited, holder));
                if (wget(w, W_HOLDER_EXITED) == NULL) wset(w, W_HOLDER_EXITED, Py_None);
            }
        }
    }
    wset(w, W_TIMEOUT_S, timeout);
    wset(w, W_EVENT, event ? Py_True : Py_False);
    wset(w, W_REC, g_current && PyList_GET_SIZE(g_current) > 0 ? PyList_GET_ITEM(g_current, 0) : Py_None);
    wset(w, W_ACQUIRED, Py_False);
    wset(w, W_SETTLED, g_zero_int);
    wset(w, W_PREV_THREAD, Py_None);
    wset(w, W_PREV_TASK, Py_None);
    wset(w, W_END_NS, g_zero_int);
#ifndef Py_GIL_DISABLED
    if (lazy) { /* young (see g_young): its key and start as Python objects only if it is promoted or ends */
        Py_XDECREF(task);
        Py_XDECREF(site);
        Py_DECREF(stats);
        young_link((WaitObject *)w, mono_ns());
        return w;
    }
#endif
    PyObject *key = wait_key(wget(w, W_IDENT), by_task ? task : NULL);
    Py_XDECREF(task);
    Py_XDECREF(site);
    Py_DECREF(stats);
    PyObject *waiters = prim_waiters(prim);
    if (key == NULL || waiters == NULL || !PyDict_Check(waiters)) {
        Py_XDECREF(key);
        Py_XDECREF(waiters);
        Py_DECREF(w);
        swallow();
        Py_RETURN_NONE;
    }
    wset(w, W_KEY, key);
    wsteal(w, W_START_NS, PyLong_FromLongLong(mono_ns()));
    if (PyDict_SetItem(waiters, key, w) < 0 || (g_waiting != NULL && PyDict_SetItem(g_waiting, key, prim) < 0)) {
        PyErr_Clear();
    }
    Py_DECREF(waiters);
    Py_DECREF(key);
    return w;
}

/* The end of a lazy wait (see wait_begin), before wait_settle(): its counts and, in the first few per
 * site, its stack (taken now, in the frames that waited). */
static void
lazy_count(PyObject *w)
{
    PyObject *stats = wget(w, W_STATS), *site = wget(w, W_SITE);
    if (stats == NULL || site == NULL) {
        wset(w, W_ENTRY, Py_None);
        wset(w, W_STACK, Py_None);
        return;
    }
    begin_count(w, stats, site, NULL);
}

/* ... and, for a wait that is kept (sampled, or left to flush_waits()), what its event names: its task,
 * its primitive, its holder when it began (prim and task are still set). */
static void
lazy_fill(PyObject *w)
{
    PyObject *prim = wget(w, W_PRIM), *task = wget(w, W_TASK), *holder = wget(w, W_LAZY);
    wsteal(w, W_TASK_NAME, task_name_of(task != Py_None ? task : NULL));
    if (prim != NULL && prim != Py_None) {
        wsteal(w, W_LOCK_ID, PyLong_FromVoidPtr(prim));
        wsteal(w, W_LOCK_NAME, prim_name(prim));
    }
    if (wget(w, W_LOCK_ID) == NULL) wset(w, W_LOCK_ID, g_zero_int);
    if (wget(w, W_LOCK_NAME) == NULL) wset(w, W_LOCK_NAME, g_question);
    if (holder != NULL) {
        wsteal(w, W_HOLDER, holder_brief(holder));
        if (wget(w, W_HOLDER) == NULL) wset(w, W_HOLDER, Py_None);
    }
    PyErr_Clear();
}

/* An attribute that holds an int, as a C value (-1 and an error cleared when it is not one). */
static long long
int_attr(PyObject *obj, PyObject *attr)
{
    PyObject **slot, *d;
    if (int_field(obj, attr, &slot, &d)) {
        long long n = as_ll(slot != NULL ? *slot : PyDict_GetItemWithError(d, attr));
        Py_XDECREF(d);
        if (n == -1 && PyErr_Occurred()) PyErr_Clear();
        return n;
    }
    PyObject *v = PyObject_GetAttr(obj, attr);
    long long n = v != NULL ? as_ll(v) : -1;
    Py_XDECREF(v);
    if (n == -1 && PyErr_Occurred()) PyErr_Clear();
    return n;
}

/* locks._settle(w): the statistics of an ended wait recorded now, exactly as LockStats.end_wait records
 * them (counters, histogram, its site's total and maximum, whether it is sampled), under its class's
 * mutex, which is tried, never waited for. Returns 1 when they were: the record is then marked settled
 * and is only kept (by the caller, for flush_waits() to make its event) when it is sampled; a lock
 * wait not sampled is counted for its recorder as not kept. 0: nothing done (the mutex was busy, or
 * the record is not one it knows), flush_waits() records it as before. For the asyncio primitives,
 * whose waits end in their loop's thread: deferring buys nothing there, and 20,000 parked tasks would
 * leave 20,000 records to record later. No Python code runs. */
static int
wait_settle(PyObject *w, int *sampled)
{
    PyObject *stats = wget(w, W_STATS), *entry = wget(w, W_ENTRY), *start = wget(w, W_START_NS),
             *end = wget(w, W_END_NS), *key = wget(w, W_KEY), *timeout = wget(w, W_TIMEOUT_S),
             *stack = wget(w, W_STACK);
    *sampled = 1;
    if (g_threshold == NULL || g_hist_type == NULL || stats == NULL || entry == NULL || entry == Py_None ||
        start == NULL || end == NULL || key == NULL || !PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2 ||
        !PyList_Check(g_threshold) || PyList_GET_SIZE(g_threshold) < 1) {
        return 0;
    }
    long long wait_ns = as_ll(end) - as_ll(start);
    double threshold_s = PyFloat_AsDouble(PyList_GET_ITEM(g_threshold, 0));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (wait_ns < 0) wait_ns = 0;
    PyObject *hist = PyObject_GetAttr(stats, s_wait);
    PyObject *mutex = hist != NULL && Py_IS_TYPE(hist, (PyTypeObject *)g_hist_type) ? PyObject_GetAttr(stats, s_mutex)
                                                                                     : NULL;
    /* (the class's mutex is a plain lock: its own acquire/release, without looking them up) */
    int plain = mutex != NULL && g_lock_type != NULL && Py_IS_TYPE(mutex, (PyTypeObject *)g_lock_type) &&
                m_lock_acquire != NULL && m_lock_release != NULL;
    PyObject *got = mutex == NULL ? NULL
                    : plain       ? call_varargs(m_lock_acquire, f_lock_acquire, mutex, g_false_args)
                                  : PyObject_CallMethodOneArg(mutex, s_acquire, Py_False);
    int settled = 0;
    if (got == Py_True) {
        long long max_ns = int_attr(entry, s_max_ns), events = int_attr(entry, s_events);
        if (max_ns >= 0 && events >= 0 && hist_add_fields(hist, wait_ns) == 0) {
            settled = 1;
            /* (an asyncio wait has no timeout of its own: wait_for cancels it, which counts as timed) */
            int timed = PyTuple_GET_ITEM(key, 1) != Py_None ||
                        (timeout != NULL && PyFloat_Check(timeout) && PyFloat_AS_DOUBLE(timeout) >= 0) ||
                        (timeout != NULL && PyLong_Check(timeout) && PyLong_AsLongLong(timeout) >= 0);
            if (wget(w, W_ACQUIRED) != Py_True && timed) bump(stats, s_timeouts, 1);
            bump(entry, s_total_ns, wait_ns);
            int longest = wait_ns > max_ns;
            if (longest) bump(entry, s_max_ns, wait_ns - max_ns);
            int quota = (stack != NULL && stack != Py_None) ||
                        ((double)wait_ns >= threshold_s * 1e9 && events < g_events_cap);
            *sampled = quota || longest;
            if (*sampled) bump(entry, s_events, 1);
            if (longest) {
                /* The longest wait at its site so far is kept; the previous one, if it is still waiting to
                 * be recorded and was kept only for being the longest, is not (it is counted as dropped). */
                PyObject *old = PyObject_GetAttr(entry, s_champion);
                if (old != NULL && PyObject_TypeCheck(old, g_waitrecord_type) && wget(old, W_SETTLED) != NULL &&
                    PyLong_Check(wget(old, W_SETTLED)) && PyLong_AsLong(wget(old, W_SETTLED)) == 1) {
                    wsteal(old, W_SETTLED, PyLong_FromLong(2));
                }
                Py_XDECREF(old);
                PyErr_Clear();
                if (PyObject_SetAttr(entry, s_champion, quota ? Py_None : w) < 0) PyErr_Clear();
            }
        }
        PyObject *r = plain ? call_noargs(m_lock_release, mutex) : PyObject_CallMethodNoArgs(mutex, s_release);
        Py_XDECREF(r);
    }
    Py_XDECREF(got);
    Py_XDECREF(mutex);
    Py_XDECREF(hist);
    PyErr_Clear();
    if (!settled) {
        *sampled = 1;
        return 0;
    }
    wsteal(w, W_SETTLED, PyLong_FromLong(1));
    PyObject *rec = wget(w, W_REC);
    if (!*sampled && wget(w, W_EVENT) == Py_True && rec != NULL && g_unsampled != NULL && PyDict_Check(g_unsampled)) {
        PyObject *old = PyDict_GetItemWithError(g_unsampled, rec); /* borrowed */
        long long n = old != NULL ? PyLong_AsLongLong(old) : 0;
        PyObject *nv = PyErr_Occurred() ? NULL : PyLong_FromLongLong(n + 1);
        if (nv == NULL || PyDict_SetItem(g_unsampled, rec, nv) < 0) PyErr_Clear();
        Py_XDECREF(nv);
    }
    return 1;
}

/* -- the run of unsampled asyncio waits (issue 12) ------------------------------------------------- *
 * Thousands of tasks queue on one semaphore at one line, and nearly all their waits are not sampled
 * (not among the first stacks of their site, under the threshold, not the longest so far): each is only
 * counted. Their counts (contentions, the site's waits and total, timeouts, the wait histogram, the
 * recorder's unsampled events) are added up here in C, for one (class, site, recorder) at a time, and
 * added to the Python objects (LockStats, its site's entry, the histogram) under the class's mutex by
 * acc_drain(): when flush_waits() runs (every reader of the lock table calls it first, as for the brief
 * waits), when a wait elsewhere starts a run of its own, or when the run is long. The decision whether a
 * wait is sampled is LockStats.end_wait_locked()'s, on the entry's maximum and event count as the run
 * began (a stale value only sends a wait to the full path, which decides again). No Python code runs. */
#define ACC_BUCKETS 512
#define ACC_MAX_RUN 100000
static struct {
    PyObject *stats, *entry, *site, *rec; /* strong, NULL: no run */
    PyObject *champion;                  /* strong, may be NULL: the run's longest wait, the longest so far */
    int event;
    long long max_ns, events;            /* the entry's, as the run began, then with the run's champions */
    long long n, timeouts, total_ns, hist_max, events_added, dropped;
    long long buckets[ACC_BUCKETS];
} g_acc;
static long long g_acc_total, g_acc_champions; /* waits counted in runs, those kept as the longest (tests) */

/* A run's longest wait keeps its task, primitive and holder (W_TASK, W_PRIM, W_LAZY) until its names are made,
 * when the run is handed on (acc_drain): waits that grow longer one after another (tasks queued on a semaphore)
 * each become the longest so far, and making each one's names (a task's, formatted at first use from 3.13 on)
 * cost more than the rest of its count. When it is superseded, or named, what it kept is let go; a reference
 * that would be the last one is not let go there (a finalizer would run inside the lock's bookkeeping) but kept
 * here, and let go where flush_waits() runs (acc_spare_release). A longest wait is kept unnamed only while
 * there is room here for its three and its predecessor's (only the run's longest is ever kept unnamed). */
#define ACC_SPARE 48
static PyObject *g_acc_spare[ACC_SPARE];
static int g_acc_spare_n;

static void
acc_let_go(PyObject *o)
{
    if (o == NULL) return;
    if (Py_REFCNT(o) > 1 || g_acc_spare_n >= ACC_SPARE) {
        Py_DECREF(o); /* (not the last: nothing runs; a full list cannot happen, see above) */
        return;
    }
    g_acc_spare[g_acc_spare_n++] = o;
}

/* A wait kept unnamed (W_LAZY still set): what it kept, let go. */
static void
acc_unkeep(PyObject *w)
{
    PyObject **f = ((WaitObject *)w)->f;
    if (f[W_LAZY] == NULL) return;
    PyObject *task = f[W_TASK], *prim = f[W_PRIM], *holder = f[W_LAZY];
    f[W_TASK] = Py_NewRef(Py_None);
    f[W_PRIM] = Py_NewRef(Py_None);
    f[W_LAZY] = NULL;
    acc_let_go(task);
    acc_let_go(prim);
    acc_let_go(holder);
}

/* Where Python code may run (flush_waits(), clear_caches()): the kept references let go. */
static void
acc_spare_release(void)
{
    while (g_acc_spare_n > 0) {
        PyObject *o = g_acc_spare[--g_acc_spare_n];
        Py_DECREF(o); /* (may run a finalizer, which may keep more: taken one at a time) */
    }
}

static void
acc_forget(void)
{
    if (g_acc.champion != NULL) acc_unkeep(g_acc.champion);
    Py_CLEAR(g_acc.stats);
    Py_CLEAR(g_acc.entry);
    Py_CLEAR(g_acc.site);
    Py_CLEAR(g_acc.rec);
    Py_CLEAR(g_acc.champion);
    g_acc.n = g_acc.timeouts = g_acc.total_ns = g_acc.hist_max = g_acc.events_added = g_acc.dropped = 0;
    memset(g_acc.buckets, 0, sizeof(g_acc.buckets));
}

/* Add the run's counts to a histogram (its slots, or attribute access): 0, or -1 (nothing changed when the
 * histogram is not a recorder.Histogram with int fields). */
static int
acc_hist_merge(PyObject *hist)
{
    if (!(g_hist_off[0] >= 0 && g_hist_type != NULL && Py_IS_TYPE(hist, (PyTypeObject *)g_hist_type))) return -1;
    PyObject **f[4];
    for (int i = 0; i < 4; i++) {
        f[i] = (PyObject **)((char *)hist + g_hist_off[i]);
        if (*f[i] == NULL || (i == 0 ? !PyDict_CheckExact(*f[i]) : !PyLong_CheckExact(*f[i]))) return -1;
    }
    long long count = as_ll(*f[1]), total = as_ll(*f[2]), max = as_ll(*f[3]);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    for (int b = 0; b < ACC_BUCKETS; b++) {
        if (!g_acc.buckets[b]) continue;
        PyObject *idx = PyLong_FromLong(b);
        PyObject *old = idx ? PyDict_GetItemWithError(*f[0], idx) : NULL; /* borrowed */
        long long k = old != NULL ? PyLong_AsLongLong(old) : 0;
        PyObject *nv = idx && !PyErr_Occurred() ? PyLong_FromLongLong(k + g_acc.buckets[b]) : NULL;
        if (nv == NULL || PyDict_SetItem(*f[0], idx, nv) < 0) PyErr_Clear();
        Py_XDECREF(nv);
        Py_XDECREF(idx);
    }
    PyObject *c = PyLong_FromLongLong(count + g_acc.n), *t = PyLong_FromLongLong(total + g_acc.total_ns);
    if (c != NULL) Py_SETREF(*f[1], c);
    if (t != NULL) Py_SETREF(*f[2], t);
    if (g_acc.hist_max > max) {
        PyObject *m = PyLong_FromLongLong(g_acc.hist_max);
        if (m != NULL) Py_SETREF(*f[3], m);
    }
    PyErr_Clear();
    return 0;
}

/* Hand the run's counts to their Python objects, under the class's mutex, which is tried (never waited
 * for; with wait, a little while, letting other threads run: flush_waits()). 1: done (no run left), 0: the
 * mutex stayed busy (the run goes on, nothing lost). */
static int
acc_drain(int wait)
{
    if (g_acc.stats == NULL) return 1;
    if (g_acc.n == 0 && g_acc.champion == NULL) {
        acc_forget();
        return 1;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    /* The longest wait's names, if not made yet. A Task subclass's get_name() is Python code, during which
     * the run may change: made again for a new longest, a few times at most (then the run goes on). */
    for (int i = 0; g_acc.champion != NULL && wget(g_acc.champion, W_LAZY) != NULL; i++) {
        if (i == 3 || g_acc.stats == NULL) {
            PyErr_Restore(exc_type, exc_value, exc_tb);
            return g_acc.stats == NULL;
        }
        PyObject *c = Py_NewRef(g_acc.champion);
        lazy_fill(c);
        acc_unkeep(c);
        Py_DECREF(c);
    }
    if (g_acc.stats == NULL) {
        PyErr_Restore(exc_type, exc_value, exc_tb);
        return 1;
    }
    int done = 0;
    PyObject *stats = Py_NewRef(g_acc.stats);
    PyObject *hist = PyObject_GetAttr(stats, s_wait);
    PyObject *mutex = hist != NULL ? PyObject_GetAttr(stats, s_mutex) : NULL;
    int plain = mutex != NULL && g_lock_type != NULL && Py_IS_TYPE(mutex, (PyTypeObject *)g_lock_type) &&
                m_lock_acquire != NULL && m_lock_release != NULL;
    PyErr_Clear();
    for (int tries = 0; plain && tries < (wait ? 2000 : 1); tries++) {
        if (tries) {
            /* another thread holds it (reading the lock table): let it run */
            Py_BEGIN_ALLOW_THREADS
            struct timespec pause = {0, 50000};
            nanosleep(&pause, NULL);
            Py_END_ALLOW_THREADS
            if (g_acc.stats != stats) break; /* drained meanwhile (another run may have begun: not this call's) */
        }
        PyObject *got = call_varargs(m_lock_acquire, f_lock_acquire, mutex, g_false_args);
        int ok = got == Py_True;
        Py_XDECREF(got);
        PyErr_Clear();
        if (!ok) continue;
        /* (no Python code runs from here to the release: the run cannot change meanwhile) */
        acc_hist_merge(hist); /* (a recorder.Histogram: acc_adopt() checked) */
        bump(g_acc.stats, s_contentions, g_acc.n);
        bump(g_acc.entry, s_waits, g_acc.n);
        bump(g_acc.entry, s_total_ns, g_acc.total_ns);
        if (g_acc.timeouts) bump(g_acc.stats, s_timeouts, g_acc.timeouts);
        if (g_acc.champion != NULL) {
            /* as wait_settle(): the longest wait at its site so far is kept; the previous one, if it is still
             * waiting to be recorded and was kept only for being the longest, is not */
            long long max_ns = int_attr(g_acc.entry, s_max_ns);
            if (max_ns >= 0 && g_acc.max_ns > max_ns) bump(g_acc.entry, s_max_ns, g_acc.max_ns - max_ns);
            bump(g_acc.entry, s_events, g_acc.events_added);
            PyObject *old = PyObject_GetAttr(g_acc.entry, s_champion);
            if (old != NULL && PyObject_TypeCheck(old, g_waitrecord_type) && wget(old, W_SETTLED) != NULL &&
                PyLong_Check(wget(old, W_SETTLED)) && PyLong_AsLong(wget(old, W_SETTLED)) == 1) {
                wsteal(old, W_SETTLED, PyLong_FromLong(2));
            }
            Py_XDECREF(old);
            PyErr_Clear();
            wsteal(g_acc.champion, W_SETTLED, PyLong_FromLong(1));
            if (PyObject_SetAttr(g_acc.entry, s_champion, g_acc.champion) < 0) PyErr_Clear();
            if (g_pending != NULL) {
                PyObject *r = PyObject_CallMethodOneArg(g_pending, s_append, g_acc.champion);
                Py_XDECREF(r);
            }
            PyErr_Clear();
        }
        PyObject *r = call_noargs(m_lock_release, mutex);
        Py_XDECREF(r);
        PyErr_Clear();
        if (g_acc.event && g_acc.rec != NULL && g_unsampled != NULL && PyDict_Check(g_unsampled)) {
            PyObject *old = PyDict_GetItemWithError(g_unsampled, g_acc.rec); /* borrowed */
            long long k = old != NULL ? PyLong_AsLongLong(old) : 0;
            PyObject *nv = PyErr_Occurred() ? NULL : PyLong_FromLongLong(k + g_acc.dropped);
            if (nv == NULL || PyDict_SetItem(g_unsampled, g_acc.rec, nv) < 0) PyErr_Clear();
            Py_XDECREF(nv);
        }
        acc_forget();
        done = 1;
        break;
    }
    if (g_acc.stats != stats) done = 1;
    Py_DECREF(stats);
    Py_XDECREF(mutex);
    Py_XDECREF(hist);
    PyErr_Clear();
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return done;
}

/* An ended lazy asyncio wait (end_ns set) counted into the run when it belongs to it and is not sampled:
 * 1 (nothing else to do for it), 2 (the same, and it is the run's longest, kept unnamed: it keeps its task,
 * primitive and holder), else 0. */
static int
acc_try(PyObject *w, int acquired)
{
    if (g_acc.stats == NULL || wget(w, W_STATS) != g_acc.stats || wget(w, W_SITE) != g_acc.site ||
        wget(w, W_REC) != g_acc.rec || (wget(w, W_EVENT) == Py_True) != g_acc.event || g_acc.n >= ACC_MAX_RUN ||
        g_threshold == NULL || !PyList_Check(g_threshold) || PyList_GET_SIZE(g_threshold) < 1) {
        return 0;
    }
    PyObject *start = wget(w, W_START_NS), *end = wget(w, W_END_NS);
    if (start == NULL || end == NULL) return 0;
    long long wait_ns = as_ll(end) - as_ll(start);
    double threshold_s = PyFloat_AsDouble(PyList_GET_ITEM(g_threshold, 0));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (wait_ns < 0) wait_ns = 0;
    if ((double)wait_ns >= threshold_s * 1e9 && g_acc.events < g_events_cap) return 0;
    long long b = bucket_of(wait_ns);
    if (b < 0 || b >= ACC_BUCKETS) return 0;
    int kept = 0;
    if (wait_ns > g_acc.max_ns) {
        /* the longest at its site so far: kept, and the run's previous longest, never handed on, is dropped.
         * Its names are made when the run is handed on, while it can keep what they come from (see
         * g_acc_spare); else now (its task and primitive are alive) */
#ifndef Py_GIL_DISABLED
        kept = g_acc_spare_n <= ACC_SPARE - 6; /* (what this one and the previous longest keep) */
#else
        kept = 0; /* (without a GIL a count of references above one does not stay so: named now) */
#endif
        if (!kept) {
            PyObject *entry = Py_NewRef(g_acc.entry);
            lazy_fill(w); /* (a task's get_name() may be Python code: the run is read again after it) */
            if (g_acc.entry != entry || wait_ns <= g_acc.max_ns) {
                Py_DECREF(entry);
                return 0; /* the run changed meanwhile: the full path records it */
            }
            Py_DECREF(entry);
        }
        wset(w, W_ENTRY, g_acc.entry);
        wset(w, W_STACK, Py_None);
        if (g_acc.champion != NULL) {
            g_acc.dropped++;
            acc_unkeep(g_acc.champion);
        }
        Py_XSETREF(g_acc.champion, Py_NewRef(w));
        g_acc.max_ns = wait_ns;
        g_acc.events++;
        g_acc.events_added++;
        g_acc_champions++;
    }
    else {
        g_acc.dropped++;
    }
    g_acc.buckets[b]++;
    g_acc.n++;
    g_acc.total_ns += wait_ns;
    if (wait_ns > g_acc.hist_max) g_acc.hist_max = wait_ns;
    if (!acquired) g_acc.timeouts++; /* (an asyncio wait is timed: see wait_settle) */
    g_acc_total++;
    return kept ? 2 : 1;
}

/* A lazy asyncio wait that the full path settled without sampling: the next ones at its site, on its
 * class, may be counted in a run (when its site has its stacks: a wait that wants one takes the full
 * path). */
static void
acc_adopt(PyObject *w)
{
    PyObject *stats = wget(w, W_STATS), *entry = wget(w, W_ENTRY), *site = wget(w, W_SITE), *rec = wget(w, W_REC);
    if (stats == NULL || entry == NULL || entry == Py_None || site == NULL || rec == NULL) return;
    if (g_acc.stats == stats && g_acc.site == site && g_acc.rec == rec) return;
    long long stacks = int_attr(entry, s_stacks), max_ns = int_attr(entry, s_max_ns), events = int_attr(entry, s_events);
    if (stacks < g_stacks_per_site || max_ns < 0 || events < 0 || g_hist_off[0] < 0 || g_hist_type == NULL) return;
    PyObject *hist = PyObject_GetAttr(stats, s_wait);
    int ok = hist != NULL && Py_IS_TYPE(hist, (PyTypeObject *)g_hist_type);
    Py_XDECREF(hist);
    PyErr_Clear();
    if (!ok || !acc_drain(0)) return;
    g_acc.stats = Py_NewRef(stats);
    g_acc.entry = Py_NewRef(entry);
    g_acc.site = Py_NewRef(site);
    g_acc.rec = Py_NewRef(rec);
    g_acc.event = wget(w, W_EVENT) == Py_True;
    g_acc.max_ns = max_ns;
    g_acc.events = events;
}

/* The wait w has ended: stores into it, out of the registry, into the pending queue (its statistics
 * and event are recorded later, outside any critical section); with settle, see wait_settle(). No
 * Python code runs. */
static void
wait_finish(PyObject *w, int acquired, int settle)
{
    if (w == NULL || w == Py_None || !g_wait_ready || !PyObject_TypeCheck(w, g_waitrecord_type)) {
        return;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *end = PyLong_FromLongLong(mono_ns());
    if (end != NULL) {
        if (g_progress != NULL && PyList_Check(g_progress) && PyList_GET_SIZE(g_progress) > 0) {
            PyList_SetItem(g_progress, 0, Py_NewRef(end)); /* the previous stamp is an int */
        }
        wsteal(w, W_END_NS, end);
    }
    wset(w, W_ACQUIRED, acquired ? Py_True : Py_False);
    int young = is_young((WaitObject *)w); /* (never promoted: in no table) */
    if (young) {
        young_unlink((WaitObject *)w);
        young_complete((WaitObject *)w);
        Py_DECREF(w); /* (the list's: the caller holds its own) */
    }
    PyObject *key = wget(w, W_KEY), *prim = wget(w, W_PRIM);
    if (!young && key != NULL && prim != NULL) {
        PyObject *waiters = NULL;
        if (PyObject_TypeCheck(prim, g_core_type)) waiters = Py_XNewRef(((CoreObject *)prim)->waiters);
        else if (g_tracked_type != NULL && PyObject_TypeCheck(prim, g_tracked_type))
            waiters = Py_XNewRef(((TrackedObject *)prim)->waiters);
        else waiters = PyObject_GetAttr(prim, s_ct_waiters);
        if (waiters != NULL && PyDict_Check(waiters) && PyDict_DelItem(waiters, key) < 0) PyErr_Clear();
        Py_XDECREF(waiters);
        if (g_waiting != NULL && PyDict_DelItem(g_waiting, key) < 0) PyErr_Clear();
    }
    PyErr_Clear();
    int lazy = wget(w, W_LAZY) != NULL;
    int dropped = 0, counted = lazy && settle ? acc_try(w, acquired) : 0;
    if (counted) {
        dropped = 1; /* counted in the run: nothing else to record */
        if (counted == 1) Py_CLEAR(((WaitObject *)w)->f[W_LAZY]);
    }
    else if (lazy) {
        if (g_acc.stats != NULL && wget(w, W_STATS) == g_acc.stats && wget(w, W_SITE) == g_acc.site) {
            acc_drain(0); /* (its maximum and events first: this wait is decided on them) */
        }
        lazy_count(w);
        int sampled = 1;
        dropped = settle && wait_settle(w, &sampled) && !sampled;
        if (!dropped) lazy_fill(w); /* (only a kept wait needs its names) */
        else acc_adopt(w);
        Py_CLEAR(((WaitObject *)w)->f[W_LAZY]);
    }
    else {
        int sampled = 1;
        dropped = settle && wait_settle(w, &sampled) && !sampled;
    }
    /* A record waiting to be recorded keeps neither alive (both are alive now: not last references); the run's
     * longest, kept unnamed, keeps both until its names are made (acc_drain). */
    if (counted != 2) {
        wset(w, W_PRIM, Py_None);
        wset(w, W_TASK, Py_None);
    }
    if (dropped) {
        /* recorded already, and no event to make: nothing left for flush_waits() */
    }
    else if (g_pending != NULL) {
        PyObject *r = PyObject_CallMethodOneArg(g_pending, s_append, w);
        Py_XDECREF(r);
        PyErr_Clear();
    }
    PyErr_Clear();
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

/* wait_begin(prim, frame, timeout_s, holder, by_task=False, event=True, task=False): locks._wait_begin
 * (frame is ignored: the C code reads the thread's frames itself). */
static PyObject *
py_wait_begin(PyObject *Py_UNUSED(module), PyObject *const *stack, Py_ssize_t nargs, PyObject *kwnames)
{
    static char *kwlist[] = {"prim", "frame", "timeout_s", "holder", "by_task", "event", "task", NULL};
    PyObject *prim, *frame = NULL, *timeout, *holder, *by_task = Py_False, *event = Py_True, *task = Py_False;
    (void)frame; /* (the C code reads the thread's frames itself) */
    if (kwnames == NULL && nargs >= 4 && nargs <= 7) {
        /* positional (how conctools calls it, at every contended wait): no argument tuple to build */
        prim = stack[0];
        timeout = stack[2];
        holder = stack[3];
        if (nargs > 4) by_task = stack[4];
        if (nargs > 5) event = stack[5];
        if (nargs > 6) task = stack[6];
    }
    else {
        PyObject *args = PyTuple_New(nargs), *kwargs = NULL;
        if (args == NULL) return NULL;
        for (Py_ssize_t i = 0; i < nargs; i++) PyTuple_SET_ITEM(args, i, Py_NewRef(stack[i]));
        if (kwnames != NULL) {
            kwargs = PyDict_New();
            for (Py_ssize_t i = 0; kwargs != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
                if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), stack[nargs + i]) < 0) Py_CLEAR(kwargs);
            }
            if (kwargs == NULL) {
                Py_DECREF(args);
                return NULL;
            }
        }
        int ok = PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OOO:wait_begin", kwlist, &prim, &frame, &timeout,
                                             &holder, &by_task, &event, &task);
        /* (the parsed objects are borrowed from args and kwargs, which the caller's stack keeps alive) */
        Py_DECREF(args);
        Py_XDECREF(kwargs);
        if (!ok) return NULL;
    }
    int bt = PyObject_IsTrue(by_task) > 0, ev = PyObject_IsTrue(event) > 0;
    PyErr_Clear();
    GcQuiet quiet;
    gc_quiet_begin(&quiet);
    PyObject *w = wait_begin(prim, timeout, holder, bt, ev, task);
    gc_quiet_end(&quiet);
    return w;
}

static PyObject *
py_wait_done(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait_done(wait, acquired)");
        return NULL;
    }
    wait_finish(args[0], PyObject_IsTrue(args[1]) > 0, 0);
    PyErr_Clear();
    Py_RETURN_NONE;
}

/* The wait's site if it is cached (no Python code, no allocation): a new reference, or NULL. */
static PyObject *
wait_site_cached(void)
{
    PyCodeObject *code = NULL;
    int lasti = 0;
    if (!first_frame_without(BIT_CREATION_SKIP, &code, &lasti)) return NULL;
    size_t h = (((uintptr_t)code >> 4) * 31u + (uintptr_t)lasti) & (WSITE_CACHE - 1);
    if (g_wsites[h].code == (PyObject *)code && g_wsites[h].lasti == lasti) return Py_NewRef(g_wsites[h].text);
    return NULL;
}

/* -- brief waits, recorded (see brief_wait()) ----------------------------------------------------- */

/* One brief wait's record, made now as wait_begin() and wait_finish() would have made it (new
 * reference, NULL on failure). */
static PyObject *
brief_record(BriefWait *b)
{
    PyObject *w = ((PyTypeObject *)g_wait_type)->tp_alloc((PyTypeObject *)g_wait_type, 0);
    if (w == NULL) return NULL;
    wset(w, W_PRIM, Py_None);
    wsteal(w, W_IDENT, PyLong_FromUnsignedLong(b->ident));
    wsteal(w, W_THREAD_KEY, PyLong_FromUnsignedLongLong(b->tid));
    wset(w, W_THREAD, b->thread ? b->thread : Py_None);
    wset(w, W_TASK, Py_None);
    wset(w, W_TASK_NAME, b->task != NULL ? b->task : Py_None); /* (its name: see brief_wait()) */
    wsteal(w, W_LOCK_ID, PyLong_FromVoidPtr(b->lock_id));
    wset(w, W_LOCK_NAME, b->lock_name);
    wset(w, W_SITE, b->site);
    wset(w, W_STATS, b->stats);
    wset(w, W_ENTRY, b->entry);
    wset(w, W_STACK, Py_None);
    if (b->h_ident) {
        PyObject *holder = Py_BuildValue("(kKOOOL)", b->h_ident, b->h_tid, b->h_thread ? b->h_thread : Py_None,
                                         b->h_task ? b->h_task : Py_None, b->h_site ? b->h_site : Py_None,
                                         b->h_since);
        wsteal(w, W_HOLDER, holder != NULL ? holder_brief(holder) : NULL);
        Py_XDECREF(holder);
        wset(w, W_HOLDER_EXITED, b->h_exited < 0 ? Py_None : b->h_exited ? Py_True : Py_False);
    }
    if (wget(w, W_HOLDER) == NULL) wset(w, W_HOLDER, Py_None);
    if (wget(w, W_HOLDER_EXITED) == NULL) wset(w, W_HOLDER_EXITED, Py_None);
    wsteal(w, W_TIMEOUT_S, b->timeout < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(b->timeout));
    wset(w, W_EVENT, Py_True);
    wset(w, W_REC, b->rec);
    wset(w, W_ACQUIRED, b->acquired ? Py_True : Py_False);
    wset(w, W_SETTLED, g_zero_int);
    wset(w, W_PREV_THREAD, b->prev_thread ? b->prev_thread : Py_None);
    wset(w, W_PREV_TASK, b->prev_thread ? (b->prev_task ? b->prev_task : Py_None) : Py_None);
    wsteal(w, W_START_NS, PyLong_FromLongLong(b->start_ns));
    wsteal(w, W_END_NS, PyLong_FromLongLong(b->end_ns));
    wsteal(w, W_KEY, Py_BuildValue("(kO)", b->ident, Py_None));
    PyErr_Clear();
    for (int i = 0; i < W_COUNT; i++) {
        if (((WaitObject *)w)->f[i] == NULL) wset(w, i, Py_None);
    }
    return w;
}

/* A brief wait's statistics, recorded now as wait_settle() records a wait's (under its class's mutex,
 * tried, never waited for; no Python code runs): 1 done (*sampled: whether it needs its event, and then
 * *champion whether only for being its site's longest so far), 0 the mutex was busy (nothing done). */
static int
brief_settle(BriefWait *b, int *sampled, int *champion)
{
    PyObject *stats = b->stats, *entry = b->entry;
    long long wait_ns = b->end_ns - b->start_ns;
    if (wait_ns < 0) wait_ns = 0;
    *sampled = *champion = 0;
    if (g_threshold == NULL || g_hist_type == NULL || !PyList_Check(g_threshold) || PyList_GET_SIZE(g_threshold) < 1 ||
        m_lock_acquire == NULL || m_lock_release == NULL || g_lock_type == NULL) {
        return 0;
    }
    double threshold_s = PyFloat_AsDouble(PyList_GET_ITEM(g_threshold, 0));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    PyObject *hist = PyObject_GetAttr(stats, s_wait);
    PyObject *mutex = hist != NULL && Py_IS_TYPE(hist, (PyTypeObject *)g_hist_type) ? PyObject_GetAttr(stats, s_mutex)
                                                                                     : NULL;
    PyObject *got = mutex != NULL && Py_IS_TYPE(mutex, (PyTypeObject *)g_lock_type)
                        ? call_varargs(m_lock_acquire, f_lock_acquire, mutex, g_false_args)
                        : NULL;
    int settled = 0;
    if (got == Py_True) {
        long long max_ns = int_attr(entry, s_max_ns), events = int_attr(entry, s_events);
        if (max_ns >= 0 && events >= 0 && hist_add_fields(hist, wait_ns) == 0) {
            settled = 1;
            if (!b->acquired && b->timeout >= 0) bump(stats, s_timeouts, 1);
            bump(entry, s_total_ns, wait_ns);
            int longest = wait_ns > max_ns;
            if (longest) bump(entry, s_max_ns, wait_ns - max_ns);
            b->longest = longest;
            /* (no stack: a brief wait's site has captured its quota of them) */
            int quota = (double)wait_ns >= threshold_s * 1e9 && events < g_events_cap;
            *sampled = quota || longest;
            *champion = !quota && longest;
            if (*sampled) bump(entry, s_events, 1);
        }
        PyObject *r = call_noargs(m_lock_release, mutex);
        Py_XDECREF(r);
    }
    Py_XDECREF(got);
    Py_XDECREF(mutex);
    Py_XDECREF(hist);
    PyErr_Clear();
    return settled;
}

static void
brief_clear(BriefWait *b)
{
    Py_CLEAR(b->stats);
    Py_CLEAR(b->entry);
    Py_CLEAR(b->site);
    Py_CLEAR(b->lock_name);
    Py_CLEAR(b->rec);
    Py_CLEAR(b->h_thread);
    Py_CLEAR(b->h_task);
    Py_CLEAR(b->h_site);
    Py_CLEAR(b->prev_thread);
    Py_CLEAR(b->prev_task);
    Py_CLEAR(b->thread);
    Py_CLEAR(b->task);
}

/* Record the brief waits that ended (outside any critical section: before a wait, or flush_waits()):
 * their statistics now (wait_settle()), their record kept for flush_waits() when it is sampled (or
 * when the statistics' mutex was busy). The slots are taken first: what runs meanwhile (a collection
 * and its finalizers) may end other brief waits, which go to fresh slots. */
static void
brief_drain(void)
{
    Py_ssize_t n = g_brief_n;
    if (n <= 0) return;
    BriefWait *taken = PyMem_Malloc(sizeof(BriefWait) * (size_t)n); /* (a raw buffer: no collection) */
    if (taken == NULL) return;
    memcpy(taken, g_brief, sizeof(BriefWait) * (size_t)n);
    g_brief_n = 0;
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    for (Py_ssize_t i = 0; i < n; i++) {
        BriefWait *b = &taken[i];
        bump(b->stats, s_contentions, 1);
        bump(b->entry, s_waits, 1);
        PyErr_Clear();
        int sampled = 0, champion = 0;
        int settled = brief_settle(b, &sampled, &champion);
        PyObject *w = NULL;
        if (!settled || sampled) {
            /* its record: for flush_waits() to record (the mutex was busy) or to make its event */
            w = g_wait_ready ? brief_record(b) : NULL;
            if (w != NULL) {
                if (settled) wsteal(w, W_SETTLED, PyLong_FromLong(1));
                if (g_pending != NULL) {
                    PyObject *r = PyObject_CallMethodOneArg(g_pending, s_append, w);
                    Py_XDECREF(r);
                }
            }
        }
        if (settled && b->longest) {
            /* As wait_settle(): the longest wait at its site so far is kept; the previous one, if it is
             * still waiting to be recorded and was kept only for being the longest, is not. */
            PyObject *old = PyObject_GetAttr(b->entry, s_champion);
            if (old != NULL && PyObject_TypeCheck(old, g_waitrecord_type) && wget(old, W_SETTLED) != NULL &&
                PyLong_Check(wget(old, W_SETTLED)) && PyLong_AsLong(wget(old, W_SETTLED)) == 1) {
                wsteal(old, W_SETTLED, PyLong_FromLong(2));
            }
            Py_XDECREF(old);
            PyErr_Clear();
            if (PyObject_SetAttr(b->entry, s_champion, champion && w != NULL ? w : Py_None) < 0) PyErr_Clear();
        }
        Py_XDECREF(w);
        if (settled && !sampled && b->rec != NULL && g_unsampled != NULL && PyDict_Check(g_unsampled)) {
            /* counted, not kept: as wait_settle() counts a wait it does not sample */
            PyObject *old = PyDict_GetItemWithError(g_unsampled, b->rec); /* borrowed */
            long long k = old != NULL ? PyLong_AsLongLong(old) : 0;
            PyObject *nv = PyErr_Occurred() ? NULL : PyLong_FromLongLong(k + 1);
            if (nv == NULL || PyDict_SetItem(g_unsampled, b->rec, nv) < 0) PyErr_Clear();
            Py_XDECREF(nv);
        }
        swallow();
    }
    for (Py_ssize_t i = 0; i < n; i++) brief_clear(&taken[i]);
    PyMem_Free(taken);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

/* drain_brief(): record the brief waits that ended (flush_waits() calls it first). */
static PyObject *
py_drain_brief(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    brief_drain();
    acc_drain(1);
    acc_spare_release();
    Py_RETURN_NONE;
}

/* set_brief_wait(seconds) -> the previous: how long a contended acquisition first waits in the real lock
 * before it makes its full record (0: never; see brief_wait()). */
static PyObject *
py_set_brief_wait(PyObject *Py_UNUSED(module), PyObject *arg)
{
    double s = PyFloat_AsDouble(arg);
    if (s == -1.0 && PyErr_Occurred()) return NULL;
    if (!(s >= 0) || s > 3600) {
        PyErr_SetString(PyExc_ValueError, "the brief wait must be between 0 and 3600 seconds");
        return NULL;
    }
    double previous = (double)g_brief_ns / 1e9;
    PyObject *args = Py_BuildValue("(Od)", Py_True, s);
    if (args == NULL) return NULL;
    Py_XSETREF(g_brief_args, args);
    g_brief_ns = (long long)(s * 1e9);
    return PyFloat_FromDouble(previous);
}

/* brief_waits() -> (ended in their window so far, now in their window, not yet recorded). */
/* aio_run_waits() -> (waits counted in runs, of which kept as the longest so far) (tests, benchmarks). */
static PyObject *
py_aio_run_waits(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(LL)", g_acc_total, g_acc_champions);
}

static PyObject *
py_brief_waits(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(LnnLL)", g_brief_total, g_brief_inflight, g_brief_n, g_yields, g_yields_won);
}


/* wait_done_now(wait, acquired): wait_done(), and the statistics of a wait that is not sampled recorded
 * at once (locks._wait_done_now: the asyncio primitives' waits). */
static PyObject *
py_wait_done_now(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait_done_now(wait, acquired)");
        return NULL;
    }
    wait_finish(args[0], PyObject_IsTrue(args[1]) > 0, 1);
    PyErr_Clear();
    Py_RETURN_NONE;
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

/* threading.Condition._is_owned() for a Condition over a traced Lock (which has no _is_owned): the
 * stdlib probes with acquire(False) and a release, "owned" meaning "held by anyone". A held lock is
 * answered by locked(), without the probe's bookkeeping (a failed try records nothing anyway); a free
 * one is probed exactly as the stdlib does (counted, ordered), so an un-acquired notify() or wait()
 * is seen as before. */
static PyObject *
lock_cond_owned(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools lock used before __init__");
        return NULL;
    }
    if (self->rlock) return call_noargs(m_rlock_is_owned, self->lock); /* (an RLock's own, as Condition uses) */
    PyObject *locked = call_noargs(m_lock_locked, self->lock);
    if (locked == NULL || locked == Py_True) return locked;
    Py_DECREF(locked);
    PyObject *args[1] = {Py_False};
    PyObject *got = acquire_common(self, args, 1, NULL);
    if (got == NULL) return NULL;
    if (got == Py_True) {
        Py_DECREF(got);
        PyObject *r = lock_exit(self, NULL, 0);
        if (r == NULL) return NULL;
        Py_DECREF(r);
        Py_RETURN_FALSE;
    }
    Py_DECREF(got);
    Py_RETURN_TRUE;
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
    for (int i = 0; i < SITE_TUPLES; i++) {
        Py_CLEAR(g_site_tuples[i]);
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
    else if (g_tracked_type != NULL && PyObject_TypeCheck(prim, g_tracked_type)) {
        TrackedObject *t = (TrackedObject *)prim;
        init_tracked(t);
        Py_XSETREF(t->stats, Py_NewRef(e->stats));
        Py_XSETREF(t->created, Py_NewRef(e->created));
        Py_XSETREF(t->name, name == Py_None ? NULL : Py_NewRef(name));
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
    if (Py_TYPE(self)->tp_dictoffset == 0 && self->otask == NULL && self->waiters == NULL && self->trash[0] == NULL &&
        PyObject_GC_IsTracked((PyObject *)self)) {
        PyObject_GC_UnTrack(self); /* until it refers to something that could refer back (see track()) */
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
    for (int i = 0; i < 3; i++) Py_VISIT(self->entry_alt[i]);
    Py_VISIT(self->ckey);
    for (int i = 0; i < 2; i++) Py_VISIT(self->known[i]);
    for (int i = 0; i < 2; i++) Py_VISIT(self->trash[i]);
    Py_VISIT(self->stats);
    Py_VISIT(self->name);
    Py_VISIT(self->created);
    Py_VISIT(self->waiters);
    return 0;
}

static int
core_clear(CoreObject *self)
{
    lock_ref_clear(self);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->othread);
    Py_CLEAR(self->otask);
    Py_CLEAR(self->osite);
    Py_CLEAR(self->hold);
    Py_CLEAR(self->held);
    Py_CLEAR(self->entry);
    for (int i = 0; i < 3; i++) Py_CLEAR(self->entry_alt[i]);
    Py_CLEAR(self->ckey);
    for (int i = 0; i < 2; i++) Py_CLEAR(self->known[i]);
    for (int i = 0; i < 2; i++) Py_CLEAR(self->trash[i]);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->name);
    Py_CLEAR(self->created);
    Py_CLEAR(self->waiters);
    return 0;
}

/* A dying lock hands its counters to its class (only one that was acquired has any): appended to
 * the class's backlog here; locks._retire_counts (which folds a long backlog) only now and then. */
static void
retire(CoreObject *self)
{
    if ((self->n == 0 && self->hold == NULL) || self->stats == NULL || g_retire == NULL) {
        return;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *n = PyLong_FromLongLong(self->n);
    PyObject *retired = n ? PyObject_GetAttr(self->stats, s_retired) : NULL;
    if (retired != NULL && PyList_CheckExact(retired) && PyList_GET_SIZE(retired) < 1023) {
        PyObject *item = PyTuple_Pack(2, n, self->hold ? self->hold : Py_None);
        if (item != NULL) {
            PyList_Append(retired, item);
            Py_DECREF(item);
        }
    }
    else if (n != NULL) {
        PyObject *r = PyObject_CallFunctionObjArgs(g_retire, self->stats, n, self->hold ? self->hold : Py_None, NULL);
        Py_XDECREF(r);
    }
    Py_XDECREF(retired);
    Py_XDECREF(n);
    PyErr_Clear();
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

static void
core_dealloc(CoreObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    unlink_core(self);
    lock_ref_clear(self); /* (with its weak references: its held entries find it gone) */
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

static PyObject *
core_get_otask(CoreObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->otask != NULL ? self->otask : Py_None);
}

static int
core_set_otask(CoreObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value != NULL && value != Py_None) track(self);
    Py_XSETREF(self->otask, (value == NULL || value == Py_None) ? NULL : Py_NewRef(value));
    return 0;
}

static PyObject *
core_get_waiters(CoreObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->waiters != NULL ? self->waiters : Py_None);
}

static int
core_set_waiters(CoreObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value != NULL && value != Py_None) track(self);
    Py_XSETREF(self->waiters, (value == NULL || value == Py_None) ? NULL : Py_NewRef(value));
    return 0;
}

static PyObject *
core_get_othread(CoreObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->othread != NULL ? self->othread : Py_None);
}

static PyGetSetDef core_getset[] = {
    {"_otask", (getter)core_get_otask, (setter)core_set_otask, NULL, NULL},
    {"_ct_waiters", (getter)core_get_waiters, (setter)core_set_waiters, NULL, NULL},
    {"_othread", (getter)core_get_othread, NULL, NULL, NULL},
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
    {"_ct_hold", T_OBJECT, offsetof(CoreObject, hold), 0, NULL},
    {"_ct_held", T_OBJECT, offsetof(CoreObject, held), 0, NULL},
    {"_ct_entry", T_OBJECT, offsetof(CoreObject, entry), READONLY, NULL},
    {"_owner_tid", T_ULONGLONG, offsetof(CoreObject, owner_tid), READONLY, NULL},
    {"_ct_ordered", T_INT, offsetof(CoreObject, ordered), 0, NULL},
    {"_ct_stats", T_OBJECT_EX, offsetof(CoreObject, stats), 0, NULL},
    {"_ct_created", T_OBJECT_EX, offsetof(CoreObject, created), 0, NULL},
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
    {"_c_cond_owned", (PyCFunction)lock_cond_owned, METH_NOARGS,
     "_c_cond_owned($self, /)\n--\n\nthreading.Condition._is_owned() over this lock: True if held."},
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

/* -- Tracked: the base of the Python-level primitives ------------------------------------------- */

/* The fields' first values (object slots are NULL after allocation). */
static void
init_tracked(TrackedObject *self)
{
    if (self->n == NULL) self->n = Py_NewRef(g_zero_int);
    if (self->progress == NULL) self->progress = Py_NewRef(g_zero_int);
    if (self->hold == NULL) self->hold = Py_NewRef(Py_None);
    if (self->waiters == NULL) self->waiters = Py_NewRef(Py_None);
}

static void
link_tracked(TrackedObject *self)
{
    init_tracked(self);
    if (self->linked) return;
    self->prev = NULL;
    self->next = g_tracked_head;
    if (g_tracked_head != NULL) g_tracked_head->prev = self;
    g_tracked_head = self;
    self->linked = 1;
    g_tracked_live++;
    if (self->serial == 0) self->serial = ++g_serial;
}

static void
unlink_tracked(TrackedObject *self)
{
    if (!self->linked) return;
    if (self->prev != NULL) self->prev->next = self->next;
    else g_tracked_head = self->next;
    if (self->next != NULL) self->next->prev = self->prev;
    self->prev = self->next = NULL;
    self->linked = 0;
    g_tracked_live--;
}

static int
tracked_traverse(TrackedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->n);
    Py_VISIT(self->progress);
    Py_VISIT(self->stats);
    Py_VISIT(self->name);
    Py_VISIT(self->created);
    Py_VISIT(self->hold);
    Py_VISIT(self->waiters);
    return 0;
}

static int
tracked_clear(TrackedObject *self)
{
    Py_CLEAR(self->stats);
    Py_CLEAR(self->name);
    Py_CLEAR(self->created);
    Py_CLEAR(self->hold);
    Py_CLEAR(self->waiters);
    Py_CLEAR(self->n);
    Py_CLEAR(self->progress);
    return 0;
}

static void
tracked_dealloc(TrackedObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    unlink_tracked(self);
    /* (An exception may be in flight: an __init__ that raised. It is kept as it is.) */
    int used = (self->n != NULL && PyLong_Check(self->n) && _PyLong_Sign(self->n) != 0) ||
               (self->hold != NULL && self->hold != Py_None);
    if (used && self->stats != NULL && g_retire != NULL) {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        PyObject *r = PyObject_CallFunctionObjArgs(g_retire, self->stats, self->n, self->hold ? self->hold : Py_None, NULL);
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    tracked_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
tracked_get_name(TrackedObject *self, void *Py_UNUSED(closure))
{
    PyObject *v = self->name != NULL ? self->name : self->created;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_ct_name");
        return NULL;
    }
    return Py_NewRef(v);
}

static int
tracked_set_name(TrackedObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    Py_XSETREF(self->name, Py_XNewRef(value));
    return 0;
}

static PyObject *
tracked_get_serial(TrackedObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->serial);
}

static int
tracked_set_serial(TrackedObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    unsigned long long v = value ? PyLong_AsUnsignedLongLong(value) : 0;
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    self->serial = v;
    return 0;
}

static PyGetSetDef tracked_getset[] = {
    {"_ct_name", (getter)tracked_get_name, (setter)tracked_set_name, NULL, NULL},
    {"_ct_serial", (getter)tracked_get_serial, (setter)tracked_set_serial, NULL, NULL},
    {NULL},
};

static PyMemberDef tracked_members[] = {
    {"_ct_stats", T_OBJECT_EX, offsetof(TrackedObject, stats), 0, NULL},
    {"_ct_created", T_OBJECT_EX, offsetof(TrackedObject, created), 0, NULL},
    {"_ct_hold", T_OBJECT_EX, offsetof(TrackedObject, hold), 0, NULL},
    {"_ct_waiters", T_OBJECT_EX, offsetof(TrackedObject, waiters), 0, NULL},
    {"_ct_n", T_OBJECT_EX, offsetof(TrackedObject, n), 0, NULL},
    {"_ct_progress", T_OBJECT_EX, offsetof(TrackedObject, progress), 0, NULL},
    {NULL},
};

/* threading.Condition's __enter__ and __exit__ (`return self._lock.__enter__()`, `return
 * self._lock.__exit__(*args)`), as C methods that the traced Condition installs: every `with` on a
 * queue's or a future's condition paid two Python frames for them. The lock's own methods are looked
 * up as Python does (a subclass's override is called). */
static PyTypeObject *g_lock_cls, *g_rlock_cls; /* conctools.Lock and conctools.RLock (setup_primitives) */

/* The C function of ours behind type(lock).name, when lock is a conctools.Lock or RLock (not a
 * subclass: those have instance dicts, which could hold an override) whose method is still ours,
 * else NULL: the caller then looks the method up as Python does. */
static PyCFunction
own_method_lookup(PyTypeObject *tp, PyObject *name)
{
    PyObject *d = _PyType_Lookup(tp, name); /* borrowed */
    if (d == NULL || !Py_IS_TYPE(d, &PyMethodDescr_Type)) return NULL;
    PyMethodDef *def = ((PyMethodDescrObject *)d)->d_method;
    PyCFunction f = def->ml_meth;
    return f == (PyCFunction)lock_enter || f == (PyCFunction)rlock_enter || f == (PyCFunction)(void (*)(void))lock_exit ||
                   f == (PyCFunction)(void (*)(void))rlock_exit || f == (PyCFunction)lock_release ||
                   f == (PyCFunction)rlock_release || f == (PyCFunction)(void (*)(void))core_acquire
               ? f
               : NULL;
}

/* own_method()'s answers, reused while the type's version tag is the one they were found under (CPython gives a
 * type a new tag whenever it or a base is modified; 0: none): every `with` on a queue's condition asked twice,
 * each a lookup in the interpreter's type cache (issue 12). With the GIL only. */
#ifndef Py_GIL_DISABLED
#define OWN_CACHE 8
static struct {
    PyTypeObject *tp;
    PyObject *name; /* (an interned name of this module's: compared by identity) */
    unsigned int tag;
    PyCFunction f;
} g_own_cache[OWN_CACHE];
#endif

static PyCFunction
own_method(PyObject *lock, PyObject *name)
{
    PyTypeObject *tp = Py_TYPE(lock);
    if (tp != g_lock_cls && tp != g_rlock_cls) return NULL;
#ifndef Py_GIL_DISABLED
    int free_slot = -1;
    for (int i = 0; i < OWN_CACHE; i++) {
        if (g_own_cache[i].tp == tp && g_own_cache[i].name == name) {
            if (g_own_cache[i].tag != 0 && g_own_cache[i].tag == tp->tp_version_tag) return g_own_cache[i].f;
            free_slot = i; /* stale: found again below */
            break;
        }
        if (g_own_cache[i].tp == NULL && free_slot < 0) free_slot = i;
    }
    PyCFunction f = own_method_lookup(tp, name);
    if (free_slot >= 0) { /* (the lookup gave the type a tag if it had none) */
        g_own_cache[free_slot].tp = tp;
        g_own_cache[free_slot].name = name;
        g_own_cache[free_slot].tag = tp->tp_version_tag;
        g_own_cache[free_slot].f = f;
    }
    return f;
#else
    return own_method_lookup(tp, name);
#endif
}

/* conctools.Condition (exact) and its _lock slot, read in place while the class's version tag is the one its
 * _lock member descriptor was found under (cond_setup(); re-checked when the tag changes): a traced
 * Condition's `with` read self._lock by attribute access twice (its type's lookup, the descriptor's call). */
static PyTypeObject *g_cond_cls;
static PyObject *g_cond_lock_descr;
static Py_ssize_t g_cond_off_lock = -1;
static unsigned int g_cond_tag;

/* self._lock (a new reference), or NULL with the error attribute access raises. */
static PyObject *
cond_lock(PyObject *self)
{
#ifndef Py_GIL_DISABLED
    PyTypeObject *tp = Py_TYPE(self);
    if (tp == g_cond_cls && g_cond_off_lock >= 0) {
        if (tp->tp_version_tag != g_cond_tag || g_cond_tag == 0) {
            /* modified since (the class or a base): still our descriptor? */
            g_cond_tag = _PyType_Lookup(tp, s_lock_attr) == g_cond_lock_descr ? tp->tp_version_tag : 0;
        }
        PyObject *lock = g_cond_tag != 0 ? *OBJ_SLOT(self, g_cond_off_lock) : NULL;
        if (lock != NULL) return Py_NewRef(lock);
    }
#endif
    return PyObject_GetAttr(self, s_lock_attr);
}

/* cond_setup(cls): the traced Condition class, whose _lock slot cond_enter() and cond_exit() read in place. */
static PyObject *
py_cond_setup(PyObject *Py_UNUSED(module), PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "cond_setup(cls): a class");
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)cls;
    PyObject *d = _PyType_Lookup(tp, s_lock_attr); /* borrowed */
    Py_ssize_t off = d != NULL ? object_slot_offset(tp, "_lock") : -1;
    if (off < 0 || PyDict_GetItemString(tp->tp_dict, "_lock") != d) {
        g_cond_off_lock = -1;
        Py_RETURN_NONE;
    }
    Py_XSETREF(g_cond_cls, (PyTypeObject *)Py_NewRef(cls));
    Py_XSETREF(g_cond_lock_descr, Py_NewRef(d));
    g_cond_off_lock = off;
    g_cond_tag = tp->tp_version_tag; /* (assigned by the lookup above; 0: checked again at the first use) */
    Py_RETURN_NONE;
}

static PyObject *
cond_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *lock = cond_lock(self);
    if (lock == NULL) return NULL;
    PyObject *r;
    PyCFunction own = own_method(lock, s_enter);
    if (own != NULL) { /* (a Future's condition: its RLock's __enter__ called directly) */
        r = own(lock, NULL);
    }
    else {
        PyObject *args[1] = {lock};
        r = PyObject_VectorcallMethod(s_enter, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_DECREF(lock);
    return r;
}

static PyObject *
cond_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lock = cond_lock(self);
    if (lock == NULL) return NULL;
    PyObject *r;
    PyCFunction own = own_method(lock, s_exit);
    if (own != NULL) {
        r = ((PyObject * (*)(PyObject *, PyObject *const *, Py_ssize_t))(void (*)(void))own)(lock, args, nargs);
    }
    else if (nargs <= 7) {
        PyObject *stack[8];
        stack[0] = lock;
        for (Py_ssize_t i = 0; i < nargs; i++) stack[i + 1] = args[i];
        r = PyObject_VectorcallMethod(s_exit, stack, (size_t)(nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    else {
        PyObject *meth = PyObject_GetAttr(lock, s_exit);
        r = meth != NULL ? PyObject_Vectorcall(meth, args, (size_t)nargs, NULL) : NULL;
        Py_XDECREF(meth);
    }
    Py_DECREF(lock);
    return r;
}

/* Condition.acquire and .release, forwarded to self._lock's: threading.Condition binds them into each
 * instance (72 bytes each), the traced Condition on first use (a Python frame each time: two per
 * future that concurrent.futures.wait() or as_completed() takes). A subclass's are instance
 * attributes, which win over these. */
static PyObject *
cond_forward(PyObject *self, PyObject *name, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *lock = cond_lock(self);
    if (lock == NULL) return NULL;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *r;
    PyCFunction own = own_method(lock, name);
    if (own == (PyCFunction)(void (*)(void))core_acquire) { /* wait() and as_completed() on Futures */
        r = core_acquire((CoreObject *)lock, args, nargs, kwnames);
    }
    else if (own != NULL && nargs + nkw == 0) { /* release() (METH_NOARGS) */
        r = own(lock, NULL);
    }
    else if (nargs + nkw <= 7) {
        PyObject *stack[8];
        stack[0] = lock;
        for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[i + 1] = args[i];
        r = PyObject_VectorcallMethod(name, stack, (size_t)(nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    }
    else {
        PyObject *meth = PyObject_GetAttr(lock, name);
        r = meth != NULL ? PyObject_Vectorcall(meth, args, (size_t)nargs, kwnames) : NULL;
        Py_XDECREF(meth);
    }
    Py_DECREF(lock);
    return r;
}

static PyObject *
cond_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return cond_forward(self, s_acquire, args, (size_t)nargsf, kwnames);
}

static PyObject *
cond_release(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return cond_forward(self, s_release, args, (size_t)nargsf, kwnames);
}

static PyObject *sem_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames);
static PyObject *sem_release(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames);
static PyObject *sem_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef tracked_methods[] = {
    {"_c_sem_acquire", (PyCFunction)(void (*)(void))sem_acquire, METH_FASTCALL | METH_KEYWORDS,
     "_c_sem_acquire($self, /, blocking=True, timeout=None)\n--\n\nSemaphore.acquire (the Python method for a wait)."},
    {"_c_sem_release", (PyCFunction)(void (*)(void))sem_release, METH_FASTCALL | METH_KEYWORDS,
     "_c_sem_release($self, /, n=1)\n--\n\nSemaphore.release (the Python method when someone waits)."},
    {"_c_sem_exit", (PyCFunction)(void (*)(void))sem_exit, METH_FASTCALL,
     "_c_sem_exit($self, /, *args)\n--\n\nSemaphore.__exit__: self.release()."},
    {"_c_cond_acquire", (PyCFunction)(void (*)(void))cond_acquire, METH_FASTCALL | METH_KEYWORDS,
     "_c_cond_acquire($self, /, *args, **kwargs)\n--\n\nthreading.Condition.acquire: self._lock.acquire(...)."},
    {"_c_cond_release", (PyCFunction)(void (*)(void))cond_release, METH_FASTCALL | METH_KEYWORDS,
     "_c_cond_release($self, /, *args, **kwargs)\n--\n\nthreading.Condition.release: self._lock.release(...)."},
    {"_c_cond_enter", (PyCFunction)cond_enter, METH_NOARGS,
     "_c_cond_enter($self, /)\n--\n\nthreading.Condition.__enter__: self._lock.__enter__()."},
    {"_c_cond_exit", (PyCFunction)(void (*)(void))cond_exit, METH_FASTCALL,
     "_c_cond_exit($self, /, *args)\n--\n\nthreading.Condition.__exit__: self._lock.__exit__(*args)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot tracked_slots[] = {
    {Py_tp_doc, "The fields of a Python-level traced primitive (conctools.locks)."},
    {Py_tp_dealloc, tracked_dealloc},
    {Py_tp_traverse, tracked_traverse},
    {Py_tp_clear, tracked_clear},
    {Py_tp_members, tracked_members},
    {Py_tp_getset, tracked_getset},
    {Py_tp_methods, tracked_methods},
    /* No tp_new: object.__new__ is inherited, which sets up a subclass's instance dict the fast way
     * (inline values: PyType_GenericNew would leave attribute access 4x slower). */
    {0, NULL},
};

static PyType_Spec tracked_spec = {
    .name = "conctools._speedups.Tracked",
    .basicsize = sizeof(TrackedObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = tracked_slots,
};

/* AioLockFields: Tracked, and the fields of a conctools.aio.Lock that its acquisition and release read and
 * write (_ct_ordered, _ct_entry, _ct_owner, _ct_since, _ct_site, _ct_holdstack) as object slots, not
 * instance-dict entries: aio_took() and aio_released() read and store them directly (issue 12: a dozen
 * attribute lookups and stores per `async with lock`), and the Python methods read them as fast as before
 * (the interpreter's attribute caches serve slots). */
typedef struct {
    TrackedObject base;
    PyObject *ordered, *entry, *owner, *since, *site, *holdstack;
} AioLockObject;

static PyTypeObject *g_aiolock_type;

static int
aiolock_traverse(AioLockObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ordered);
    Py_VISIT(self->entry);
    Py_VISIT(self->owner);
    Py_VISIT(self->since);
    Py_VISIT(self->site);
    Py_VISIT(self->holdstack);
    return tracked_traverse((TrackedObject *)self, visit, arg);
}

static void
aiolock_clear_fields(AioLockObject *self)
{
    Py_CLEAR(self->ordered);
    Py_CLEAR(self->entry);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->since);
    Py_CLEAR(self->site);
    Py_CLEAR(self->holdstack);
}

static int
aiolock_clear(AioLockObject *self)
{
    aiolock_clear_fields(self);
    return tracked_clear((TrackedObject *)self);
}

static void
aiolock_dealloc(AioLockObject *self)
{
    PyObject_GC_UnTrack(self);
    aiolock_clear_fields(self);
    tracked_dealloc((TrackedObject *)self);
}

static PyMemberDef aiolock_members[] = {
    {"_ct_ordered", T_OBJECT_EX, offsetof(AioLockObject, ordered), 0, NULL},
    {"_ct_entry", T_OBJECT_EX, offsetof(AioLockObject, entry), 0, NULL},
    {"_ct_owner", T_OBJECT_EX, offsetof(AioLockObject, owner), 0, NULL},
    {"_ct_since", T_OBJECT_EX, offsetof(AioLockObject, since), 0, NULL},
    {"_ct_site", T_OBJECT_EX, offsetof(AioLockObject, site), 0, NULL},
    {"_ct_holdstack", T_OBJECT_EX, offsetof(AioLockObject, holdstack), 0, NULL},
    {NULL},
};

static PyType_Slot aiolock_slots[] = {
    {Py_tp_doc, "Tracked, with the fields of a traced asyncio.Lock (conctools.aio)."},
    {Py_tp_dealloc, aiolock_dealloc},
    {Py_tp_traverse, aiolock_traverse},
    {Py_tp_clear, aiolock_clear},
    {Py_tp_members, aiolock_members},
    {0, NULL},
};

static PyType_Spec aiolock_spec = {
    .name = "conctools._speedups.AioLockFields",
    .basicsize = sizeof(AioLockObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = aiolock_slots,
};

/* link(prim): put a Tracked primitive in the list of live primitives (once). */
static PyObject *
py_link(PyObject *Py_UNUSED(module), PyObject *prim)
{
    if (g_tracked_type == NULL || !PyObject_TypeCheck(prim, g_tracked_type)) {
        PyErr_SetString(PyExc_TypeError, "link() takes a Tracked primitive");
        return NULL;
    }
    link_tracked((TrackedObject *)prim);
    Py_RETURN_NONE;
}

/* untrack(obj): the garbage collector stops looking at a tuple or list that can never be part of a
 * reference cycle (lockorder's edge records: names, sites, held-lock entries whose lock is held
 * weakly). Tens of thousands of them live until pruned, and every collection walked them. */
static PyObject *
py_untrack(PyObject *Py_UNUSED(module), PyObject *obj)
{
    if ((PyTuple_CheckExact(obj) || PyList_CheckExact(obj)) && PyObject_GC_IsTracked(obj)) {
        PyObject_GC_UnTrack(obj);
    }
    Py_RETURN_NONE;
}

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
    Py_XSETREF(g_lock_type, Py_NewRef(lock_type));
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
    hist_find_slots();
    Py_XSETREF(g_tasks_by_loop, tasks_by_loop_of(g_current_task));
    g_running_loop_meth = NULL;
    g_running_loop_self = NULL;
    if (PyCFunction_Check(g_running_loop) && (PyCFunction_GET_FLAGS(g_running_loop) & METH_NOARGS)) {
        g_running_loop_meth = PyCFunction_GET_FUNCTION(g_running_loop);
        g_running_loop_self = PyCFunction_GET_SELF(g_running_loop); /* borrowed: g_running_loop keeps it */
    }
    clear_site_cache();
    Py_RETURN_NONE;
}

/* Is the lock of a held entry gone? 1 gone, 0 alive, -1 not an entry. */
static int
entry_gone(PyObject *h)
{
    if (!PyTuple_CheckExact(h) || PyTuple_GET_SIZE(h) < 5) return -1;
    PyObject *obj = held_ref_target(PyTuple_GET_ITEM(h, 0));
    if (obj == NULL) return -1;
    return obj == Py_None;
}

/* drop_dead_run(run, into, has_out): lockorder._drop_if_dead's work (the caller holds lockorder._mutex):
 * -1 when a lock of the run is alive; else the number of its edges removed from the graph (`into`,
 * lockorder._inst_in, and `has_out`), which is 0 unless they are a chain of their own, s0 -> ... -> sk:
 * no edge into s0, the only edge into each other one the run's, and one edge out of each but sk, none
 * out of sk. A fan-out of futures drops a run per wait(): ~25 steps of Python's map() each in Python. */
static PyObject *
drop_dead_run(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) || !IS_TABLE(args[2])) {
        PyErr_SetString(PyExc_TypeError, "drop_dead_run(run, into, has_out)");
        return NULL;
    }
    PyObject *run = args[0], *into = args[1], *out = args[2];
    if (PyList_GET_SIZE(run) < 11 || !PyList_CheckExact(PyList_GET_ITEM(run, 5))) return PyLong_FromLong(0);
    PyObject *same = PyList_GET_ITEM(run, 5);
    Py_ssize_t start = PyLong_AsSsize_t(PyList_GET_ITEM(run, 7));
    if (start == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(same);
    if (start < 0 || start >= n) return PyLong_FromLong(0);
    for (Py_ssize_t i = start; i < n; i++) {
        int gone = entry_gone(PyList_GET_ITEM(same, i));
        if (gone == 0) return PyLong_FromLong(-1);
        if (gone < 0) return PyLong_FromLong(0); /* (not an entry: the general pass) */
    }
    /* From here on every entry is a tuple of 5 or more (checked above); serials are ints or LockRefs. */
#define SERIAL(i) PyTuple_GET_ITEM(PyList_GET_ITEM(same, (i)), 3)
    for (Py_ssize_t i = start; i < n; i++) {
        if (!IS_SERIAL(SERIAL(i))) return PyLong_FromLong(0);
    }
    Py_ssize_t ignored;
    int r1 = PyDict_Contains(into, SERIAL(start)), r2 = tbl_get(out, SERIAL(start), &ignored);
    int r3 = tbl_get(out, SERIAL(n - 1), &ignored);
    if (r1 < 0 || r2 < 0 || r3 < 0) return NULL;
    if (r1 || !r2 || r3) return PyLong_FromLong(0);
    for (Py_ssize_t i = start + 1; i < n; i++) {
        PyObject *v = PyDict_GetItemWithError(into, SERIAL(i));
        if (v == NULL && PyErr_Occurred()) return NULL;
        if (v != run) return PyLong_FromLong(0);
    }
    for (Py_ssize_t i = start; i < n - 1; i++) {
        Py_ssize_t outs;
        int found = tbl_get(out, SERIAL(i), &outs);
        if (found < 0) return NULL;
        if (!found || outs != 1) return PyLong_FromLong(0);
    }
    /* Removing the entries frees no object of the run's (the caller holds it) and ints only. */
    for (Py_ssize_t i = start + 1; i < n; i++) {
        if (PyDict_DelItem(into, SERIAL(i)) < 0) return NULL;
    }
    for (Py_ssize_t i = start; i < n - 1; i++) {
        if (tbl_del(out, SERIAL(i)) < 0) return NULL;
    }
#undef SERIAL
    return PyLong_FromSsize_t(n - 1 - start);
}

/* graph_alive(into): are both locks of every edge of lockorder._inst_in alive (the caller holds
 * lockorder._mutex)? Then a prune pass (_prune_instances) would forget nothing: it only takes edges of dead
 * locks, and runs whose locks are all dead. False when one is gone, or for anything but the runs' shape
 * (the pass looks). A wait() on 40,000 futures grows the graph by live locks only: its passes at 2k, 8k
 * and 32k edges took ~0.1 s of Python, this ~1 ms. */
static PyObject *
graph_alive(PyObject *Py_UNUSED(module), PyObject *into)
{
    if (!PyDict_CheckExact(into)) {
        PyErr_SetString(PyExc_TypeError, "graph_alive(into): a dict");
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *to, *v;
    while (PyDict_Next(into, &pos, &to, &v)) { /* (no code runs: nothing can change the dict meanwhile) */
        if (!IS_SERIAL(to)) Py_RETURN_FALSE; /* (a key whose lookups could run code) */
        PyObject **runs, *same;
        Py_ssize_t k = runs_of(&v, &runs);
        for (Py_ssize_t j = 0; j < k; j++) {
            Py_ssize_t i = run_index(runs[j], to, &same);
            if (i < 0 || entry_gone(PyList_GET_ITEM(same, i)) != 0 || entry_gone(PyList_GET_ITEM(same, i - 1)) != 0) {
                Py_RETURN_FALSE;
            }
        }
    }
    Py_RETURN_TRUE;
}

/* setup_runs(runs, into, has_out, count, full_skip, prune_at, max_edges, mutex): lockorder's
 * instance-edge tables, for run_next() */
static PyObject *
setup_runs(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"runs",  "into",    "has_out", "count",           "full_skip",  "prune_at", "max_edges",
                             "mutex", "run_log", "stacks",  "stacks_per_site", "looked_at", NULL};
    PyObject *v[9];
    Py_ssize_t max_edges, per_site = -1, looked_at = 0;
    v[7] = v[8] = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OO!O!O!nO|OO!nn:setup_runs", kwlist, &PyDict_Type, &v[0],
                                     &PyDict_Type, &v[1], &v[2], &PyList_Type, &v[3], &PyList_Type, &v[4],
                                     &PyList_Type, &v[5], &max_edges, &v[6], &v[7], &PyDict_Type, &v[8], &per_site,
                                     &looked_at)) {
        return NULL;
    }
    if (!IS_TABLE(v[2])) {
        PyErr_SetString(PyExc_TypeError, "setup_runs: has_out is a dict or a RunIndex");
        return NULL;
    }
    PyObject *locked = PyObject_GetAttr(v[6], s_locked);
    if (locked == NULL) return NULL;
    Py_XSETREF(g_order_locked, locked);
    PyObject **slots[6] = {&g_runs, &g_inst_in, &g_inst_has_out, &g_inst_count, &g_inst_full_skip, &g_inst_prune_at};
    for (int i = 0; i < 6; i++) {
        Py_XSETREF(*slots[i], Py_NewRef(v[i]));
    }
    Py_XSETREF(g_run_log, Py_XNewRef(v[7]));
    Py_XSETREF(g_inst_stacks, Py_XNewRef(v[8]));
    g_inst_max_edges = max_edges;
    /* (without the run log and the stacks' table, run_start() leaves every first lock of a run to Python) */
    g_inst_stacks_per_site = v[7] != NULL && v[8] != NULL ? per_site : -1;
    g_runs_looked_at = looked_at;
    Py_RETURN_NONE;
}

/* order_checking(on): lockorder.check says it is running in this thread (True), or no longer (False). */
static PyObject *
py_order_checking(PyObject *Py_UNUSED(module), PyObject *on)
{
    int v = PyObject_IsTrue(on);
    if (v < 0) return NULL;
    t_checking = v;
    Py_RETURN_NONE;
}

/* setup_waits(wait_type, flush, site_text, begin_wait_slow, holder_exited, holder_brief, flush_at, stacks_per_site,
 * threshold, unsampled, events_cap) */
static PyObject *
setup_waits(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"wait_type", "flush", "site_text", "begin_wait_slow", "holder_exited", "holder_brief",
                             "flush_at", "stacks_per_site", "threshold", "unsampled", "events_cap", NULL};
    PyObject *v[8];
    Py_ssize_t flush_at;
    long long stacks, events_cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOOOOnLO!O!L:setup_waits", kwlist, &PyType_Type, &v[0], &v[1],
                                     &v[2], &v[3], &v[4], &v[5], &flush_at, &stacks, &PyList_Type, &v[6],
                                     &PyDict_Type, &v[7], &events_cap)) {
        return NULL;
    }
    if (setup_wait_type(v[0]) < 0) return NULL;
    PyObject **slots[8] = {&g_wait_type, &g_flush, &g_site_text, &g_begin_wait_slow, &g_holder_exited,
                           &g_holder_brief, &g_threshold, &g_unsampled};
    for (int i = 0; i < 8; i++) Py_XSETREF(*slots[i], Py_NewRef(v[i]));
    g_flush_at = flush_at;
    g_stacks_per_site = stacks;
    g_events_cap = events_cap;
    Py_RETURN_NONE;
}

static PyObject *
py_clear_caches(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    clear_site_cache();
    g_cache_gen++;
    acc_drain(1);
    acc_forget();
    acc_spare_release();
    Py_RETURN_NONE;
}

/* hist_add(hist, value): recorder.Histogram.add(value), in C (the caller serialises the histogram). */
static PyObject *
py_hist_add(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "hist_add(hist, value)");
        return NULL;
    }
    long long v = PyLong_AsLongLong(args[1]);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (g_hist_type != NULL && Py_IS_TYPE(args[0], (PyTypeObject *)g_hist_type)) {
        if (hist_add_fields(args[0], v) < 0) return NULL;
        Py_RETURN_NONE;
    }
    return PyObject_CallMethodOneArg(args[0], s_add, args[1]);
}

/* -- pool blame: the waits of a traced asyncio semaphore (conctools.pools) ---------------------- */

/* pools._patch.aio_wait_started/aio_wait_ended, in C for a wait that joins an exhaustion already under way
 * (thousands of tasks queue on one semaphore): the same counters as PoolState.wait_started/wait_ended,
 * stored under the pool's mutex, which is tried, never waited for. Everything else (the first waiter of
 * an exhaustion, a look at the holders that is due, a run of takes, the last waiter, a busy mutex, a state
 * not made yet) goes through the Python functions. No Python code runs on the fast path. */
static PyObject *g_sem_states;      /* pools._patch.sem_states: {id(prim): PoolState} */
static PyObject *g_sem_started;     /* pools._patch.aio_wait_started(prim) -> start_ns */
static PyObject *g_sem_ended;       /* pools._patch.aio_wait_ended(prim, start_ns) */
static PyObject *g_pool_globals;    /* pools._state's namespace: SNAPSHOT_EVERY_S, EPISODE_SNAPSHOT_EVERY_S */
/* PoolCounters: the base of conctools.pools' PoolState where the C paths run (issue 12): the counters an
 * asyncio semaphore wait updates, C fields (member descriptors for Python), so that the hooks below add to
 * them without a dict store and a new int each. */
typedef struct {
    PyObject_HEAD
    long long waits, waiters, episode_waits, episode_max, last_snapshot_ns;
    long long takes; /* items taken: a channel's take counted by the C asyncio.Queue.get_nowait (QueueMethod) */
    char identities; /* bool: whose items are followed (False: a channel, whose takes are only counted) */
    /* Waits that pool_sem_end() counted since the last _take_hist(), not yet in the state's wait_hist (a
     * recorder.Histogram of Python ints: an add there made four new ints and a dict store, ~1,500
     * instructions, at every wait that ends an exhaustion's middle): their count, total, longest and buckets
     * (ACC_BUCKETS counts, allocated at the first; NULL until then). PoolState._sync_hist() moves them into
     * wait_hist under the pool's mutex before anything reads or adds to it. */
    long long h_n, h_total, h_max;
    long long *h_buckets;
    /* What the fast paths read of a PoolState besides its counters, as PoolState sets them (member descriptors:
     * Python reads and stores them as attributes): C fields, so that a wait reads them without a dict lookup
     * each (six lookups were ~1,000 instructions of every contended semaphore wait). */
    PyObject *ref;              /* a weak reference to the pool's object, or None */
    PyObject *mutex;            /* the lock that serialises the state */
    PyObject *runs;             /* {id(party): _Run}: runs of takes (N+1) followed now */
    PyObject *episode_snapshot; /* the current exhaustion's look at the holders, or None */
    PyObject *held;             /* {id(item): holding}: who holds the items handed out (a queue's give-back
                                 * reads it at every put: an attribute lookup there was ~700 instructions) */
    char listed;                /* bool: kept for the report */
    char semaphore;             /* bool: a semaphore (its holders are looked at, not its items) */
} PoolCountersObject;

static PyMemberDef poolcounters_members[] = {
    {"waits", T_LONGLONG, offsetof(PoolCountersObject, waits), 0, "waits for an item, ever"},
    {"waiters", T_LONGLONG, offsetof(PoolCountersObject, waiters), 0, "waiting now"},
    {"episode_waits", T_LONGLONG, offsetof(PoolCountersObject, episode_waits), 0, "waits of this exhaustion"},
    {"episode_max", T_LONGLONG, offsetof(PoolCountersObject, episode_max), 0, "most waiters of this exhaustion"},
    {"last_snapshot_ns", T_LONGLONG, offsetof(PoolCountersObject, last_snapshot_ns), 0, "the last look's time"},
    {"takes", T_LONGLONG, offsetof(PoolCountersObject, takes), 0, "items taken, ever"},
    {"identities", T_BOOL, offsetof(PoolCountersObject, identities), 0, "whose items are followed (not a channel)"},
    {"ref", T_OBJECT_EX, offsetof(PoolCountersObject, ref), 0, "a weak reference to the pool's object, or None"},
    {"mutex", T_OBJECT_EX, offsetof(PoolCountersObject, mutex), 0, "the lock that serialises the state"},
    {"runs", T_OBJECT_EX, offsetof(PoolCountersObject, runs), 0, "runs of takes followed now"},
    {"episode_snapshot", T_OBJECT_EX, offsetof(PoolCountersObject, episode_snapshot), 0,
     "the current exhaustion's look at the holders, or None"},
    {"held", T_OBJECT_EX, offsetof(PoolCountersObject, held), 0, "who holds the items handed out"},
    {"listed", T_BOOL, offsetof(PoolCountersObject, listed), 0, "kept for the report"},
    {"semaphore", T_BOOL, offsetof(PoolCountersObject, semaphore), 0, "a semaphore"},
    {NULL},
};

static int
poolcounters_traverse(PyObject *self, visitproc visit, void *arg)
{
    PoolCountersObject *c = (PoolCountersObject *)self;
    Py_VISIT(c->ref);
    Py_VISIT(c->mutex);
    Py_VISIT(c->runs);
    Py_VISIT(c->episode_snapshot);
    Py_VISIT(c->held);
    return 0;
}

static int
poolcounters_clear(PyObject *self)
{
    PoolCountersObject *c = (PoolCountersObject *)self;
    Py_CLEAR(c->ref);
    Py_CLEAR(c->mutex);
    Py_CLEAR(c->runs);
    Py_CLEAR(c->episode_snapshot);
    Py_CLEAR(c->held);
    return 0;
}

static void
poolcounters_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    poolcounters_clear(self);
    PyMem_Free(((PoolCountersObject *)self)->h_buckets);
    Py_TYPE(self)->tp_free(self);
}

/* One ended wait of value ns into the pending counts: 0, or -1 (nothing changed: no memory, or a value out of
 * the buckets' range) when the caller must add it to wait_hist itself. */
static int
poolcounters_hist_add(PoolCountersObject *c, long long value)
{
    long long b = bucket_of(value);
    if (b < 0 || b >= ACC_BUCKETS) return -1;
    if (c->h_buckets == NULL) {
        c->h_buckets = PyMem_Calloc(ACC_BUCKETS, sizeof(long long));
        if (c->h_buckets == NULL) return -1;
    }
    c->h_buckets[b]++;
    c->h_n++;
    c->h_total += value;
    if (value > c->h_max) c->h_max = value;
    return 0;
}

/* _take_hist() -> None, or ({bucket: count}, count, total_ns, max_ns) of the waits counted in C since the
 * last call, which are forgotten here (the caller holds the pool's mutex and adds them to wait_hist). */
static PyObject *
poolcounters_take_hist(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PoolCountersObject *c = (PoolCountersObject *)self;
    if (c->h_n == 0 || c->h_buckets == NULL) Py_RETURN_NONE;
    PyObject *buckets = PyDict_New();
    if (buckets == NULL) return NULL;
    for (int b = 0; b < ACC_BUCKETS; b++) {
        if (!c->h_buckets[b]) continue;
        PyObject *k = PyLong_FromLong(b), *v = k != NULL ? PyLong_FromLongLong(c->h_buckets[b]) : NULL;
        int err = v == NULL || PyDict_SetItem(buckets, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (err) {
            Py_DECREF(buckets);
            return NULL; /* (nothing forgotten: a later call hands them on) */
        }
    }
    PyObject *out = Py_BuildValue("(NLLL)", buckets, c->h_n, c->h_total, c->h_max);
    if (out == NULL) return NULL;
    memset(c->h_buckets, 0, ACC_BUCKETS * sizeof(long long));
    c->h_n = c->h_total = c->h_max = 0;
    return out;
}

static PyMethodDef poolcounters_methods[] = {
    {"_take_hist", poolcounters_take_hist, METH_NOARGS,
     "_take_hist() -> None or ({bucket: count}, count, total_ns, max_ns): the waits counted in C since the last "
     "call, forgotten here (the caller holds the pool's mutex and adds them to wait_hist)."},
    {NULL},
};

static PyTypeObject PoolCounters_Type = {PyVarObject_HEAD_INIT(NULL, 0)};

static int
poolcounters_ready(PyObject *module)
{
    PoolCounters_Type.tp_name = "conctools._speedups.PoolCounters";
    PoolCounters_Type.tp_basicsize = sizeof(PoolCountersObject);
    PoolCounters_Type.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
    PoolCounters_Type.tp_traverse = poolcounters_traverse;
    PoolCounters_Type.tp_clear = poolcounters_clear;
    PoolCounters_Type.tp_doc = "A pool's wait counters, as C fields (the base of conctools.pools' PoolState).";
    /* object.__new__, not PyType_GenericNew: it also sets up a Python subclass instance's inline attribute
     * values (3.11+), so that attribute access on PoolState stays as fast as on a plain class. With
     * PyType_GenericNew its attributes went to a dict made later, and every attribute access of the pools'
     * Python paths took twice as long (the queue.Queue pipeline of bench_run.py: +4%). */
    PoolCounters_Type.tp_new = PyBaseObject_Type.tp_new;
    PoolCounters_Type.tp_dealloc = poolcounters_dealloc;
    PoolCounters_Type.tp_members = poolcounters_members;
    PoolCounters_Type.tp_methods = poolcounters_methods;
    if (PyType_Ready(&PoolCounters_Type) < 0) return -1;
    return PyModule_AddObject(module, "PoolCounters", Py_NewRef((PyObject *)&PoolCounters_Type));
}

/* -- The GIL hand-over: conctools' threads take the GIL back from a busy main thread at once (issue 12) ------ *
 * A thread waiting for the GIL is woken each time its holder releases it. An event loop releases it at every
 * select(0) and takes it back within a microsecond or two, before the woken waiter runs: the waiter loses the
 * race, sleeps again, and its switch interval starts over at each wake-up, so it never asks the loop to drop the
 * GIL. One acquisition by a conctools thread (a GIL sample, a follower's poll, a pool look) cost the program's
 * thread hundreds of futex wake-ups, ~3% of a busy asyncio program's CPU time. Instead, a conctools thread about
 * to take the GIL back after a wait (ho_restore) asks the main thread, by a pending call, to let go of it: the
 * main thread, at its next check between bytecodes, releases the GIL and waits until the asker has it (at most
 * HO_YIELD_US: a third thread may take it first), then queues for it as after any forced switch. One asker at a
 * time (the others take the GIL the usual way); nothing but the GIL changes hands, and no Python code runs. A
 * main thread blocked in C has released the GIL already: the asker takes it, and the pending call, when it runs,
 * finds nobody asking. Not on free-threaded builds (no GIL). */
enum { HO_IDLE, HO_WANTED, HO_YIELDING, HO_GOT };
#define HO_YIELD_US 300
static int g_ho_state;              /* HO_* (atomic) */
static int g_ho_pending;            /* a pending call queued and not run yet (atomic) */
static int g_ho_on = 1;             /* handover(False) turns it off (benchmarks, tests) */
static PyThread_type_lock g_ho_got; /* held at rest; an asker that took a yielded GIL releases it once */
static unsigned long long g_ho_counts[3]; /* asked, yielded, handed over (atomic adds) */

#ifndef Py_GIL_DISABLED
static int
ho_yield(void *Py_UNUSED(arg))
{
    __atomic_store_n(&g_ho_pending, 0, __ATOMIC_RELEASE);
    int expected = HO_WANTED;
    if (!__atomic_compare_exchange_n(&g_ho_state, &expected, HO_YIELDING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        return 0; /* nobody asks (any more) */
    }
    __atomic_add_fetch(&g_ho_counts[1], 1, __ATOMIC_RELAXED);
    Py_BEGIN_ALLOW_THREADS
    int got = PyThread_acquire_lock_timed(g_ho_got, HO_YIELD_US, 0) == PY_LOCK_ACQUIRED;
    if (!got) {
        expected = HO_YIELDING;
        if (!__atomic_compare_exchange_n(&g_ho_state, &expected, HO_IDLE, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            /* HO_GOT: the asker has the GIL and releases g_ho_got next (nothing in between): take it */
            PyThread_acquire_lock(g_ho_got, WAIT_LOCK);
            got = 1;
        }
    }
    if (got) __atomic_store_n(&g_ho_state, HO_IDLE, __ATOMIC_RELEASE);
    Py_END_ALLOW_THREADS
    return 0;
}
#endif

/* PyEval_RestoreThread(ts), asking the main thread to yield the GIL first. */
static void
ho_restore(PyThreadState *ts)
{
#ifndef Py_GIL_DISABLED
    int asked = 0;
    int expected = HO_IDLE;
    if (g_ho_on && g_ho_got != NULL &&
        __atomic_compare_exchange_n(&g_ho_state, &expected, HO_WANTED, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        asked = 1;
        __atomic_add_fetch(&g_ho_counts[0], 1, __ATOMIC_RELAXED);
        /* one pending call at a time: one queued and not run yet serves this ask too */
        if (__atomic_exchange_n(&g_ho_pending, 1, __ATOMIC_ACQ_REL) == 0 && Py_AddPendingCall(ho_yield, NULL) != 0) {
            __atomic_store_n(&g_ho_pending, 0, __ATOMIC_RELEASE);
            expected = HO_WANTED;
            __atomic_compare_exchange_n(&g_ho_state, &expected, HO_IDLE, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
            asked = 0;
        }
    }
#endif
    PyEval_RestoreThread(ts);
#ifndef Py_GIL_DISABLED
    if (asked) {
        expected = HO_WANTED; /* not yielded (the GIL was free, or the main thread has not checked yet) */
        if (!__atomic_compare_exchange_n(&g_ho_state, &expected, HO_IDLE, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            expected = HO_YIELDING;
            if (__atomic_compare_exchange_n(&g_ho_state, &expected, HO_GOT, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                __atomic_add_fetch(&g_ho_counts[2], 1, __ATOMIC_RELAXED);
                PyThread_release_lock(g_ho_got); /* the main thread goes on (and queues for the GIL) */
            }
        }
    }
#endif
}

/* handover([on]) -> (asked, yielded, handed over): the hand-over's counts; on: turn it on or off. */
static PyObject *
py_handover(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "handover([on])");
        return NULL;
    }
    if (nargs == 1) {
        int on = PyObject_IsTrue(args[0]);
        if (on < 0) return NULL;
        g_ho_on = on;
    }
    return Py_BuildValue("(KKK)", __atomic_load_n(&g_ho_counts[0], __ATOMIC_RELAXED),
                         __atomic_load_n(&g_ho_counts[1], __ATOMIC_RELAXED),
                         __atomic_load_n(&g_ho_counts[2], __ATOMIC_RELAXED));
}

/* handover_yielding() -> bool: the main thread has let go of the GIL for an asker and waits for it to take it
 * (at most HO_YIELD_US): it wants the GIL back, though it sleeps on another futex than the GIL's. */
static PyObject *
py_handover_yielding(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(__atomic_load_n(&g_ho_state, __ATOMIC_ACQUIRE) == HO_YIELDING);
}

/* handover_after_fork(): in a forked child (one thread): nobody asks, no pending call of the parent's counts. */
static PyObject *
py_handover_after_fork(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyThread_type_lock fresh = PyThread_allocate_lock(); /* the parent's may have been mid-hand-over */
    if (fresh != NULL) {
        PyThread_acquire_lock(fresh, WAIT_LOCK);
        g_ho_got = fresh; /* (the old one is left: it may be in any state) */
    }
    else {
        g_ho_on = 0;
    }
    __atomic_store_n(&g_ho_state, HO_IDLE, __ATOMIC_RELEASE);
    __atomic_store_n(&g_ho_pending, 0, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* -- WaitLock: the lock conctools' threads sleep on between looks, taking the GIL back by the hand-over ------- *
 * A plain lock (acquire(blocking=True, timeout=-1), release(), locked(), with, _at_fork_reinit()) like
 * _thread.lock, for the stop and wake locks of conctools' own threads only. */
typedef struct {
    PyObject_HEAD
    PyThread_type_lock lk;
    char locked;
} WaitLockObject;

static PyObject *
waitlock_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    WaitLockObject *self = (WaitLockObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->lk = PyThread_allocate_lock();
    if (self->lk == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
waitlock_dealloc(WaitLockObject *self)
{
    if (self->lk != NULL) {
        if (self->locked) PyThread_release_lock(self->lk);
        PyThread_free_lock(self->lk);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
waitlock_acquire(WaitLockObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pd:acquire", kwlist, &blocking, &timeout)) return NULL;
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return NULL;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return NULL;
    }
    PyLockStatus r = PyThread_acquire_lock_timed(self->lk, 0, 0);
    if (r != PY_LOCK_ACQUIRED && blocking) {
        PY_TIMEOUT_T us = -1;
        if (timeout >= 0) {
            double t = timeout * 1e6;
            us = t >= (double)PY_TIMEOUT_MAX ? PY_TIMEOUT_MAX : (PY_TIMEOUT_T)t;
        }
        PyThreadState *ts = PyEval_SaveThread();
        r = PyThread_acquire_lock_timed(self->lk, us, 0);
        ho_restore(ts);
    }
    if (r == PY_LOCK_ACQUIRED) {
        self->locked = 1;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *
waitlock_release(WaitLockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    self->locked = 0;
    PyThread_release_lock(self->lk);
    Py_RETURN_NONE;
}

static PyObject *
waitlock_locked(WaitLockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->locked);
}

static PyObject *
waitlock_exit(WaitLockObject *self, PyObject *Py_UNUSED(args))
{
    return waitlock_release(self, NULL);
}

static PyObject *
waitlock_at_fork_reinit(WaitLockObject *self, PyObject *Py_UNUSED(ignored))
{
    PyThread_type_lock fresh = PyThread_allocate_lock(); /* (the old one may be in any state: left) */
    if (fresh == NULL) return PyErr_NoMemory();
    self->lk = fresh;
    self->locked = 0;
    Py_RETURN_NONE;
}

static PyMethodDef waitlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))waitlock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool, as _thread.lock's (the GIL taken back by the hand-over)."},
    {"__enter__", (PyCFunction)(void (*)(void))waitlock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)waitlock_release, METH_NOARGS, "release()"},
    {"__exit__", (PyCFunction)waitlock_exit, METH_VARARGS, NULL},
    {"locked", (PyCFunction)waitlock_locked, METH_NOARGS, "locked() -> bool"},
    {"_at_fork_reinit", (PyCFunction)waitlock_at_fork_reinit, METH_NOARGS, "a free lock again (in a forked child)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WaitLock_Type = {PyVarObject_HEAD_INIT(NULL, 0)};

static int
waitlock_ready(PyObject *module)
{
    g_ho_got = PyThread_allocate_lock();
    if (g_ho_got == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyThread_acquire_lock(g_ho_got, WAIT_LOCK);
    WaitLock_Type.tp_name = "conctools._speedups.WaitLock";
    WaitLock_Type.tp_basicsize = sizeof(WaitLockObject);
    WaitLock_Type.tp_flags = Py_TPFLAGS_DEFAULT;
    WaitLock_Type.tp_doc = "A lock conctools' own threads sleep on: it takes the GIL back by the hand-over.";
    WaitLock_Type.tp_new = waitlock_new;
    WaitLock_Type.tp_dealloc = (destructor)waitlock_dealloc;
    WaitLock_Type.tp_methods = waitlock_methods;
    if (PyType_Ready(&WaitLock_Type) < 0) return -1;
    return PyModule_AddObject(module, "WaitLock", Py_NewRef((PyObject *)&WaitLock_Type));
}

/* -- BeatCell: the loop monitor's heartbeat, as its watchdog reads it without the GIL (issue 12) ------------ *
 * The loop monitor's watchdog thread wakes up when a loop has been silent for its threshold. Between two
 * stalls it woke every ~threshold (each heartbeat pushed the deadline on), and every wake-up took the GIL:
 * from a busy event loop, which releases the GIL at every select(0) and takes it back before a waiter runs,
 * that cost dozens of futex wake-ups in the program's thread each time. wait_silent() sleeps through the
 * heartbeats without the GIL: it returns (holding it again) only when the loop has been silent for the
 * threshold, at a deadline, or when kicked (the monitor stops, or its loop starts again). The heartbeat
 * stores its time with set() (under the GIL); the watchdog reads it with an atomic load. */
typedef struct {
    PyObject_HEAD
    long long last_ns;       /* the last heartbeat (monotonic ns) */
    int kicked;              /* 1 from kick() until a wait_silent() returns 2 */
    PyThread_type_lock wake; /* held while not kicked */
} BeatCellObject;

static PyObject *
beatcell_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    BeatCellObject *self = (BeatCellObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->wake = PyThread_allocate_lock();
    if (self->wake == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    PyThread_acquire_lock(self->wake, WAIT_LOCK);
    self->last_ns = mono_ns();
    return (PyObject *)self;
}

static void
beatcell_dealloc(BeatCellObject *self)
{
    if (self->wake != NULL) {
        if (__atomic_load_n(&self->kicked, __ATOMIC_ACQUIRE) == 0) PyThread_release_lock(self->wake);
        PyThread_free_lock(self->wake);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set(ns): the heartbeat ran at ns (monotonic). */
static PyObject *
beatcell_set(BeatCellObject *self, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred()) return NULL;
    __atomic_store_n(&self->last_ns, ns, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* kick(): wake a wait_silent() in progress (or make the next one return at once). */
static PyObject *
beatcell_kick(BeatCellObject *self, PyObject *Py_UNUSED(ignored))
{
    if (__atomic_exchange_n(&self->kicked, 1, __ATOMIC_ACQ_REL) == 0) PyThread_release_lock(self->wake);
    Py_RETURN_NONE;
}

/* wait_silent(threshold_ns, until_ns) -> 1 the loop has been silent for threshold_ns (no set() since), 0
 * until_ns (monotonic) came first, 2 kicked. Waits without the GIL. */
static PyObject *
beatcell_wait_silent(BeatCellObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait_silent(threshold_ns, until_ns)");
        return NULL;
    }
    long long threshold = PyLong_AsLongLong(args[0]), until = PyLong_AsLongLong(args[1]);
    if ((threshold == -1 || until == -1) && PyErr_Occurred()) return NULL;
    int result;
    PyThreadState *ts = PyEval_SaveThread();
    for (;;) {
        long long now = mono_ns();
        long long due = __atomic_load_n(&self->last_ns, __ATOMIC_ACQUIRE) + threshold;
        if (now >= due) {
            result = 1;
            break;
        }
        if (now >= until) {
            result = 0;
            break;
        }
        long long nap_us = ((due < until ? due : until) - now + 999) / 1000;
        if (PyThread_acquire_lock_timed(self->wake, nap_us, 0) == PY_LOCK_ACQUIRED) {
            __atomic_store_n(&self->kicked, 0, __ATOMIC_RELEASE);
            result = 2;
            break;
        }
    }
    ho_restore(ts); /* (the GIL back by the hand-over) */
    return PyLong_FromLong(result);
}

static PyMethodDef beatcell_methods[] = {
    {"set", (PyCFunction)beatcell_set, METH_O, "set(ns): the heartbeat ran at ns (monotonic)."},
    {"kick", (PyCFunction)beatcell_kick, METH_NOARGS, "kick(): wake a wait_silent() in progress."},
    {"wait_silent", (PyCFunction)(void (*)(void))beatcell_wait_silent, METH_FASTCALL,
     "wait_silent(threshold_ns, until_ns) -> 1 silent for the threshold, 0 until_ns reached, 2 kicked (waits "
     "without the GIL)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BeatCell_Type = {PyVarObject_HEAD_INIT(NULL, 0)};

static int
beatcell_ready(PyObject *module)
{
    BeatCell_Type.tp_name = "conctools._speedups.BeatCell";
    BeatCell_Type.tp_basicsize = sizeof(BeatCellObject);
    BeatCell_Type.tp_flags = Py_TPFLAGS_DEFAULT;
    BeatCell_Type.tp_doc = "The loop monitor's heartbeat time, which its watchdog waits on without the GIL.";
    BeatCell_Type.tp_new = beatcell_new;
    BeatCell_Type.tp_dealloc = (destructor)beatcell_dealloc;
    BeatCell_Type.tp_methods = beatcell_methods;
    if (PyType_Ready(&BeatCell_Type) < 0) return -1;
    return PyModule_AddObject(module, "BeatCell", Py_NewRef((PyObject *)&BeatCell_Type));
}

/* QueueMethod: asyncio.Queue.get_nowait and put_nowait as conctools.pools' track_pools() replaces them (issue 12),
 * in C where the extension is built: a Python wrapper cost each item a frame of its own, and a channel's take its
 * mutex too. Called as a method (Py_TPFLAGS_METHOD_DESCRIPTOR: no bound method for q.get_nowait()), it calls
 * asyncio's own method, then:
 *   get_nowait: a take from a queue whose state (PoolCounters: the queue's "_conctools_pool") is a channel
 *     (identities False) is counted here, takes += 1, without the state's mutex: the GIL is held and no Python
 *     code runs between the read and the store (as _q_get's `state.takes += 1` under the GIL); every other
 *     take goes to the Python rest, slow(queue, item), as before (its sys._getframe(1) is the caller's frame:
 *     a C call has no frame of its own).
 *   put_nowait: a put to a queue without state, or to a channel holding nobody's items, goes straight to
 *     asyncio's; any other goes to slow(queue, item), the whole Python wrapper.
 * Without a GIL (free-threaded builds do not build this module) every take would go the Python way. */
typedef struct {
    PyObject_HEAD
    PyObject *original; /* asyncio.Queue's own method (a function) */
    PyObject *slow;     /* the Python rest (get_nowait) or the whole Python wrapper (put_nowait) */
    PyObject *dict;     /* __name__, __qualname__, __doc__, __module__, __wrapped__ (set by _patch._copy_meta) */
    PyObject *qsizes;   /* queue.Queue's get/put: the _qsize functions that are len(self.queue); NULL: asyncio's */
    int put;            /* 1: put_nowait(item), 0: get_nowait() */
    vectorcallfunc vectorcall;
} QueueMethodObject;

static PyObject *s_queue_state, *s_qsize, *s_queue_attr;
static PoolCountersObject *queue_counters(PyObject *queue, PyObject **other);
static int queue_is_bare_channel(PoolCountersObject *c);

/* queue.Queue.get and put as track_pools() replaces them (the "sync" QueueMethods: qsizes set), in C: _q_get's
 * and _q_put's common cases without their Python frame (issue 12: a queue.Queue pipeline makes hundreds of
 * thousands). put: a queue without state, or a channel holding nobody's items, goes straight to queue.Queue.put,
 * any other to _q_put. get: a channel's get that finds an item (block false, or the queue not empty: its
 * _qsize() one of the stdlib's len(self.queue), read here) is queue.Queue.get, then takes += 1; any other
 * (no state yet: _q_get makes it; identities; an empty queue: a wait to time; keyword arguments) goes to _q_get.
 * queue.Queue's own code takes its mutex: another thread may empty the queue between the look and the get, as
 * in _q_get. */
/* A put (args[0] the queue): a queue without state, or a channel holding nobody's items, goes straight to the
 * original method; any other to the whole Python wrapper (slow). */
static PyObject *
queuemethod_put(QueueMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *other = NULL;
    PoolCountersObject *c = queue_counters(args[0], &other);
    if ((c == NULL && other == NULL) || (c != NULL && queue_is_bare_channel(c)))
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static PyObject *
queuemethod_sync(QueueMethodObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) return PyObject_Vectorcall(self->original, args, nargsf, kwnames); /* (raises as it does) */
    if (self->put) return queuemethod_put(self, args, nargsf, kwnames);
    PyObject *queue = args[0], *other = NULL;
    PoolCountersObject *c = queue_counters(queue, &other);
#ifndef Py_GIL_DISABLED
    int fast = c != NULL && !c->identities && kwnames == NULL && nargs <= 3;
    int block = 1;
    if (fast && nargs >= 2) {
        block = PyObject_IsTrue(args[1]);
        if (block < 0) {
            PyErr_Clear();
            fast = 0;
        }
    }
    if (fast && block) { /* _q_get's `not self._qsize()`, for the stdlib's _qsize (len(self.queue)) */
        PyObject *qsize = _PyType_Lookup(Py_TYPE(queue), s_qsize); /* borrowed */
        int known = 0;
        for (Py_ssize_t i = 0; qsize != NULL && i < PyTuple_GET_SIZE(self->qsizes); i++) {
            if (PyTuple_GET_ITEM(self->qsizes, i) == qsize) known = 1;
        }
        Py_ssize_t n = -1;
        if (known) {
            PyObject *items = PyObject_GetAttr(queue, s_queue_attr);
            n = items != NULL ? PyObject_Length(items) : -1;
            Py_XDECREF(items);
            if (n < 0) PyErr_Clear();
        }
        fast = n > 0;
    }
    if (fast) {
        Py_INCREF(c); /* the state as _q_get holds it across its get (which runs Python code) */
        PyObject *item = PyObject_Vectorcall(self->original, args, nargsf, NULL);
        if (item != NULL && !c->identities) {
            c->takes += 1;
        }
        else if (item != NULL) { /* (identities turned on meanwhile: PoolState.take, as _q_get would) */
            PyObject *f = (PyObject *)PyEval_GetFrame();
            PyObject *r = PyObject_CallMethod((PyObject *)c, "take", "OO", item, f != NULL ? f : Py_None);
            if (r == NULL) PyErr_Clear();
            Py_XDECREF(r);
        }
        Py_DECREF(c);
        return item;
    }
#endif
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

/* The PoolCounters state of a tracked queue (borrowed: the queue holds it and no Python code runs while it
 * is used), NULL when it has none, or another object there (the Python way decides), no error set. */
static PoolCountersObject *
queue_counters(PyObject *queue, PyObject **other)
{
    PyObject *state = NULL;
    *other = NULL;
#if PY_VERSION_HEX >= 0x030D0000
    int found = PyObject_GetOptionalAttr(queue, s_queue_state, &state);
#else
    int found = _PyObject_LookupAttr(queue, s_queue_state, &state);
#endif
    if (found < 0) {
        PyErr_Clear();
        *other = Py_None; /* (an error: the Python way, which has its own handling) */
        return NULL;
    }
    if (state == NULL || state == Py_None) {
        Py_XDECREF(state);
        return NULL;
    }
    Py_DECREF(state); /* (still referenced by the queue) */
    if (PyObject_TypeCheck(state, &PoolCounters_Type)) return (PoolCountersObject *)state;
    *other = state;
    return NULL;
}

/* A channel holding nobody's items (PoolState.give_back() would do nothing): identities False, held empty. */
static int
queue_is_bare_channel(PoolCountersObject *c)
{
    if (c->identities) return 0;
    PyObject *held = c->held; /* (borrowed: no code runs) */
    return held != NULL && PyDict_CheckExact(held) && PyDict_GET_SIZE(held) == 0;
}

static PyObject *
queuemethod_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    QueueMethodObject *self = (QueueMethodObject *)callable;
    if (self->qsizes != NULL) return queuemethod_sync(self, args, nargsf, kwnames);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 + self->put || kwnames != NULL) /* (asyncio's method raises what a wrong call raises) */
        return PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    if (self->put) return queuemethod_put(self, args, nargsf, NULL);
    PyObject *queue = args[0], *other = NULL;
    PyObject *item = PyObject_Vectorcall(self->original, args, nargsf, NULL);
    if (item == NULL) return NULL;
    PoolCountersObject *c = queue_counters(queue, &other);
#ifndef Py_GIL_DISABLED
    if (c != NULL && !c->identities) {
        c->takes += 1;
        return item;
    }
#endif
    PyObject *rest[2] = {queue, item};
    PyObject *r = PyObject_Vectorcall(self->slow, rest, 2, NULL);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) { /* (KeyboardInterrupt and the like go on, as before) */
            Py_DECREF(item);
            return NULL;
        }
        PyErr_Clear(); /* (the Python rest catches its own: observation never breaks the program) */
    }
    Py_XDECREF(r);
    return item;
}

static PyObject *
queuemethod_descr_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static int
queuemethod_traverse(PyObject *op, visitproc visit, void *arg)
{
    QueueMethodObject *self = (QueueMethodObject *)op;
    Py_VISIT(self->original);
    Py_VISIT(self->slow);
    Py_VISIT(self->dict);
    Py_VISIT(self->qsizes);
    return 0;
}

static int
queuemethod_clear(PyObject *op)
{
    QueueMethodObject *self = (QueueMethodObject *)op;
    Py_CLEAR(self->original);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->qsizes);
    return 0;
}

static void
queuemethod_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    queuemethod_clear(op);
    Py_TYPE(op)->tp_free(op);
}

/* QueueMethod(original, slow, put[, qsizes]): qsizes (a tuple of functions) makes it queue.Queue's get/put */
static PyObject *
queuemethod_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *original, *slow, *qsizes = NULL;
    int put;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "QueueMethod(original, slow, put[, qsizes]) takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOp|O!:QueueMethod", &original, &slow, &put, &PyTuple_Type, &qsizes)) return NULL;
    if (!PyCallable_Check(original) || !PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "QueueMethod(original, slow, put): original and slow must be callable");
        return NULL;
    }
    QueueMethodObject *self = (QueueMethodObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->original = Py_NewRef(original);
    self->slow = Py_NewRef(slow);
    self->qsizes = Py_XNewRef(qsizes);
    self->put = put;
    self->vectorcall = queuemethod_vectorcall;
    return (PyObject *)self;
}

static PyObject *
queuemethod_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return PyVectorcall_Call(self, args, kwargs);
}

static PyTypeObject QueueMethod_Type = {PyVarObject_HEAD_INIT(NULL, 0)};

static int
queuemethod_ready(PyObject *module)
{
    QueueMethod_Type.tp_name = "conctools._speedups.QueueMethod";
    QueueMethod_Type.tp_basicsize = sizeof(QueueMethodObject);
    QueueMethod_Type.tp_flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_HAVE_VECTORCALL;
    QueueMethod_Type.tp_doc = "asyncio.Queue.get_nowait/put_nowait, queue.Queue.get/put as conctools.pools tracks them (C).";
    QueueMethod_Type.tp_new = queuemethod_new;
    QueueMethod_Type.tp_dealloc = queuemethod_dealloc;
    QueueMethod_Type.tp_traverse = queuemethod_traverse;
    QueueMethod_Type.tp_clear = queuemethod_clear;
    QueueMethod_Type.tp_call = queuemethod_call;
    QueueMethod_Type.tp_vectorcall_offset = offsetof(QueueMethodObject, vectorcall);
    QueueMethod_Type.tp_descr_get = queuemethod_descr_get;
    QueueMethod_Type.tp_dictoffset = offsetof(QueueMethodObject, dict);
    QueueMethod_Type.tp_getattro = PyObject_GenericGetAttr;
    QueueMethod_Type.tp_setattro = PyObject_GenericSetAttr;
    if (PyType_Ready(&QueueMethod_Type) < 0) return -1;
    return PyModule_AddObject(module, "QueueMethod", Py_NewRef((PyObject *)&QueueMethod_Type));
}

static PyObject *s_snapshot_every, *s_episode_snapshot_every;

/* A PoolState's fields that the fast paths read are the C fields of its PoolCounters base (see there), and its
 * wait counters too, added to in place. */
/* The PoolState that sem_states has for prim (borrowed), else NULL (no error set). */
/* A dict's version tag (3.11-3.13): it moves on every change of the dict, so a value read from an unchanged
 * dict may be reused (issue 12: a semaphore's wait read pools._state's two settings and its state, three
 * dict lookups, ~550 instructions). 0: no tag (3.14 dropped it): read again. */
#if PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
static uint64_t
dict_tag(PyObject *d)
{
    return PyDict_CheckExact(d) ? ((PyDictObject *)d)->ma_version_tag : 0;
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#else
static uint64_t
dict_tag(PyObject *d)
{
    (void)d;
    return 0;
}
#endif

static struct {
    PyObject *dict; /* borrowed: compared only */
    uint64_t tag;
    void *prim;
    PyObject *state; /* borrowed: in dict, which has not changed */
} g_sem_state_seen;

static PyObject *
pool_state_lookup(PyObject *prim)
{
    if (g_sem_states == NULL || !PyDict_Check(g_sem_states)) return NULL;
    uint64_t tag = dict_tag(g_sem_states);
    if (tag != 0 && g_sem_state_seen.dict == g_sem_states && g_sem_state_seen.tag == tag &&
        g_sem_state_seen.prim == (void *)prim) {
        return g_sem_state_seen.state;
    }
    PyObject *key = PyLong_FromVoidPtr(prim);
    if (key == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *state = PyDict_GetItemWithError(g_sem_states, key); /* borrowed */
    Py_DECREF(key); /* (an int: nothing runs) */
    if (state == NULL) PyErr_Clear();
    else if (tag != 0) {
        g_sem_state_seen.dict = g_sem_states;
        g_sem_state_seen.tag = tag;
        g_sem_state_seen.prim = (void *)prim;
        g_sem_state_seen.state = state;
    }
    return state;
}

/* state as the PoolCounters of a PoolState of prim, its fields set (borrowed: the caller keeps the state alive
 * while it uses them, and no Python code runs meanwhile), else NULL (no error set). */
static PoolCountersObject *
pool_counters_of(PyObject *state, PyObject *prim)
{
    if (state == NULL || !PyObject_TypeCheck(state, &PoolCounters_Type)) return NULL;
    PoolCountersObject *c = (PoolCountersObject *)state;
    if (c->ref == NULL || c->mutex == NULL || c->runs == NULL || c->episode_snapshot == NULL || !PyWeakref_Check(c->ref)) {
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    int same = PyWeakref_GetRef(c->ref, &obj) == 1 && obj == prim;
    Py_XDECREF(obj);
#else
    int same = PyWeakref_GetObject(c->ref) == prim; /* (borrowed) */
#endif
    PyErr_Clear();
    return same ? c : NULL;
}

/* May the fast path update the state c now? 1: yes, with *held the state's mutex, taken (new reference), or
 * NULL when it need not be taken; 0: no (the caller goes the Python way).
 *
 * With the GIL, a mutex found unlocked is not taken (issue 12: an acquire(False) parses its arguments, a
 * third of the fast path): every Python reader and writer of these fields holds the mutex, so while it is
 * free no Python code is half-way through an update, and the fast path runs no Python code and does not
 * let the GIL go (plain dict and int operations on the state's own fields): its update is as atomic as
 * under the mutex. A mutex found locked: the Python way, which waits for it. Without a GIL it is taken. */
static int
pool_enter(PoolCountersObject *c, PyObject **held)
{
    *held = NULL;
    PyObject *mutex = c->mutex;
    if (mutex == NULL || g_lock_type == NULL || !Py_IS_TYPE(mutex, (PyTypeObject *)g_lock_type) ||
        m_lock_acquire == NULL || m_lock_release == NULL) {
        return 0;
    }
#ifndef Py_GIL_DISABLED
    if (m_lock_locked != NULL) {
        PyObject *locked = call_noargs(m_lock_locked, mutex);
        int free_now = locked == Py_False;
        Py_XDECREF(locked);
        PyErr_Clear();
        return free_now;
    }
#endif
    Py_INCREF(mutex);
    PyObject *got = call_varargs(m_lock_acquire, f_lock_acquire, mutex, g_false_args);
    int ok = got == Py_True;
    Py_XDECREF(got);
    PyErr_Clear();
    if (!ok) {
        Py_DECREF(mutex);
        return 0;
    }
    *held = mutex;
    return 1;
}

/* The end of a pool_enter() that said yes. */
static void
pool_leave(PyObject *held)
{
    if (held == NULL) return;
    PyObject *r = call_noargs(m_lock_release, held);
    Py_XDECREF(r);
    Py_DECREF(held);
    PyErr_Clear();
}

/* A float of pools._state's namespace, -1 when it is missing or not a number. */
static double
pool_setting(PyObject *name)
{
    PyObject *v = g_pool_globals != NULL ? PyDict_GetItemWithError(g_pool_globals, name) : NULL; /* borrowed */
    double d = v != NULL ? PyFloat_AsDouble(v) : -1.0;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        d = -1.0;
    }
    return d;
}

/* The fast path of PoolState.wait_started (its fields free to update: pool_enter): 1 done, 0 not for it
 * (nothing stored). */
static int
pool_join_wait(PoolCountersObject *c, long long now)
{
    PyObject *runs = c->runs, *snap = c->episode_snapshot;
    if (runs == NULL || !PyDict_Check(runs) || PyDict_GET_SIZE(runs) != 0 || snap == NULL || !c->listed ||
        !c->semaphore) {
        return 0;
    }
    static PyObject *seen_in; /* (borrowed: compared only) */
    static uint64_t seen_tag;
    static double seen_every, seen_episode_every;
    double every, episode_every;
    uint64_t tag = g_pool_globals != NULL ? dict_tag(g_pool_globals) : 0;
    if (tag != 0 && seen_in == g_pool_globals && seen_tag == tag) {
        every = seen_every;
        episode_every = seen_episode_every;
    }
    else {
        every = pool_setting(s_snapshot_every);
        episode_every = pool_setting(s_episode_snapshot_every);
        seen_in = g_pool_globals;
        seen_tag = tag;
        seen_every = every;
        seen_episode_every = episode_every;
    }
    if (c->waiters < 1 || c->waits < 0 || c->episode_waits < 0 || c->episode_max < 0 || c->last_snapshot_ns < 0 ||
        every < 0 || episode_every < 0)
        return 0;
    double since = (double)(now - c->last_snapshot_ns);
    if (since >= every * 1e9 || (snap == Py_None && since >= episode_every * 1e9)) return 0; /* a look is due */
    c->waits += 1;
    c->waiters += 1;
    c->episode_waits += 1;
    if (c->waiters > c->episode_max) c->episode_max = c->waiters;
    return 1;
}

/* The start of a wait on prim counted in C: its start (ns; now, or the lock wait's start when given), with the
 * state it was counted in (a new reference in *state_out when state_out is given); 0 when the caller must go
 * the Python way. Never raises. */
static long long
pool_sem_start(PyObject *prim, PyObject **state_out, long long now)
{
    PyObject *state = pool_state_lookup(prim); /* (borrowed: sem_states keeps it while no Python code runs) */
    PoolCountersObject *c = pool_counters_of(state, prim);
    if (c == NULL) return 0;
    if (now <= 0) now = mono_ns();
    PyObject *held = NULL;
    int done = now > 0 && pool_enter(c, &held) && pool_join_wait(c, now);
    pool_leave(held);
    if (!done) return 0;
    if (state_out != NULL) *state_out = Py_NewRef(state);
    return now;
}

/* The end of a wait on prim that began at start (ns) and ended now (or at end, the lock wait's end, when given),
 * counted in C in state (NULL: the one sem_states has now); else in Python. Never raises. */
static void
pool_sem_end(PyObject *prim, long long start, PyObject *state, PyObject *token, long long end)
{
    PoolCountersObject *c = pool_counters_of(state != NULL ? state : pool_state_lookup(prim), prim);
    if (c != NULL) {
        long long now = end > 0 ? end : mono_ns();
        PyObject *held = NULL;
        int done = 0;
        if (now > 0 && pool_enter(c, &held)) {
            /* not the last waiter: the episode goes on (the last one closes it, in Python); its wait is
             * counted in C until PoolState._sync_hist() hands it to wait_hist */
            if (c->waiters > 1 && poolcounters_hist_add(c, now - start) == 0) {
                done = 1;
                c->waiters -= 1;
            }
            PyErr_Clear();
            pool_leave(held);
        }
        if (done) return;
    }
    if (g_sem_ended != NULL) {
        PyObject *own = token == NULL ? PyLong_FromLongLong(start) : NULL;
        PyObject *r = own != NULL || token != NULL
                          ? PyObject_CallFunctionObjArgs(g_sem_ended, prim, token != NULL ? token : own, NULL)
                          : NULL;
        Py_XDECREF(r);
        Py_XDECREF(own);
        swallow();
    }
}

/* The start of a wait on prim in Python (pools._patch.aio_wait_started): its token, 0 when not followed.
 * Never raises. */
static PyObject *
pool_sem_start_py(PyObject *prim)
{
    if (g_sem_started == NULL) return PyLong_FromLong(0);
    PyObject *r = PyObject_CallOneArg(g_sem_started, prim);
    if (r == NULL || !PyLong_Check(r)) {
        Py_XDECREF(r);
        swallow();
        return PyLong_FromLong(0);
    }
    return r;
}

/* pool_sem_started(prim) -> start_ns (0: not followed): pools._patch.aio_wait_started. Never raises. */
static PyObject *
py_pool_sem_started(PyObject *Py_UNUSED(module), PyObject *prim)
{
    long long start = pool_sem_start(prim, NULL, 0);
    return start != 0 ? PyLong_FromLongLong(start) : pool_sem_start_py(prim);
}

/* pool_sem_ended(prim, start_ns): pools._patch.aio_wait_ended. Never raises. */
static PyObject *
py_pool_sem_ended(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pool_sem_ended(prim, start_ns)");
        return NULL;
    }
    long long start = as_ll(args[1]);
    if (start == -1 && PyErr_Occurred()) PyErr_Clear();
    if (start == 0) Py_RETURN_NONE;
    pool_sem_end(args[0], start, NULL, args[1], 0);
    Py_RETURN_NONE;
}

/* -- a traced asyncio semaphore's `async with` (conctools.aio.Semaphore.__aenter__) -------------- *
 * SemEnter is the awaitable __aenter__ returns: asyncio's own Semaphore.acquire() coroutine does the
 * acquisition, and SemEnter only watches it, with no Python frame of its own (issue 12: the traced
 * semaphore's Python __aenter__ ran ~120 bytecodes per contended task). When the acquisition has to wait
 * (its coroutine yields the future it waits on), the wait record begins (wait_begin) and pool blame's
 * hooks are told; when it ends, both end, and an acquisition counts (_ct_n) and lists its task among
 * the holders (_ct_holders). What the Python __aenter__ did, in the same order; never raises into the
 * program, which sees asyncio's acquire() exactly (its result, its exceptions, its cancellation). */
static PyObject *g_se_base_acquire;  /* asyncio.Semaphore.acquire */
static PyObject *g_se_hooks;         /* registry.semaphore_hooks (a list changed in place) */
static PyObject *g_se_run_started;   /* registry.run_semaphore_started(prim) -> token */
static PyObject *g_se_run_ended;     /* registry.run_semaphore_ended(prim, token) */
static PyObject *g_se_current_tasks; /* 3.11: asyncio.tasks._current_tasks (loop -> task), else NULL */
static PyObject *g_se_current_task;  /* asyncio.current_task */
static PyObject *g_se_tasks_by_loop; /* tasks_by_loop_of(g_se_current_task) */
static Py_ssize_t g_se_max_holders;
static PyObject *s_ct_n, *s_ct_holders, *s_ct_loop, *s_ct_task, *s_throw, *s_close;
static PyTypeObject *g_se_type;
/* aio_steps_setup(): the exact classes whose free slot sem_enter() takes in C without asyncio's coroutine
 * (aio.Semaphore, aio.BoundedSemaphore), the one whose release() is done in C (aio.Semaphore), and the slots
 * read (-1: none of this) */
static PyObject *g_se_fast_types; /* a tuple of types, or NULL */
static PyTypeObject *g_se_release_type;
static Py_ssize_t g_se_off_value = -1, g_se_off_waiters = -1, g_se_off_holders = -1;
static PyObject *g_se_progress; /* registry._progress: [monotonic ns of the last progress] */
static int se_fast_take(PyObject *sem);
static PyObject *se_current_task(PyObject *sem);

/* Is sem of one of the exact classes whose slots the C paths read (g_se_fast_types)? */
static int
se_fast_type(PyObject *sem)
{
    if (g_se_fast_types == NULL || g_se_off_value < 0) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(g_se_fast_types); i++) {
        if ((PyObject *)Py_TYPE(sem) == PyTuple_GET_ITEM(g_se_fast_types, i)) return 1;
    }
    return 0;
}

/* sem._ct_holders (a new reference, NULL with no error when unset): read in its slot for the classes of
 * se_fast_type(), else by attribute access (an error cleared). */
static PyObject *
se_holders(PyObject *sem)
{
    PyObject *h = se_fast_type(sem) ? Py_XNewRef(*OBJ_SLOT(sem, g_se_off_holders)) : PyObject_GetAttr(sem, s_ct_holders);
    if (h == NULL) PyErr_Clear();
    return h;
}

/* An acquisition after a wait: counted (_ct_n) and its task listed among the holders (_ct_holders), in the
 * C field and the slot for the classes of se_fast_type(), else by attribute access. task: NULL for the
 * current one. */
static void
se_note_taken(PyObject *sem, PyObject *task)
{
    TrackedObject *t = se_fast_type(sem) ? (TrackedObject *)sem : NULL;
    if (t != NULL && t->n != NULL && PyLong_CheckExact(t->n)) {
        long long count = as_ll(t->n);
        PyObject *nv = count >= 0 ? PyLong_FromLongLong(count + 1) : NULL;
        if (nv != NULL) Py_SETREF(t->n, nv);
    }
    else {
        long long count = int_attr(sem, s_ct_n);
        PyObject *nv = count >= 0 ? PyLong_FromLongLong(count + 1) : NULL;
        if (nv == NULL || PyObject_SetAttr(sem, s_ct_n, nv) < 0) PyErr_Clear();
        Py_XDECREF(nv);
    }
    PyErr_Clear();
    PyObject *holders = se_holders(sem);
    if (holders != NULL && PyList_Check(holders) && PyList_GET_SIZE(holders) < g_se_max_holders) {
        PyObject *who = task != NULL ? Py_NewRef(task) : se_current_task(sem);
        if (PyList_Append(holders, who) < 0) PyErr_Clear();
        Py_DECREF(who);
    }
    Py_XDECREF(holders);
    PyErr_Clear();
}

enum { SE_START, SE_WAITING, SE_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *sem;   /* the semaphore */
    PyObject *inner; /* asyncio's acquire() coroutine; NULL once it ended */
    PyObject *task;  /* the task that waits (once the wait began) */
    PyObject *wait;  /* its wait record (a WaitRecord, None or NULL) */
    PyObject *token; /* other pool hooks' token (a true int), NULL when none is due */
    PyObject *pool_state; /* pools' C pair: the PoolState the wait was counted in (NULL: see token) */
    long long pool_start; /* ... and when it began (0: not counted in C) */
    int state;
    int c_hooks; /* the hooks are conctools.pools' C pair */
    /* Made by the class's __aenter__ descriptor (StepDescr), it stands for the bound method too: called, it is
     * the awaitable (called set; a second call makes another). Not yet called: nothing to warn about, and not
     * awaitable (as a bound method is not). sem_enter() makes it called. */
    char called;
    vectorcallfunc vectorcall;
} SemEnterObject;

/* The running task, as aio.Semaphore finds it: 3.11, asyncio's loop -> task dict keyed by the loop the
 * semaphore last ran on (else its _ct_task() finds and remembers the loop); 3.12+, asyncio.current_task().
 * A new reference; None when unknown (the error cleared). */
static PyObject *
se_current_task(PyObject *sem)
{
    PyObject *task = NULL;
    if (g_se_current_tasks != NULL) {
        PyObject *loop = PyObject_GetAttr(sem, s_ct_loop);
        if (loop != NULL) {
            task = Py_XNewRef(PyDict_GetItemWithError(g_se_current_tasks, loop));
            Py_DECREF(loop);
        }
        if (task == NULL) {
            PyErr_Clear();
            task = PyObject_CallMethodNoArgs(sem, s_ct_task);
        }
    }
    else if (g_se_current_task != NULL) {
        PyObject *loop = g_se_tasks_by_loop != NULL ? running_loop() : NULL;
        if (loop != NULL && task_of_loop(g_se_tasks_by_loop, loop, &task)) {
            if (task == NULL) task = Py_NewRef(Py_None);
        }
        else {
            task = PyObject_CallNoArgs(g_se_current_task);
        }
        Py_XDECREF(loop);
    }
    if (task == NULL) {
        PyErr_Clear();
        task = Py_NewRef(Py_None);
    }
    return task;
}

/* The wait began (asyncio's acquire() yielded its future): the record, then pool blame's hooks. */
static void
se_wait_begins(SemEnterObject *se)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *sem = se->sem;
    Py_XSETREF(se->task, se_current_task(sem));
    PyObject *holders = se_holders(sem);
    PyObject *holder = holders != NULL && PyList_Check(holders) && PyList_GET_SIZE(holders) > 0
                           ? Py_NewRef(PyList_GET_ITEM(holders, 0))
                           : Py_NewRef(Py_None);
    Py_XDECREF(holders);
    PyErr_Clear();
    if (g_wait_ready) {
        GcQuiet quiet;
        gc_quiet_begin(&quiet);
        PyObject *w = wait_begin(sem, Py_None, holder, 1, 1, se->task);
        gc_quiet_end(&quiet);
        if (w == NULL) PyErr_Clear();
        Py_XSETREF(se->wait, w);
    }
    Py_DECREF(holder);
    /* pool blame: its own C pair called directly; any other hooks through the registry's loop */
    PyObject *token = NULL;
    Py_ssize_t n = g_se_hooks != NULL && PyList_Check(g_se_hooks) ? PyList_GET_SIZE(g_se_hooks) : 0;
    if (n == 1) {
        PyObject *pair = PyList_GET_ITEM(g_se_hooks, 0);
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 && PyCFunction_Check(PyTuple_GET_ITEM(pair, 0)) &&
            PyCFunction_GET_FUNCTION(PyTuple_GET_ITEM(pair, 0)) == (PyCFunction)py_pool_sem_started &&
            PyCFunction_Check(PyTuple_GET_ITEM(pair, 1)) &&
            PyCFunction_GET_FUNCTION(PyTuple_GET_ITEM(pair, 1)) == (PyCFunction)(void (*)(void))py_pool_sem_ended) {
            se->c_hooks = 1;
            PyObject *pool_state = NULL;
            /* (the lock wait's start: one clock read for both) */
            PyObject *begun = se->wait != NULL ? wget(se->wait, W_START_NS) : NULL;
            long long start = begun != NULL && PyLong_CheckExact(begun) ? as_ll(begun) : 0;
            if (start == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                start = 0;
            }
            se->pool_start = pool_sem_start(sem, &pool_state, start);
            if (se->pool_start != 0) Py_XSETREF(se->pool_state, pool_state);
            else token = pool_sem_start_py(sem); /* (never raises) */
        }
    }
    if (token == NULL && n > 0 && !se->c_hooks && g_se_run_started != NULL) {
        token = PyObject_CallOneArg(g_se_run_started, sem); /* (never raises) */
    }
    if (token != NULL && PyObject_IsTrue(token) <= 0) Py_CLEAR(token); /* 0: nobody follows this wait */
    PyErr_Clear();
    Py_XSETREF(se->token, token);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

/* The acquisition ended (acquired, or an exception: cancelled); the exception in flight is kept. */
static void
se_finish(SemEnterObject *se, int acquired)
{
    if (se->state == SE_DONE) return;
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    int waited = se->state == SE_WAITING;
    se->state = SE_DONE;
    PyObject *sem = se->sem;
    long long end = 0; /* (the lock wait's end, for pool blame's count: one clock read for both) */
    if (waited && se->wait != NULL) {
        wait_finish(se->wait, acquired, 1);
        PyObject *ended = wget(se->wait, W_END_NS);
        end = ended != NULL && PyLong_CheckExact(ended) ? as_ll(ended) : 0;
    }
    PyErr_Clear();
    Py_CLEAR(se->wait);
    PyObject *token = se->token, *pool_state = se->pool_state;
    se->token = se->pool_state = NULL;
    if (pool_state != NULL) {
        pool_sem_end(sem, se->pool_start, pool_state, NULL, end); /* (never raises) */
        Py_DECREF(pool_state);
    }
    else if (token != NULL) {
        PyObject *end_args[2] = {sem, token};
        if (se->c_hooks) {
            long long start = as_ll(token);
            if (start > 0) pool_sem_end(sem, start, NULL, token, end); /* (never raises) */
        }
        else if (g_se_run_ended != NULL) {
            Py_XDECREF(PyObject_Vectorcall(g_se_run_ended, end_args, 2, NULL));
        }
        Py_DECREF(token);
        PyErr_Clear();
    }
    if (acquired) se_note_taken(sem, se->task);
    Py_CLEAR(se->task);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

/* After asyncio's coroutine was sent a value or thrown an exception: it yielded (the wait begins, if this
 * is the first time), returned (acquired: __aenter__'s value is None) or raised (not acquired). */
static PySendResult
se_after(SemEnterObject *se, PySendResult r, PyObject *value, PyObject **result)
{
    if (r == PYGEN_NEXT) {
        if (se->state == SE_START) {
            se->state = SE_WAITING;
            se_wait_begins(se);
        }
        *result = value;
        return PYGEN_NEXT;
    }
    Py_XDECREF(value);
    Py_CLEAR(se->inner);
    se_finish(se, r == PYGEN_RETURN);
    if (r == PYGEN_RETURN) {
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    *result = NULL;
    return PYGEN_ERROR;
}

/* The first send or throw: 1 the slot was free and is taken (done), 0 asyncio's acquire() coroutine is made
 * (se->inner), -1 an error (done). */
static int
se_start(SemEnterObject *se, int may_take)
{
    int r = may_take ? se_fast_take(se->sem) : 0;
    if (r == 0) {
        se->inner = PyObject_CallOneArg(g_se_base_acquire, se->sem);
        if (se->inner == NULL) r = -1;
    }
    if (r != 0) se->state = SE_DONE;
    return r;
}

static PySendResult
se_am_send(SemEnterObject *se, PyObject *arg, PyObject **result)
{
    if (se->inner == NULL && se->state == SE_START) {
        if (arg != Py_None) {
            se->state = SE_DONE;
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            *result = NULL;
            return PYGEN_ERROR;
        }
        int r = se_start(se, 1);
        if (r != 0) {
            *result = r > 0 ? Py_NewRef(Py_None) : NULL;
            return r > 0 ? PYGEN_RETURN : PYGEN_ERROR;
        }
    }
    if (se->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited __aenter__()");
        *result = NULL;
        return PYGEN_ERROR;
    }
    PyObject *value = NULL;
    PySendResult r = PyIter_Send(se->inner, arg, &value);
    return se_after(se, r, value, result);
}

/* A send's outcome as a coroutine's method returns it: the value yielded, or the value returned raised as
 * StopIteration (always None: __aenter__'s value), or NULL with the error. */
static PyObject *
se_as_method(PySendResult r, PyObject *result)
{
    if (r == PYGEN_RETURN) {
        Py_DECREF(result);
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    return r == PYGEN_NEXT ? result : NULL;
}

/* send(value) / __next__(): as a coroutine's. */
static PyObject *
se_send_value(SemEnterObject *se, PyObject *arg)
{
    PyObject *result;
    PySendResult r = se_am_send(se, arg, &result);
    return se_as_method(r, result);
}

/* __next__(), which `await` uses from 3.12 (SEND calls tp_iternext for an iterator that is not a generator,
 * where 3.11 used am_send): the end is a NULL with no exception set, as for an exhausted iterator, which
 * `await` reads as the value None; no StopIteration is made for each acquisition. */
static PyObject *
se_iternext(SemEnterObject *se)
{
    PyObject *result;
    PySendResult r = se_am_send(se, Py_None, &result);
    if (r == PYGEN_RETURN) {
        Py_DECREF(result); /* (always None: __aenter__'s value) */
        return NULL;
    }
    return r == PYGEN_NEXT ? result : NULL;
}

static PyObject *
se_send(SemEnterObject *se, PyObject *arg)
{
    return se_send_value(se, arg);
}

/* throw(...): thrown into asyncio's coroutine (a task's cancellation), as `await` would. */
static PyObject *
se_throw(SemEnterObject *se, PyObject *const *args, Py_ssize_t nargs)
{
    if (se->inner == NULL && se->state == SE_START && se_start(se, 0) < 0) return NULL;
    if (se->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited __aenter__()");
        return NULL;
    }
    PyObject *meth = PyObject_GetAttr(se->inner, s_throw);
    if (meth == NULL) return NULL;
    PyObject *value = PyObject_Vectorcall(meth, args, nargs, NULL);
    Py_DECREF(meth);
    PySendResult r;
    if (value != NULL) {
        r = PYGEN_NEXT;
    }
    else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        r = PYGEN_RETURN;
    }
    else {
        r = PYGEN_ERROR;
    }
    PyObject *result;
    r = se_after(se, r, value, &result);
    return se_as_method(r, result);
}

/* close(): asyncio's coroutine closed (its `finally` takes its future out of the waiters); not acquired. */
static PyObject *
se_close(SemEnterObject *se, PyObject *Py_UNUSED(ignored))
{
    if (se->inner == NULL && se->state == SE_START) { /* closed before it began: nothing was done */
        se->state = SE_DONE;
        Py_RETURN_NONE;
    }
    PyObject *inner = se->inner;
    se->inner = NULL;
    PyObject *r = inner != NULL ? PyObject_CallMethodNoArgs(inner, s_close) : Py_NewRef(Py_None);
    Py_XDECREF(inner);
    se_finish(se, 0);
    return r;
}

static PyObject *
se_await(SemEnterObject *se)
{
    if (!se->called) {
        PyErr_SetString(PyExc_TypeError, "object method can't be used in 'await' expression");
        return NULL;
    }
    return Py_NewRef(se);
}

/* Collected while it waited: the wait ends, not acquired. (Never awaited at all: asyncio's coroutine warns
 * that it never was, as the __aenter__ coroutine of an asyncio.Semaphore would.) */
static void
se_finalize(SemEnterObject *se)
{
    if (se->state == SE_START && se->inner == NULL) { /* never awaited: warn, as asyncio's coroutine would */
        if (!se->called) return; /* (the bound method, never called: nothing to warn about) */
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        if (PyErr_WarnEx(PyExc_RuntimeWarning, "coroutine 'Semaphore.__aenter__' was never awaited", 1) < 0) {
            PyErr_WriteUnraisable((PyObject *)se);
        }
        PyErr_Restore(exc_type, exc_value, exc_tb);
        return;
    }
    if (se->state != SE_WAITING) return;
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    se_finish(se, 0);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

static int
se_traverse(SemEnterObject *se, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(se));
    Py_VISIT(se->sem);
    Py_VISIT(se->inner);
    Py_VISIT(se->task);
    Py_VISIT(se->wait);
    Py_VISIT(se->token);
    Py_VISIT(se->pool_state);
    return 0;
}

static int
se_clear(SemEnterObject *se)
{
    Py_CLEAR(se->sem);
    Py_CLEAR(se->inner);
    Py_CLEAR(se->task);
    Py_CLEAR(se->wait);
    Py_CLEAR(se->token);
    Py_CLEAR(se->pool_state);
    return 0;
}

static void
se_dealloc(SemEnterObject *se)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)se) < 0) return; /* resurrected */
    PyTypeObject *tp = Py_TYPE(se);
    PyObject_GC_UnTrack(se);
    se_clear(se);
    tp->tp_free((PyObject *)se);
    Py_DECREF(tp);
}

static PyMethodDef se_methods[] = {
    {"send", (PyCFunction)se_send, METH_O, "send(value): as a coroutine's"},
    {"throw", (PyCFunction)(void (*)(void))se_throw, METH_FASTCALL, "throw(...): as a coroutine's"},
    {"close", (PyCFunction)se_close, METH_NOARGS, "close(): as a coroutine's"},
    {NULL},
};

static PyMemberDef se_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(SemEnterObject, vectorcall), READONLY, NULL},
    {NULL},
};

static PyType_Slot se_slots[] = {
    {Py_tp_doc, "A traced asyncio semaphore's `async with` in progress (conctools.aio.Semaphore.__aenter__)."},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, se_members},
    {Py_tp_dealloc, se_dealloc},
    {Py_tp_finalize, se_finalize},
    {Py_tp_traverse, se_traverse},
    {Py_tp_clear, se_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, se_iternext},
    {Py_tp_methods, se_methods},
    {Py_am_await, se_await},
    {Py_am_send, se_am_send},
    {0, NULL},
};

static PyType_Spec se_spec = {
    .name = "conctools._speedups.SemEnter",
    .basicsize = sizeof(SemEnterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = se_slots,
};

/* sem_enter(sem) -> SemEnter: conctools.aio.Semaphore.__aenter__ (sem_enter_setup() first). */
static PyObject *py_sem_enter(PyObject *module, PyObject *sem);

/* Calling a SemEnter that stands for the bound __aenter__ (see SemEnterObject.called). */
static PyObject *
se_vcall(PyObject *self, PyObject *const *Py_UNUSED(args), size_t nargsf, PyObject *kwnames)
{
    SemEnterObject *se = (SemEnterObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "__aenter__() takes no arguments");
        return NULL;
    }
    if (!se->called) {
        se->called = 1;
        return Py_NewRef(self);
    }
    return py_sem_enter(NULL, se->sem);
}

static PyObject *
py_sem_enter(PyObject *Py_UNUSED(module), PyObject *sem)
{
    if (g_se_base_acquire == NULL || g_se_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sem_enter() before sem_enter_setup()");
        return NULL;
    }
    /* asyncio's acquire() coroutine is made at the first send, unless the slot is free and taken in C */
    SemEnterObject *se = PyObject_GC_New(SemEnterObject, g_se_type);
    if (se == NULL) return NULL;
    se->sem = Py_NewRef(sem);
    se->inner = NULL;
    se->task = se->wait = se->token = se->pool_state = NULL;
    se->pool_start = 0;
    se->state = SE_START;
    se->c_hooks = 0;
    se->called = 1;
    se->vectorcall = se_vcall;
    PyObject_GC_Track(se);
    return (PyObject *)se;
}

/* sem_enter_setup(base_acquire, hooks, run_started, run_ended, current_tasks, current_task, max_holders):
 * what sem_enter() uses (conctools.aio, at import). current_tasks is None on 3.12+. */
static PyObject *
py_sem_enter_setup(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "sem_enter_setup(base_acquire, hooks, run_started, run_ended, current_tasks, current_task, "
                        "max_holders)");
        return NULL;
    }
    Py_ssize_t max_holders = PyLong_AsSsize_t(args[6]);
    if (max_holders == -1 && PyErr_Occurred()) return NULL;
    if (g_se_type == NULL) {
        g_se_type = (PyTypeObject *)PyType_FromSpec(&se_spec); /* never freed */
        if (g_se_type == NULL) return NULL;
    }
    Py_XSETREF(g_se_base_acquire, Py_NewRef(args[0]));
    Py_XSETREF(g_se_hooks, Py_NewRef(args[1]));
    Py_XSETREF(g_se_run_started, Py_NewRef(args[2]));
    Py_XSETREF(g_se_run_ended, Py_NewRef(args[3]));
    Py_XSETREF(g_se_current_tasks, PyDict_Check(args[4]) ? Py_NewRef(args[4]) : NULL);
    Py_XSETREF(g_se_current_task, Py_NewRef(args[5]));
    Py_XSETREF(g_se_tasks_by_loop, tasks_by_loop_of(args[5]));
    g_se_max_holders = max_holders;
    Py_RETURN_NONE;
}

/* -- asyncio Lock: the lock-order bookkeeping of an acquisition and its release (conctools.aio) ---- */

/* id(task), the key of its held stack in task_stacks: the last one made is kept, as the release of a lock
 * looks up the key its acquisition made (an int of two digits: an allocation each). The same address is
 * the same id, whichever object has it now. */
#ifndef Py_GIL_DISABLED
static void *g_task_key_of;
static PyObject *g_task_key;
#endif

static PyObject *
task_key(PyObject *task)
{
#ifndef Py_GIL_DISABLED
    if (g_task_key != NULL && g_task_key_of == (void *)task) return Py_NewRef(g_task_key);
    PyObject *key = PyLong_FromVoidPtr(task);
    if (key != NULL) {
        Py_XSETREF(g_task_key, Py_NewRef(key)); /* (an int: nothing runs) */
        g_task_key_of = task;
    }
    return key;
#else
    return PyLong_FromVoidPtr(task);
#endif
}

/* aio_took(lock, task_stacks, spare_stacks) -> bool: conctools.aio.Lock._took_timed(frame, 0) for the
 * frame that called the lock's method (the caller of the caller), when it needs no Python: the hold is
 * sampled (1 in HOLD_SAMPLE), and in lock-order mode the lock's cached held-stack entry is for that
 * very site (code, offset), the lock is held by a task and that task holds no other lock (nothing to
 * check): the entry is pushed on the task's held stack (task_stacks[id(task)], a spare one or a new
 * list). False: nothing was done (the caller runs _took_timed). Never raises. */
static int aio_took_impl(AioLockObject *self, PyObject *stacks, PyObject *spare, int skip);

static PyObject *
py_aio_took(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || g_aiolock_type == NULL || !PyObject_TypeCheck(args[0], g_aiolock_type) ||
        !PyDict_CheckExact(args[1]) || !PyList_CheckExact(args[2])) {
        Py_RETURN_FALSE;
    }
    return Py_NewRef(aio_took_impl((AioLockObject *)args[0], args[1], args[2], 1) ? Py_True : Py_False);
}

/* aio_took()'s work: 1 done, 0 not (the caller runs _took_timed). skip: the frames above the one that took
 * the lock (1: called from the lock's Python method; 0: from C, under the frame that awaits). Never raises. */
static int
aio_took_impl(AioLockObject *self, PyObject *stacks, PyObject *spare, int skip)
{
    PyObject *nobj = self->base.n;
    long long n = nobj != NULL && PyLong_CheckExact(nobj) ? as_ll(nobj) : -1;
    if (n < 0) {
        PyErr_Clear();
        return 0;
    }
    PyObject *entry = NULL, *key = NULL, *since_obj = NULL; /* new references */
    PyObject *held = NULL; /* the task's stack, if it has one (new reference) */
    PyObject *site = NULL; /* borrowed from entry */
    int is_ordered = self->ordered != NULL ? PyObject_IsTrue(self->ordered) : -1;
    int done = 0;
    if (is_ordered < 0) goto out;
    if (is_ordered) {
        /* the caller's caller: the frame that took the lock */
        FrameCursor c;
        cursor_start(&c);
        PyCodeObject *code = NULL;
        int lasti = -1, found = cursor_get(&c, &code, &lasti);
        if (found && skip) {
            cursor_next(&c);
            found = cursor_get(&c, &code, &lasti);
        }
        cursor_end(&c); /* (the code stays alive: its frame still runs) */
        if (!found) goto out;
        entry = Py_XNewRef(self->entry); /* (an allocation below may run a finalizer that replaces it) */
        if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) < 5) goto out;
        site = PyTuple_GET_ITEM(entry, 4);
        if (!PyTuple_CheckExact(site) || PyTuple_GET_SIZE(site) != 2 || PyTuple_GET_ITEM(site, 0) != (PyObject *)code ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(site, 1)) || PyLong_AsLong(PyTuple_GET_ITEM(site, 1)) != lasti) {
            goto out;
        }
        if (self->owner == NULL || self->owner == Py_None) goto out;
        key = task_key(self->owner);
        if (key == NULL) goto out;
        held = Py_XNewRef(PyDict_GetItemWithError(stacks, key));
        if (held == NULL && PyErr_Occurred()) goto out;
        if (held != NULL && (!PyList_CheckExact(held) || PyList_GET_SIZE(held) != 0)) goto out; /* check() */
        Py_ssize_t k = PyList_GET_SIZE(spare);
        if (held == NULL && k > 0 && !PyList_CheckExact(PyList_GET_ITEM(spare, k - 1))) goto out;
    }
    /* Everything checked: from here on only stores (an allocation failure leaves them half done, as
     * Python's would). */
    done = 1;
    long long since = n & g_mask ? 0 : mono_ns();
    since_obj = since ? PyLong_FromLongLong(since) : Py_NewRef(g_zero_int);
    if (since_obj == NULL) goto out;
    Py_XSETREF(self->since, since_obj);
    since_obj = NULL;
    if (is_ordered) {
        Py_XSETREF(self->site, Py_NewRef(site));
        PyObject *stack = NULL; /* new reference */
        if (held != NULL) {
            stack = Py_NewRef(held);
        }
        else {
            Py_ssize_t k = PyList_GET_SIZE(spare); /* (its last one a plain list: checked above) */
            stack = k > 0 ? Py_NewRef(PyList_GET_ITEM(spare, k - 1)) : PyList_New(0);
            if (stack == NULL || (k > 0 && PyList_SetSlice(spare, k - 1, k, NULL) < 0) ||
                PyDict_SetItem(stacks, key, stack) < 0) {
                Py_XDECREF(stack);
                goto out;
            }
        }
        Py_XSETREF(self->holdstack, Py_NewRef(stack));
        int r = PyList_Append(stack, entry) < 0;
        Py_DECREF(stack);
        if (r) goto out;
    }
out:
    Py_XDECREF(since_obj);
    Py_XDECREF(entry);
    Py_XDECREF(key);
    Py_XDECREF(held);
    if (PyErr_Occurred()) swallow();
    return done;
}

/* aio_released(lock, task_stacks, spare_stacks) -> bool: conctools.aio.Lock._released_timed() when the
 * lock is the innermost of its held stack (or on none): the sampled hold added to its histogram, the
 * lock popped off the stack, and an emptied stack of a task handed to the spares (at most 64). False:
 * nothing was done (the caller runs _released_timed). Never raises. */
static int aio_released_impl(AioLockObject *self, PyObject *stacks, PyObject *spare);

static PyObject *
py_aio_released(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || g_aiolock_type == NULL || !PyObject_TypeCheck(args[0], g_aiolock_type) ||
        !PyDict_CheckExact(args[1]) || !PyList_CheckExact(args[2])) {
        Py_RETURN_FALSE;
    }
    return Py_NewRef(aio_released_impl((AioLockObject *)args[0], args[1], args[2]) ? Py_True : Py_False);
}

/* aio_released()'s work: 1 done, 0 not (the caller runs _released_timed). Never raises. */
static int
aio_released_impl(AioLockObject *self, PyObject *stacks, PyObject *spare)
{
    PyObject *lock = (PyObject *)self;
    PyObject *since_obj = self->since, *held = Py_XNewRef(self->holdstack), *owner = NULL, *key = NULL;
    int done = 0;
    long long since = since_obj != NULL && PyLong_CheckExact(since_obj) ? as_ll(since_obj) : -1;
    if (since < 0) goto out;
    if (held == NULL) goto out;
    Py_ssize_t k = 0;
    if (held != Py_None) {
        if (!PyList_CheckExact(held) || (k = PyList_GET_SIZE(held)) == 0) goto out;
        PyObject *last = PyList_GET_ITEM(held, k - 1);
        if (!PyTuple_CheckExact(last) || PyTuple_GET_SIZE(last) < 1) goto out;
        if (held_ref_target(PyTuple_GET_ITEM(last, 0)) != lock) goto out; /* not the innermost: lockorder.note_released() */
        owner = Py_XNewRef(self->owner);
        if (owner == NULL) goto out;
    }
    /* Everything checked: from here on only stores. */
    done = 1;
    if (since) {
        Py_XSETREF(self->since, Py_NewRef(g_zero_int));
        PyObject *hold = self->base.hold; /* borrowed */
        if (hold != NULL && hold != Py_None) {
            long long now = mono_ns();
            if (g_hist_type != NULL && Py_IS_TYPE(hold, (PyTypeObject *)g_hist_type)) {
                if (hist_add_fields(hold, now - since) < 0) goto out;
            }
            else {
                Py_INCREF(hold);
                PyObject *v = PyLong_FromLongLong(now - since);
                PyObject *r = v != NULL ? PyObject_CallMethodOneArg(hold, s_add, v) : NULL;
                Py_XDECREF(v);
                Py_DECREF(hold);
                if (r == NULL) goto out;
                Py_DECREF(r);
            }
        }
    }
    if (held != Py_None) {
        Py_XSETREF(self->holdstack, Py_NewRef(Py_None));
        if (PyList_SetSlice(held, k - 1, k, NULL) < 0) goto out;
        if (k == 1 && owner != Py_None) {
            key = task_key(owner);
            PyObject *mine = key != NULL ? PyDict_GetItemWithError(stacks, key) : NULL; /* borrowed */
            if (mine == held) {
                if (PyDict_DelItem(stacks, key) < 0) goto out;
                if (PyList_GET_SIZE(spare) < 64 && PyList_Append(spare, held) < 0) goto out;
            }
        }
    }
out:
    Py_XDECREF(held);
    Py_XDECREF(owner);
    Py_XDECREF(key);
    if (PyErr_Occurred()) swallow();
    return done;
}

/* -- a traced asyncio Lock's `async with`, and a traced Semaphore's, without a coroutine of their own ----- *
 * Issue 12: `async with lock` made two Python coroutines per use of a traced asyncio.Lock (its __aenter__ and
 * __aexit__, ~70 bytecodes), and a traced Semaphore a Python frame for its __aenter__ and a coroutine for its
 * __aexit__. Here they are method descriptors that return an AwaitStep: a small awaitable that, when first
 * sent, does the common case in C and returns at once (a free Lock taken, a held Lock released, a
 * Semaphore released), and otherwise runs the Python method it stands for (the slow path: a Lock's wait, an
 * error to raise) as its own coroutine, delegating to it as `await` would. Awaited once, as a coroutine is;
 * one never awaited warns, as a coroutine does; cr_frame and cr_await read the delegate's (await-chain
 * walkers see the frames they saw before). */
enum { AS_LOCK_ENTER, AS_LOCK_EXIT, AS_SEM_EXIT, AS_KINDS };
enum { AS_NEW, AS_RUNNING, AS_DONE };
static const char *const as_names[AS_KINDS] = {"Lock.__aenter__", "Lock.__aexit__", "Semaphore.__aexit__"};
static PyObject *g_as_slow[AS_KINDS]; /* the Python methods they stand for: async def m(self[, et, ev, tb]) */
static PyTypeObject *g_as_lock_cls;   /* conctools.aio.Lock */
static PyObject *g_as_stacks, *g_as_spare; /* lockorder._task_stacks, lockorder._spare_stacks */
static Py_ssize_t g_as_off_locked = -1, g_as_off_waiters = -1; /* aio.Lock's slots _locked and _waiters */
static PyTypeObject *g_as_type;
static PyObject *s_took_timed, *s_released_timed, *s_wake_up_first, *s_wake_up_next;

/* How many futures an asyncio primitive's _waiters holds: 0 for None (none made yet), -1 when its length
 * cannot be read (the error cleared). */
static Py_ssize_t
waiters_len(PyObject *waiters)
{
    if (waiters == Py_None) return 0;
    Py_ssize_t k = PyObject_Length(waiters);
    if (k < 0) PyErr_Clear();
    return k;
}

typedef struct {
    PyObject_HEAD
    PyObject *prim;  /* the lock or semaphore */
    PyObject *inner; /* the Python method's coroutine while it runs (the slow path) */
    int kind;
    int state;
    char called; /* as SemEnterObject's: made by a StepDescr, it stands for the bound method until called */
    vectorcallfunc vectorcall;
} AwaitStepObject;

/* A free aio.Lock taken (its Python __aenter__'s fast path): 1 done, 0 not for C (nothing stored), -1 an
 * error raised (as the Python method would raise it). */
static int
as_lock_enter(PyObject *prim)
{
    PyObject **locked = OBJ_SLOT(prim, g_as_off_locked), *waiters = *OBJ_SLOT(prim, g_as_off_waiters);
    /* (waiting futures, maybe all cancelled: the Python method looks at them) */
    if (*locked != Py_False || waiters == NULL || waiters_len(waiters) != 0) return 0;
    AioLockObject *self = (AioLockObject *)prim;
    long long n = self->base.n != NULL && PyLong_CheckExact(self->base.n) ? as_ll(self->base.n) : -1;
    if (n < 0) {
        PyErr_Clear();
        return 0;
    }
    PyObject *nv = PyLong_FromLongLong(n + 1);
    if (nv == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_SETREF(*locked, Py_NewRef(Py_True));
    Py_XSETREF(self->base.n, nv);
    Py_XSETREF(self->owner, se_current_task(prim)); /* (None when unknown) */
    PyObject *hold = self->base.hold;
    if (hold != NULL && hold != Py_None && !aio_took_impl(self, g_as_stacks, g_as_spare, 0)) {
        PyFrameObject *f = PyEval_GetFrame(); /* borrowed: the frame that awaits */
        PyObject *args[3] = {prim, f != NULL ? (PyObject *)f : Py_None, g_zero_int};
        PyObject *r = PyObject_VectorcallMethod(s_took_timed, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    return 1;
}

/* A held aio.Lock released (its Python __aexit__), as as_lock_enter(). */
static int
as_lock_exit(PyObject *prim)
{
    PyObject **locked = OBJ_SLOT(prim, g_as_off_locked), **waiters = OBJ_SLOT(prim, g_as_off_waiters);
    if (*locked != Py_True) return 0; /* (the Python method raises "Lock is not acquired.") */
    AioLockObject *self = (AioLockObject *)prim;
    PyObject *hold = self->base.hold;
    if (hold != NULL && hold != Py_None && !aio_released_impl(self, g_as_stacks, g_as_spare)) {
        PyObject *r = PyObject_CallMethodNoArgs(prim, s_released_timed);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    Py_XSETREF(self->owner, Py_NewRef(Py_None));
    Py_XSETREF(*locked, Py_NewRef(Py_False));
    if (*waiters != NULL && waiters_len(*waiters) != 0) { /* (asyncio's _wake_up_first() returns at once with none) */
        PyObject *r = PyObject_CallMethodNoArgs(prim, s_wake_up_first);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    return 1;
}


/* A free slot of an aio.Semaphore (or BoundedSemaphore) taken in C, as the traced acquire()'s fast path does
 * (asyncio's acquire() without its coroutine, the count and the holder): 1 taken, 0 not for C (nothing
 * stored: the slot is not free, or the semaphore is of another class). Never raises. */
static int
se_fast_take(PyObject *sem)
{
    if (!se_fast_type(sem)) return 0;
    PyObject **value = OBJ_SLOT(sem, g_se_off_value), *waiters = *OBJ_SLOT(sem, g_se_off_waiters);
    PyObject *h = *OBJ_SLOT(sem, g_se_off_holders);
    TrackedObject *t = (TrackedObject *)sem;
    if (*value == NULL || !PyLong_CheckExact(*value) || waiters == NULL || t->n == NULL || !PyLong_CheckExact(t->n)) {
        return 0;
    }
    long long v = as_ll(*value), n = as_ll(t->n);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    /* asyncio's locked(): no free slot, or a waiter not cancelled (with waiters, asyncio's coroutine decides) */
    if (v <= 0 || n < 0 || waiters_len(waiters) != 0) return 0;
    PyObject *nv = PyLong_FromLongLong(v - 1), *nn = PyLong_FromLongLong(n + 1);
    if (nv == NULL || nn == NULL) {
        Py_XDECREF(nv);
        Py_XDECREF(nn);
        PyErr_Clear();
        return 0;
    }
    Py_SETREF(*value, nv);
    Py_SETREF(t->n, nn);
    if (h != NULL && PyList_CheckExact(h) && PyList_GET_SIZE(h) < g_se_max_holders) {
        PyObject *task = se_current_task(sem);
        if (PyList_Append(h, task) < 0) PyErr_Clear();
        Py_DECREF(task);
    }
    return 1;
}

/* aio.Semaphore.release() in C (its exact class only): asyncio's release (the count up, _wake_up_next() when
 * a future waits), then the traced one's (the releasing task out of the holders, else the oldest holder; the
 * progress mark when someone waits). 1 done, 0 not for C (nothing stored), -1 an error raised (where the
 * Python method would raise it). */
static int
se_release(PyObject *sem)
{
    PyObject **value = OBJ_SLOT(sem, g_se_off_value), **waiters = OBJ_SLOT(sem, g_se_off_waiters);
    if (*value == NULL || !PyLong_CheckExact(*value) || *waiters == NULL) return 0;
    long long v = as_ll(*value);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    PyObject *nv = PyLong_FromLongLong(v + 1);
    if (nv == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_SETREF(*value, nv);
    if (waiters_len(*waiters) != 0) { /* (asyncio's _wake_up_next() returns at once with no waiter) */
        PyObject *r = PyObject_CallMethodNoArgs(sem, s_wake_up_next);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    PyObject *h = *OBJ_SLOT(sem, g_se_off_holders);
    if (h != NULL && PyList_CheckExact(h) && PyList_GET_SIZE(h) > 0) {
        Py_INCREF(h);
        PyObject *me = se_current_task(sem);
        Py_ssize_t at = -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(h) && at < 0; i++) {
            if (PyList_GET_ITEM(h, i) == me) at = i;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(h) && at < 0; i++) { /* list.remove() compares with == */
            PyObject *x = Py_NewRef(PyList_GET_ITEM(h, i));
            int eq = PyObject_RichCompareBool(x, me, Py_EQ);
            Py_DECREF(x);
            if (eq < 0) PyErr_Clear();
            if (eq > 0) at = i;
        }
        if (at < 0) at = 0; /* released by another task than the one that acquired: forget the oldest */
        if (at < PyList_GET_SIZE(h) && PyList_SetSlice(h, at, at + 1, NULL) < 0) PyErr_Clear();
        Py_DECREF(me);
        Py_DECREF(h);
    }
    if (*waiters != NULL && waiters_len(*waiters) > 0 && g_se_progress != NULL && PyList_CheckExact(g_se_progress) && PyList_GET_SIZE(g_se_progress) > 0) {
        PyObject *now = PyLong_FromLongLong(mono_ns());
        if (now == NULL || PyList_SetItem(g_se_progress, 0, now) < 0) PyErr_Clear();
    }
    return 1;
}

static int
as_fast(AwaitStepObject *s)
{
    PyObject *prim = s->prim;
    switch (s->kind) {
    case AS_LOCK_ENTER:
    case AS_LOCK_EXIT:
        /* (aio_steps_setup() set g_as_lock_cls, a subclass of AioLockFields, with its slots' offsets) */
        if (g_as_lock_cls == NULL || !PyObject_TypeCheck(prim, g_as_lock_cls)) return 0;
        return s->kind == AS_LOCK_ENTER ? as_lock_enter(prim) : as_lock_exit(prim);
    case AS_SEM_EXIT: { /* its release(), which a subclass may override */
        if ((PyTypeObject *)Py_TYPE(prim) == g_se_release_type && g_se_off_value >= 0) {
            int r = se_release(prim);
            if (r != 0) return r;
        }
        PyObject *r = PyObject_CallMethodNoArgs(prim, s_release);
        if (r == NULL) return -1;
        Py_DECREF(r);
        return 1;
    }
    }
    return 0;
}

/* The Python method's coroutine (the slow path), or NULL with the error. */
static PyObject *
as_start_inner(AwaitStepObject *s)
{
    PyObject *args[4] = {s->prim, Py_None, Py_None, Py_None};
    return PyObject_Vectorcall(g_as_slow[s->kind], args, s->kind == AS_LOCK_ENTER ? 1 : 4, NULL);
}

static PySendResult
as_am_send(AwaitStepObject *s, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (s->state == AS_NEW) {
        s->state = AS_DONE;
        if (arg != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        int r = as_fast(s);
        if (r > 0) {
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        if (r < 0) return PYGEN_ERROR;
        PyObject *inner = as_start_inner(s);
        if (inner == NULL) return PYGEN_ERROR;
        s->inner = inner;
        s->state = AS_RUNNING;
    }
    if (s->state != AS_RUNNING) {
        PyErr_Format(PyExc_RuntimeError, "cannot reuse already awaited %s()", as_names[s->kind]);
        return PYGEN_ERROR;
    }
    PySendResult r = PyIter_Send(s->inner, arg, result);
    if (r != PYGEN_NEXT) {
        s->state = AS_DONE;
        Py_CLEAR(s->inner);
    }
    return r;
}

/* StopIteration(value) raised (a value that is not None; the methods here return None). */
static void
as_stop_with(PyObject *value)
{
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (e != NULL) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
}

/* __next__(): `await` from 3.12 (see se_iternext): the end is NULL with no exception set (the value None). */
static PyObject *
as_iternext(AwaitStepObject *s)
{
    PyObject *result;
    PySendResult r = as_am_send(s, Py_None, &result);
    if (r == PYGEN_RETURN) {
        if (result != Py_None) as_stop_with(result);
        Py_DECREF(result);
        return NULL;
    }
    return r == PYGEN_NEXT ? result : NULL;
}

static PyObject *
as_send(AwaitStepObject *s, PyObject *arg)
{
    PyObject *result;
    PySendResult r = as_am_send(s, arg, &result);
    if (r == PYGEN_RETURN) {
        if (result == Py_None) PyErr_SetNone(PyExc_StopIteration);
        else as_stop_with(result);
        Py_DECREF(result);
        return NULL;
    }
    return r == PYGEN_NEXT ? result : NULL;
}

/* throw(...): into the Python method's coroutine (made now if it was not started: it raises at once, as an
 * unstarted coroutine does). */
static PyObject *
as_throw(AwaitStepObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (s->state == AS_NEW) {
        s->state = AS_DONE;
        PyObject *inner = as_start_inner(s);
        if (inner == NULL) return NULL;
        s->inner = inner;
        s->state = AS_RUNNING;
    }
    if (s->state != AS_RUNNING) {
        PyErr_Format(PyExc_RuntimeError, "cannot reuse already awaited %s()", as_names[s->kind]);
        return NULL;
    }
    PyObject *meth = PyObject_GetAttr(s->inner, s_throw);
    PyObject *value = meth != NULL ? PyObject_Vectorcall(meth, args, nargs, NULL) : NULL;
    Py_XDECREF(meth);
    if (value == NULL) {
        s->state = AS_DONE;
        Py_CLEAR(s->inner);
    }
    return value;
}

static PyObject *
as_close(AwaitStepObject *s, PyObject *Py_UNUSED(ignored))
{
    PyObject *inner = s->inner;
    s->inner = NULL;
    s->state = AS_DONE;
    PyObject *r = inner != NULL ? PyObject_CallMethodNoArgs(inner, s_close) : Py_NewRef(Py_None);
    Py_XDECREF(inner);
    return r;
}

static PyObject *
as_await(AwaitStepObject *s)
{
    if (!s->called) {
        PyErr_SetString(PyExc_TypeError, "object method can't be used in 'await' expression");
        return NULL;
    }
    return Py_NewRef(s);
}

/* cr_frame, cr_await: the running Python method's (None before and after). */
static PyObject *
as_inner_attr(AwaitStepObject *s, void *name)
{
    if (s->inner == NULL) Py_RETURN_NONE;
    PyObject *v = PyObject_GetAttrString(s->inner, (const char *)name);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return v;
}

/* Never awaited: warn, as the coroutine it stands for would. */
static void
as_finalize(AwaitStepObject *s)
{
    if (s->state != AS_NEW || !s->called) return; /* (the bound method, never called: nothing to warn about) */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "coroutine '%s' was never awaited", as_names[s->kind]) < 0) {
        PyErr_WriteUnraisable((PyObject *)s);
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

static int
as_traverse(AwaitStepObject *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->prim);
    Py_VISIT(s->inner);
    return 0;
}

static int
as_clear(AwaitStepObject *s)
{
    Py_CLEAR(s->prim);
    Py_CLEAR(s->inner);
    return 0;
}

static void
as_dealloc(AwaitStepObject *s)
{
    if (s->state == AS_NEW && PyObject_CallFinalizerFromDealloc((PyObject *)s) < 0) return; /* resurrected */
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    as_clear(s);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

static PyMethodDef as_methods[] = {
    {"send", (PyCFunction)as_send, METH_O, "send(value): as a coroutine's"},
    {"throw", (PyCFunction)(void (*)(void))as_throw, METH_FASTCALL, "throw(...): as a coroutine's"},
    {"close", (PyCFunction)as_close, METH_NOARGS, "close(): as a coroutine's"},
    {NULL},
};

static PyGetSetDef as_getset[] = {
    {"cr_frame", (getter)as_inner_attr, NULL, "the running Python method's frame, or None", "cr_frame"},
    {"cr_await", (getter)as_inner_attr, NULL, "what the running Python method awaits, or None", "cr_await"},
    {NULL},
};

static PyMemberDef as_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(AwaitStepObject, vectorcall), READONLY, NULL},
    {NULL},
};

static PyType_Slot as_slots[] = {
    {Py_tp_doc, "A traced asyncio Lock's or Semaphore's __aenter__()/__aexit__() in progress (conctools.aio)."},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, as_members},
    {Py_tp_dealloc, as_dealloc},
    {Py_tp_finalize, as_finalize},
    {Py_tp_traverse, as_traverse},
    {Py_tp_clear, as_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, as_iternext},
    {Py_tp_methods, as_methods},
    {Py_tp_getset, as_getset},
    {Py_am_await, as_await},
    {Py_am_send, as_am_send},
    {0, NULL},
};

static PyType_Spec as_spec = {
    .name = "conctools._speedups.AwaitStep",
    .basicsize = sizeof(AwaitStepObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = as_slots,
};

static PyObject *as_vcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

/* A step of prim's `async with` (called: see AwaitStepObject.called). */
static PyObject *
as_new(PyObject *prim, int kind, int called)
{
    if (g_as_type == NULL || g_as_slow[kind] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools: aio_steps_setup() was not called");
        return NULL;
    }
    AwaitStepObject *s = PyObject_GC_New(AwaitStepObject, g_as_type);
    if (s == NULL) return NULL;
    s->prim = Py_NewRef(prim);
    s->inner = NULL;
    s->kind = kind;
    s->state = AS_NEW;
    s->called = (char)called;
    s->vectorcall = as_vcall;
    PyObject_GC_Track(s);
    return (PyObject *)s;
}

/* __aexit__(exc_type, exc, tb): 1, else 0 with TypeError set. */
static int
as_exit_args_ok(Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 3 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "__aexit__(exc_type, exc, tb)");
        return 0;
    }
    return 1;
}

/* The arguments of kind's method (without self): 1, else 0 with TypeError set. */
static int
as_args_ok(int kind, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kind == AS_LOCK_ENTER) {
        if (nargs == 0 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) return 1;
        PyErr_SetString(PyExc_TypeError, "__aenter__() takes no arguments");
        return 0;
    }
    return as_exit_args_ok(nargs, kwnames);
}

/* Calling a step that stands for the bound method (see AwaitStepObject.called). */
static PyObject *
as_vcall(PyObject *self, PyObject *const *Py_UNUSED(args), size_t nargsf, PyObject *kwnames)
{
    AwaitStepObject *s = (AwaitStepObject *)self;
    if (!as_args_ok(s->kind, PyVectorcall_NARGS(nargsf), kwnames)) return NULL;
    if (!s->called) {
        s->called = 1;
        return Py_NewRef(self);
    }
    return as_new(s->prim, s->kind, 1);
}

/* StepDescr: a traced Lock's or Semaphore's __aenter__ / __aexit__ on the class (issue 12). Read on an object,
 * as `async with` reads both when it begins, it does not bind a method: it makes the step's awaitable itself,
 * which stands for the bound method until called (called, it is the awaitable; see AwaitStepObject.called).
 * A bound method was an object more per `async with` half, with a type check, its collector tracking and its
 * free (~300 instructions each, four a task of the asyncio program). Read on the class it is itself; called
 * with the object first, it is the method called. */
#define STEP_SEM_ENTER AS_KINDS
typedef struct {
    PyObject_HEAD
    int kind; /* an AS_ kind, or STEP_SEM_ENTER */
} StepDescrObject;

static PyTypeObject *g_step_descr_type;

static PyObject *
step_for(PyObject *obj, int kind, int called)
{
    if (kind == STEP_SEM_ENTER) {
        PyObject *se = py_sem_enter(NULL, obj);
        if (se != NULL) ((SemEnterObject *)se)->called = (char)called;
        return se;
    }
    return as_new(obj, kind, called);
}

static PyObject *
stepdescr_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return step_for(obj, ((StepDescrObject *)self)->kind, 0);
}

static PyObject *
stepdescr_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    int kind = ((StepDescrObject *)self)->kind;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "needs the lock or semaphore as its first argument");
        return NULL;
    }
    PyObject *kwnames = kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0 ? kwargs : NULL; /* (any: an error) */
    if (kind == STEP_SEM_ENTER || kind == AS_LOCK_ENTER) {
        if (nargs != 1 || kwnames != NULL) {
            PyErr_SetString(PyExc_TypeError, "__aenter__() takes no arguments");
            return NULL;
        }
    }
    else if (nargs != 4 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "__aexit__(exc_type, exc, tb)");
        return NULL;
    }
    return step_for(PyTuple_GET_ITEM(args, 0), kind, 1);
}

static PyObject *
stepdescr_name(PyObject *self, void *Py_UNUSED(closure))
{
    int kind = ((StepDescrObject *)self)->kind;
    return PyUnicode_FromString(kind == STEP_SEM_ENTER || kind == AS_LOCK_ENTER ? "__aenter__" : "__aexit__");
}

static PyGetSetDef stepdescr_getset[] = {
    {"__name__", stepdescr_name, NULL, NULL, NULL},
    {NULL},
};

static void
stepdescr_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyType_Slot stepdescr_slots[] = {
    {Py_tp_dealloc, stepdescr_dealloc},
    {Py_tp_doc, "A traced asyncio Lock's or Semaphore's __aenter__ / __aexit__ (conctools.aio): read on an object, "
                "the step's awaitable, which is also the bound method (called, it returns itself)."},
    {Py_tp_descr_get, stepdescr_get},
    {Py_tp_call, stepdescr_call},
    {Py_tp_getset, stepdescr_getset},
    {0, NULL},
};

static PyType_Spec stepdescr_spec = {
    .name = "conctools._speedups.StepDescr",
    .basicsize = sizeof(StepDescrObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = stepdescr_slots,
};

static PyObject *
step_descr_new(int kind)
{
    if (g_step_descr_type == NULL) {
        g_step_descr_type = (PyTypeObject *)PyType_FromSpec(&stepdescr_spec); /* never freed */
        if (g_step_descr_type == NULL) return NULL;
    }
    StepDescrObject *d = PyObject_New(StepDescrObject, g_step_descr_type);
    if (d == NULL) return NULL;
    d->kind = kind;
    return (PyObject *)d;
}

/* aio_steps_setup(lock_cls, lock_aenter, lock_aexit, sem_aexit, task_stacks, spare_stacks, sem_cls, sem_types,
 * progress) -> (lock __aenter__, lock __aexit__, semaphore __aenter__, semaphore __aexit__): the StepDescr
 * descriptors above, for conctools.aio to install (sem_enter_setup() first); the three Python methods are
 * their slow paths. sem_types: the exact classes whose free slot sem_enter() takes in C; sem_cls (among them)
 * the one whose release() runs in C; progress: registry._progress. None when the asyncio fields of
 * aio.Lock (_locked, _waiters) or aio.Semaphore (_value, _waiters, _ct_holders) are not object slots
 * (nothing to install). */
static PyObject *
py_aio_steps_setup(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 || !PyType_Check(args[0]) || !PyDict_CheckExact(args[4]) || !PyList_CheckExact(args[5]) ||
        !PyType_Check(args[6]) || !PyTuple_CheckExact(args[7]) || !PyList_CheckExact(args[8])) {
        PyErr_SetString(PyExc_TypeError, "aio_steps_setup(lock_cls, lock_aenter, lock_aexit, sem_aexit, task_stacks, "
                                         "spare_stacks, sem_cls, sem_types, progress)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0], *sem_cls = (PyTypeObject *)args[6];
    Py_ssize_t off_locked = object_slot_offset(cls, "_locked"), off_waiters = object_slot_offset(cls, "_waiters");
    Py_ssize_t off_value = object_slot_offset(sem_cls, "_value"), off_sem_waiters = object_slot_offset(sem_cls, "_waiters"),
               off_holders = object_slot_offset(sem_cls, "_ct_holders");
    if (off_locked < 0 || off_waiters < 0 || g_aiolock_type == NULL || !PyType_IsSubtype(cls, g_aiolock_type) ||
        off_value < 0 || off_sem_waiters < 0 || off_holders < 0 || g_tracked_type == NULL ||
        !PyType_IsSubtype(sem_cls, g_tracked_type)) {
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[7]); i++) {
        PyObject *t = PyTuple_GET_ITEM(args[7], i);
        if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, sem_cls)) {
            PyErr_SetString(PyExc_TypeError, "aio_steps_setup(): sem_types must be subclasses of sem_cls");
            return NULL;
        }
    }
    if (g_as_type == NULL) {
        g_as_type = (PyTypeObject *)PyType_FromSpec(&as_spec); /* never freed */
        if (g_as_type == NULL) return NULL;
    }
    PyObject *descrs[4] = {step_descr_new(AS_LOCK_ENTER), step_descr_new(AS_LOCK_EXIT), step_descr_new(STEP_SEM_ENTER),
                           step_descr_new(AS_SEM_EXIT)};
    PyObject *out = NULL;
    if (descrs[0] && descrs[1] && descrs[2] && descrs[3]) out = PyTuple_Pack(4, descrs[0], descrs[1], descrs[2], descrs[3]);
    for (int i = 0; i < 4; i++) Py_XDECREF(descrs[i]);
    if (out == NULL) return NULL;
    Py_XSETREF(g_as_lock_cls, (PyTypeObject *)Py_NewRef(cls));
    for (int i = 0; i < AS_KINDS; i++) Py_XSETREF(g_as_slow[i], Py_NewRef(args[1 + i]));
    Py_XSETREF(g_as_stacks, Py_NewRef(args[4]));
    Py_XSETREF(g_as_spare, Py_NewRef(args[5]));
    g_as_off_locked = off_locked;
    g_as_off_waiters = off_waiters;
    Py_XSETREF(g_se_fast_types, Py_NewRef(args[7]));
    Py_XSETREF(g_se_release_type, (PyTypeObject *)Py_NewRef(sem_cls));
    Py_XSETREF(g_se_progress, Py_NewRef(args[8]));
    g_se_off_value = off_value;
    g_se_off_waiters = off_sem_waiters;
    g_se_off_holders = off_holders;
    return out;
}

/* setup_pools(sem_states, started, ended, state_globals): the pool blame's tables and slow paths. */
static PyObject *
py_setup_pools(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_Check(args[0]) || !PyCallable_Check(args[1]) || !PyCallable_Check(args[2]) ||
        !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "setup_pools(sem_states: dict, started, ended, state_globals: dict)");
        return NULL;
    }
    Py_XSETREF(g_sem_states, Py_NewRef(args[0]));
    Py_XSETREF(g_sem_started, Py_NewRef(args[1]));
    Py_XSETREF(g_sem_ended, Py_NewRef(args[2]));
    Py_XSETREF(g_pool_globals, Py_NewRef(args[3]));
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
/* note_task_site(table, task): table[id(task)] = (weakref(task), code, offset) of the first frame
 * outside conctools and the stdlib modules a creation site skips (asyncio among them): what
 * taskdump.note_creation_site() stores, read from the interpreter's frames without making frame objects
 * (the loop monitor's task factory calls it for every task). The entry and its weak reference are not
 * tracked by the garbage collector (neither can be in a cycle). Returns whether a site was noted. */
static PyObject *
py_note_task_site(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "note_task_site(table: dict, task)");
        return NULL;
    }
    PyCodeObject *code = NULL;
    int lasti = 0;
    if (!first_frame_without(BIT_CREATION_SKIP, &code, &lasti) || code == NULL) {
        Py_RETURN_FALSE;
    }
    PyObject *ref = PyWeakref_NewRef(args[1], NULL);
    if (ref == NULL) {
        return NULL; /* TypeError: not weak-referenceable */
    }
    /* (the code object and offset: the line is found when a report asks, taskdump.creation_site) */
    PyObject *offset = PyLong_FromLong(lasti);
    PyObject *entry = offset != NULL ? PyTuple_Pack(3, ref, (PyObject *)code, offset) : NULL;
    Py_XDECREF(offset);
    if (PyObject_GC_IsTracked(ref) && Py_REFCNT(ref) == 2) { /* ours and the entry's: not shared */
        PyObject_GC_UnTrack(ref);
    }
    Py_DECREF(ref);
    if (entry == NULL) {
        return NULL;
    }
    PyObject_GC_UnTrack(entry);
    PyObject *key = PyLong_FromVoidPtr(args[1]);
    int rc = key != NULL ? PyDict_SetItem(args[0], key, entry) : -1;
    Py_XDECREF(key);
    Py_DECREF(entry);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* -- task creation sites: a compact log in C (issue 12) -----------------------------------------
 *
 * The loop monitor's task factory runs for every task a program creates. It appends each task's creation
 * site to a log: the task's address (the key), its weak reference (to tell a live task from a dead one
 * whose address was reused), the code object and the instruction offset of the first frame outside asyncio
 * and conctools (the line is found only when a report asks). No Python object is made per task: the weak
 * reference is one the task already has (asyncio's registry of tasks, a WeakSet, makes one for every task)
 * when there is one. When the log is full its dead entries are dropped in C, in one pass (amortised: the
 * log is then at most half full).
 *
 * Noting is an append, in order: no probe of a hash table, whose random slot was a cache miss for every
 * task (~80% of the factory's own time in the asyncio program of issue 12), and the purge reads only the
 * weak references (never the tasks). Lookups are rare (a report, a stall, a hang): the entries noted since
 * the last lookup are scanned newest first when few, else indexed then (an open-addressed table of log
 * positions, made on the first lookup and extended by later ones; a purge moves entries, and drops it).
 * A dict of (weakref, code, offset) tuples keyed by id(task) made four objects per task (two of them
 * counted by the garbage collector's generation 0) and was purged by Python code. */
typedef struct {
    void *task;     /* the key: the task's address (never dereferenced) */
    PyObject *ref;  /* strong: a weak reference to the task */
    PyObject *code; /* strong */
    int lasti;
} SiteSlot;

static SiteSlot *g_task_sites;       /* the log, in the order noted; NULL until the first task */
static Py_ssize_t g_task_sites_cap;  /* its capacity: the least power of two >= its limit */
static Py_ssize_t g_task_sites_used; /* its entries (live or dead tasks) */
static Py_ssize_t g_task_sites_limit; /* a purge comes when it holds this many: twice the live at the last one */
static int32_t *g_sites_index;       /* lookups: log position + 1 by address (0: empty), or NULL */
static Py_ssize_t g_sites_index_cap; /* a power of two, twice the log's capacity */
static Py_ssize_t g_sites_indexed;   /* the log's first entries that are in the index */
#define SITES_MIN 4096 /* the least limit (and capacity) */
#define SITES_TAIL_SCAN 256 /* unindexed entries a lookup scans rather than index */

static inline size_t
site_hash(void *p, Py_ssize_t cap)
{
    return (size_t)((((uint64_t)(uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) >> 20) & (size_t)(cap - 1);
}

/* The task `ref` refers to, borrowed (NULL if it is dead). */
static PyObject *
ref_target(PyObject *ref)
{
    PyObject *obj = held_ref_target(ref); /* (borrowed: the caller holds the task, or only tests it for NULL) */
    return obj == Py_None ? NULL : obj;
}

/* Whether `ref`'s task is gone, read from the weak reference alone (a purge must not touch every task: each
 * would be a cache miss). A task whose weak references are not cleared yet (a deallocation the trashcan
 * delayed) stays until the next purge. */
static int
ref_cleared(PyObject *ref)
{
#ifndef Py_GIL_DISABLED
    if (PyWeakref_CheckRef(ref)) return ((PyWeakReference *)ref)->wr_object == Py_None;
#endif
    return ref_target(ref) == NULL;
}

/* The log at its limit: keep its live entries, in order; the next purge comes at twice their number (after
 * as many notes again: amortised), and the log is resized to a power of two that holds that many (as the
 * dict it replaces was purged: at most max(4096, 2 * live) entries); the index is dropped (positions moved). */
static int
sites_purge(void)
{
    Py_ssize_t n = g_task_sites_used;
    SiteSlot *log = g_task_sites;
    PyObject **dead = PyMem_Malloc((size_t)(2 * n + 1) * sizeof(PyObject *));
    if (dead == NULL) return -1;
    Py_ssize_t live = 0, n_dead = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ref_cleared(log[i].ref)) {
            dead[n_dead++] = log[i].ref;
            dead[n_dead++] = log[i].code;
        }
        else {
            log[live++] = log[i];
        }
    }
    g_task_sites_used = live;
    g_task_sites_limit = 2 * live > SITES_MIN ? 2 * live : SITES_MIN;
    PyMem_Free(g_sites_index);
    g_sites_index = NULL;
    g_sites_index_cap = g_sites_indexed = 0;
    Py_ssize_t want = SITES_MIN;
    while (want < g_task_sites_limit) want *= 2;
    if (want != g_task_sites_cap) {
        SiteSlot *resized = PyMem_Realloc(log, (size_t)want * sizeof(SiteSlot));
        if (resized != NULL) { /* (else it stays as it was: noting stops at its capacity) */
            g_task_sites = resized;
            g_task_sites_cap = want;
        }
    }
    /* last, the log consistent: dropping a dead task's reference and code runs no code of ours, but may free
     * objects (a weak reference's callback may make a task) */
    for (Py_ssize_t i = 0; i < n_dead; i++) Py_DECREF(dead[i]);
    PyMem_Free(dead);
    return 0;
}

/* Index the log's entries noted since the index was last extended (a later entry for an address replaces
 * an earlier one: a dead task's, whose address was reused). */
static int
sites_index_extend(void)
{
    Py_ssize_t want = 2 * g_task_sites_cap;
    if (g_sites_index == NULL || g_sites_index_cap != want) {
        int32_t *index = PyMem_Calloc((size_t)want, sizeof(int32_t));
        if (index == NULL) return -1;
        PyMem_Free(g_sites_index);
        g_sites_index = index;
        g_sites_index_cap = want;
        g_sites_indexed = 0;
    }
    size_t mask = (size_t)(g_sites_index_cap - 1);
    for (Py_ssize_t i = g_sites_indexed; i < g_task_sites_used; i++) {
        void *task = g_task_sites[i].task;
        size_t j = site_hash(task, g_sites_index_cap);
        while (g_sites_index[j] != 0 && g_task_sites[g_sites_index[j] - 1].task != task) j = (j + 1) & mask;
        g_sites_index[j] = (int32_t)(i + 1);
    }
    g_sites_indexed = g_task_sites_used;
    return 0;
}

/* A weak reference to `task`, new: one it already has when it has one (no allocation), else a new one. */
static PyObject *
task_weakref(PyObject *task)
{
    PyTypeObject *tp = Py_TYPE(task);
    /* (3.13's _asyncio.Task keeps its weak references before the object: Py_TPFLAGS_MANAGED_WEAKREF, a negative
     * offset, which points at the list as a positive one does; CPython's own lookup adds it the same way) */
    if (tp->tp_weaklistoffset != 0 && !PyType_Check(task)) {
        PyWeakReference *w = *(PyWeakReference **)((char *)task + tp->tp_weaklistoffset);
        for (; w != NULL; w = w->wr_next) {
            if (PyWeakref_CheckRef((PyObject *)w)) return Py_NewRef((PyObject *)w);
        }
    }
    return PyWeakref_NewRef(task, NULL);
}

/* Note (code, lasti) as `task`'s creation site; errors are swallowed (never into the program). */
static void
sites_note(PyObject *task, PyCodeObject *code, int lasti)
{
    if (g_task_sites == NULL) {
        g_task_sites = PyMem_Malloc(SITES_MIN * sizeof(SiteSlot));
        if (g_task_sites == NULL) return;
        g_task_sites_cap = g_task_sites_limit = SITES_MIN;
    }
    else if (g_task_sites_used >= g_task_sites_limit) { /* drop the dead; grow if the live need it */
        if (sites_purge() < 0 || g_task_sites_used >= g_task_sites_cap) {
            PyErr_Clear();
            return;
        }
    }
    PyObject *ref = task_weakref(task);
    if (ref == NULL) {
        PyErr_Clear(); /* not weak-referenceable */
        return;
    }
    SiteSlot *e = &g_task_sites[g_task_sites_used++];
    e->task = (void *)task;
    e->ref = ref;
    e->code = Py_NewRef((PyObject *)code);
    e->lasti = lasti;
}

/* `task`, just made, with its creation site noted: the first frame outside asyncio and conctools, from the
 * interpreter's frames (no frame objects). Noting never fails the creation (errors cleared). */
static PyObject *
sites_note_made(PyObject *task)
{
    if (task == NULL) return NULL;
    PyCodeObject *code = NULL;
    int lasti = 0;
    if (first_frame_without(BIT_CREATION_SKIP, &code, &lasti) && code != NULL) {
        sites_note(task, code, lasti);
    }
    PyErr_Clear();
    return task;
}

/* `e`, when it is the live task `task`'s entry (its weak reference still refers to it), else NULL. */
static SiteSlot *
site_if_live(SiteSlot *e, void *task)
{
    return ref_target(e->ref) == (PyObject *)task ? e : NULL;
}

/* The entry of the live task `task` (the latest noted for its address), or NULL. */
static SiteSlot *
sites_find(void *task)
{
    if (g_task_sites == NULL || task == NULL) return NULL;
    Py_ssize_t used = g_task_sites_used;
    /* the entries noted since the index was extended, newest first: the whole log when there is no memory for
     * the index */
    int no_index = used - g_sites_indexed > SITES_TAIL_SCAN && sites_index_extend() < 0;
    Py_ssize_t scan_from = no_index ? 0 : g_sites_indexed;
    for (Py_ssize_t i = used - 1; i >= scan_from; i--) {
        if (g_task_sites[i].task == task) return site_if_live(&g_task_sites[i], task);
    }
    if (scan_from == 0) return NULL; /* (the whole log was scanned) */
    size_t mask = (size_t)(g_sites_index_cap - 1);
    for (size_t j = site_hash(task, g_sites_index_cap); g_sites_index[j] != 0; j = (j + 1) & mask) {
        SiteSlot *e = &g_task_sites[g_sites_index[j] - 1];
        if (e->task == task) return site_if_live(e, task);
    }
    return NULL;
}

/* task_site(task_id) -> (weakref, code, offset) of the live task with that id noted by the task factory,
 * or None (taskdump.creation_site reads it). */
static PyObject *
py_task_site(PyObject *Py_UNUSED(module), PyObject *arg)
{
    void *p = PyLong_AsVoidPtr(arg);
    if (p == NULL && PyErr_Occurred()) return NULL;
    SiteSlot *e = sites_find(p);
    if (e == NULL) Py_RETURN_NONE;
    PyObject *offset = PyLong_FromLong(e->lasti);
    if (offset == NULL) return NULL;
    PyObject *entry = PyTuple_Pack(3, e->ref, e->code, offset);
    Py_DECREF(offset);
    return entry;
}

/* task_sites_len() -> the log's entries (live tasks, and dead ones not dropped yet). */
static PyObject *
py_task_sites_len(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(g_task_sites_used);
}

/* task_factory(task_type) -> factory: the loop monitor's task factory in C (issue 12: it runs for every
 * task a program creates). factory(loop, coro, **kwargs) makes task_type(coro, loop=loop, **kwargs) and
 * notes its creation site in the table above (task_site). Noting never fails the creation. */
static PyObject *s_loop_kwnames; /* ("loop",) */

static PyObject *
task_factory_call(PyObject *task_type, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "task factory(loop, coro, **kwargs)");
        return NULL;
    }
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *task;
    if (nkw == 0) {
        PyObject *stack[2] = {args[1], args[0]};
        task = PyObject_Vectorcall(task_type, stack, 1, s_loop_kwnames);
    }
    else {
        PyObject *names = PyTuple_New(1 + nkw);
        PyObject **stack = PyMem_Malloc(sizeof(PyObject *) * (size_t)(2 + nkw));
        if (names == NULL || stack == NULL) {
            Py_XDECREF(names);
            PyMem_Free(stack);
            return PyErr_NoMemory();
        }
        PyTuple_SET_ITEM(names, 0, Py_NewRef(PyTuple_GET_ITEM(s_loop_kwnames, 0)));
        stack[0] = args[1];
        stack[1] = args[0];
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyTuple_SET_ITEM(names, 1 + i, Py_NewRef(PyTuple_GET_ITEM(kwnames, i)));
            stack[2 + i] = args[2 + i];
        }
        task = PyObject_Vectorcall(task_type, stack, 1, names);
        PyMem_Free(stack);
        Py_DECREF(names);
    }
    return sites_note_made(task);
}

static PyMethodDef task_factory_def = {"conctools_task_factory", (PyCFunction)(void (*)(void))task_factory_call,
                                       METH_FASTCALL | METH_KEYWORDS,
                                       "factory(loop, coro, **kwargs) -> task, its creation site noted (conctools)"};

static PyObject *
py_task_factory(PyObject *Py_UNUSED(module), PyObject *task_type)
{
    if (!PyCallable_Check(task_type)) {
        PyErr_SetString(PyExc_TypeError, "task_factory(task_type)");
        return NULL;
    }
    if (s_loop_kwnames == NULL) {
        s_loop_kwnames = Py_BuildValue("(s)", "loop");
        if (s_loop_kwnames == NULL) return NULL;
    }
    return PyCFunction_New(&task_factory_def, task_type);
}

/* create_task_noter(create_task) -> create_task(coro, **kwargs): CPython 3.13.0's stand-in for the task factory
 * above (with a factory set, that version renames every unnamed task 'None'): the loop's own create_task,
 * called as given, and the task's creation site noted in the same table. No Python frame and no Python
 * object per task: a Python wrapper with the dict noter made two objects per task that the garbage
 * collector counts, and the asyncio program's run then made an extra full collection (3.13.0, issue 12). */
static PyObject *
create_task_call(PyObject *original, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return sites_note_made(PyObject_Vectorcall(original, args, PyVectorcall_NARGS(nargsf), kwnames));
}

static PyMethodDef create_task_def = {"create_task", (PyCFunction)(void (*)(void))create_task_call,
                                      METH_FASTCALL | METH_KEYWORDS,
                                      "create_task(coro, **kwargs) -> task, its creation site noted (conctools)"};

static PyObject *
py_create_task_noter(PyObject *Py_UNUSED(module), PyObject *original)
{
    if (!PyCallable_Check(original)) {
        PyErr_SetString(PyExc_TypeError, "create_task_noter(create_task)");
        return NULL;
    }
    return PyCFunction_New(&create_task_def, original);
}

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

/* holder_record(): (ThreadInfo, task or None) of the calling thread: who takes a semaphore, in one
 * call (a thread without a threading.Thread gets a ThreadInfo of its own, kept for the thread). */
static PyObject *
py_holder_record(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyThreadState *ts = CT_TSTATE();
    unsigned long long tid = (unsigned long long)ts->id;
    PyObject *info = current_thread_object(tid, ts->thread_id);
    PyObject *own = NULL;
    if (info == NULL) {
        own = new_threadinfo(ts->thread_id, tid, NULL);
        if (own == NULL) return NULL;
        info = own;
    }
    PyObject *task = current_task_of_thread(tid);
    PyObject *rec = PyTuple_Pack(2, info, task != NULL ? task : Py_None);
    Py_XDECREF(task);
    Py_XDECREF(own);
    return rec;
}

/* holder_site_record(): (ThreadInfo, task or None, site) of the calling thread, the site being where
 * the program took the semaphore ((code, offset) of the first frame outside conctools and the
 * stdlib modules sites skip; shared tuples). Allocates: called before the semaphore is taken. */
static PyObject *
py_holder_site_record(PyObject *module, PyObject *ignored)
{
    PyObject *rec = py_holder_record(module, ignored);
    if (rec == NULL) return NULL;
    PyObject *site = caller_site(NULL);
    PyObject *out = PyTuple_Pack(3, PyTuple_GET_ITEM(rec, 0), PyTuple_GET_ITEM(rec, 1), site);
    Py_DECREF(site);
    Py_DECREF(rec);
    return out;
}

/* live(): every live traced primitive made by the C types (strong references, for the registry). */
static PyObject *
py_live(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = g_live + g_tracked_live, i = 0;
    PyObject **items = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(PyObject *));
    if (items == NULL) return PyErr_NoMemory();
    /* No allocation of Python objects while walking: a collection could unlink nodes under us. */
    for (CoreObject *c = g_head; c != NULL && i < n; c = c->next) {
        if (Py_REFCNT(c) > 0 && c->lock != NULL) {
            items[i++] = Py_NewRef((PyObject *)c);
        }
    }
    for (TrackedObject *t = g_tracked_head; t != NULL && i < n; t = t->next) {
        if (Py_REFCNT(t) > 0 && t->stats != NULL) {
            items[i++] = Py_NewRef((PyObject *)t);
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

/* acquisitions(): the sum of every live primitive's counters (watchdog progress). */
static PyObject *
py_acquisitions(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    long long total = 0;
    for (CoreObject *c = g_head; c != NULL; c = c->next) total += c->n;
    for (TrackedObject *t = g_tracked_head; t != NULL; t = t->next) {
        if (t->n != NULL) total += PyLong_AsLongLong(t->n);
        if (t->progress != NULL) total += PyLong_AsLongLong(t->progress);
    }
    PyErr_Clear();
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

/* -- Semaphore: the acquire and release that wait for nothing, in C ----------------------------- */

/* locks.Semaphore's acquire and release as C methods (every ThreadPoolExecutor.submit() takes its idle
 * semaphore, and every worker gives it back): the Python bodies cost two Python frames for the
 * internal condition's `with`, one for notify() and one for _is_owned(), each time. These do the same
 * stores under the same internal lock (self._cond._lock, taken without waiting), and hand everything
 * else to the Python methods (set by setup_primitives): arguments they do not expect, a semaphore
 * that must be waited for, an internal lock that is busy, a release with waiters to wake. */
static PyObject *g_sem_acquire_py, *g_sem_release_py; /* Semaphore.acquire / .release (Python functions) */
static PyObject *g_std_condition;                    /* threading.Condition (the stdlib's) */
static Py_ssize_t g_sem_max_holders = 64;            /* locks.MAX_HOLDERS */
static PyObject *s_value, *s_cond, *s_holders, *s_ct_trash, *s_ct_bound, *s_cond_waiters, *s_blocking,
    *s_timeout, *s_n;

/* fn(self, *args, **kwargs) for a vectorcall's arguments. */
static PyObject *
sem_fallback(PyObject *fn, PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools._speedups: setup_primitives() was not called");
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *small[8], **stack = small;
    if (nargs + nkw + 1 > 8) {
        stack = PyMem_Malloc((size_t)(nargs + nkw + 1) * sizeof(PyObject *));
        if (stack == NULL) return PyErr_NoMemory();
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(fn, stack, (size_t)(nargs + 1), kwnames);
    if (stack != small) PyMem_Free(stack);
    return r;
}

/* A Semaphore of ours whose attributes are plain ones (no __getattr__ or __setattr__ of a subclass:
 * reading or storing them runs no Python code). */
static int
sem_plain(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    return PyObject_TypeCheck(self, g_tracked_type) && tp->tp_getattro == PyObject_GenericGetAttr &&
           tp->tp_setattro == PyObject_GenericSetAttr;
}

/* Keyword `kw` is `name` (interned: usually the same object). */
static int
kw_is(PyObject *kw, PyObject *name)
{
    return kw == name || (PyUnicode_Check(kw) && PyUnicode_Compare(kw, name) == 0);
}

/* self._cond (a threading.Condition over a plain lock) when its lock is free: a new reference, or NULL
 * without an error when it is held or not of the expected kinds. Holding the GIL, and running no
 * Python code until its last store (no call, no allocation the garbage collector counts, no reference
 * dropped), the caller then does what it would do under that lock, with the same effect: no other
 * thread is inside a section of it, and none can enter one before the caller is done. */
static PyObject *
sem_cond_free(PyObject *self)
{
    if (g_lock_type == NULL || m_lock_locked == NULL || g_std_condition == NULL) {
        return NULL;
    }
    PyObject *cond = PyObject_GetAttr(self, s_cond);
    if (cond == NULL || !Py_IS_TYPE(cond, (PyTypeObject *)g_std_condition)) {
        Py_XDECREF(cond);
        PyErr_Clear();
        return NULL;
    }
    PyObject *lock = PyObject_GetAttr(cond, s_lock_attr);
    PyObject *held = lock != NULL && Py_IS_TYPE(lock, (PyTypeObject *)g_lock_type) ? call_noargs(m_lock_locked, lock)
                                                                                     : NULL;
    Py_XDECREF(lock);
    int free = held == Py_False;
    Py_XDECREF(held);
    if (!free) {
        PyErr_Clear();
        Py_DECREF(cond);
        return NULL;
    }
    return cond;
}

/* An exact int attribute of obj as a long long, or -1 (no error set) when it is missing or not one. */
static long long
sem_int_attr(PyObject *obj, PyObject *attr)
{
    PyObject *v = PyObject_GetAttr(obj, attr);
    if (v == NULL || !PyLong_CheckExact(v)) {
        Py_XDECREF(v);
        PyErr_Clear();
        return -1;
    }
    long long n = as_ll(v);
    Py_DECREF(v);
    if (n < 0) {
        PyErr_Clear();
        return -1;
    }
    return n;
}

static int
sem_set_int(PyObject *obj, PyObject *attr, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int err = PyObject_SetAttr(obj, attr, v);
    Py_DECREF(v);
    return err;
}

static PyObject *
sem_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *blocking_obj = NULL, *timeout_obj = NULL;
    if (nargs > 2 || !sem_plain(self)) goto slow;
    if (nargs >= 1) blocking_obj = args[0];
    if (nargs >= 2) timeout_obj = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
        if (blocking_obj == NULL && kw_is(kw, s_blocking)) blocking_obj = args[nargs + i];
        else if (timeout_obj == NULL && kw_is(kw, s_timeout)) timeout_obj = args[nargs + i];
        else goto slow;
    }
    /* Only the plain kinds (whose truth and comparison run no Python code); the rest as Python does. */
    int blocking = 1;
    if (blocking_obj != NULL) {
        if (PyBool_Check(blocking_obj)) blocking = blocking_obj == Py_True;
        else if (PyLong_CheckExact(blocking_obj)) blocking = _PyLong_Sign(blocking_obj) != 0;
        else goto slow;
    }
    int poll = !blocking; /* not blocking, or timeout == 0 */
    if (timeout_obj != NULL && timeout_obj != Py_None) {
        if (!blocking) goto slow; /* ValueError, raised by the Python method */
        if (PyFloat_CheckExact(timeout_obj)) poll = PyFloat_AS_DOUBLE(timeout_obj) == 0.0;
        else if (PyLong_CheckExact(timeout_obj)) poll = _PyLong_Sign(timeout_obj) == 0;
        else goto slow;
    }
    long long value = sem_int_attr(self, s_value);
    if (value < 0) goto slow;
    if (value == 0) {
        if (poll) Py_RETURN_FALSE; /* a poll of an empty semaphore */
        goto slow;                 /* a wait */
    }
    /* Who takes it and where, made before the internal lock is taken (it allocates). */
    PyObject *rec = py_holder_site_record(NULL, NULL);
    if (rec == NULL) return NULL;
    PyObject *trash = PyObject_GetAttr(self, s_ct_trash);
    if (trash == NULL) {
        PyErr_Clear();
    }
    else if (trash != Py_None && PyObject_SetAttr(self, s_ct_trash, Py_None) < 0) {
        Py_DECREF(trash);
        Py_DECREF(rec);
        return NULL;
    }
    Py_XDECREF(trash); /* (outside the internal lock: it may be the last reference to a thread) */
    /* The values read again after the trash went: its finalizers may have run Python code. */
    value = sem_int_attr(self, s_value);
    PyObject *holders = value > 0 ? PyObject_GetAttr(self, s_holders) : NULL;
    if (holders == NULL || !PyList_CheckExact(holders)) {
        PyErr_Clear();
        Py_XDECREF(holders);
        Py_DECREF(rec);
        goto slow;
    }
    PyObject *cond = sem_cond_free(self);
    if (cond == NULL) {
        Py_DECREF(holders);
        Py_DECREF(rec);
        goto slow;
    }
    Py_DECREF(cond);
    /* As under the internal lock (sem_cond_free): stores only from here. */
    TrackedObject *t = (TrackedObject *)self;
    long long n = t->n != NULL && PyLong_Check(t->n) ? as_ll(t->n) : 0;
    PyObject *nv = n >= 0 ? PyLong_FromLongLong(n + 1) : NULL;
    int err = nv == NULL || sem_set_int(self, s_value, value - 1) < 0;
    if (!err) {
        Py_SETREF(t->n, nv); /* (the old count is an int: no finalizer) */
        nv = NULL;
        if (PyList_GET_SIZE(holders) < g_sem_max_holders && PyList_Append(holders, rec) < 0) {
            PyErr_Clear(); /* (that holder is not named: as past MAX_HOLDERS) */
        }
    }
    Py_XDECREF(nv);
    Py_DECREF(holders);
    Py_DECREF(rec);
    if (err) return NULL;
    Py_RETURN_TRUE;
slow:
    return sem_fallback(g_sem_acquire_py, self, args, (size_t)nargsf, kwnames);
}

/* Drop one holder record from holders (not empty): the releasing thread's own (`me`, looked for among
 * the newest few), else the oldest, as Semaphore._forget_holders does for n = 1. A new reference to
 * the record, which the caller releases after its last store. */
static PyObject *
sem_forget_one(PyObject *holders, PyObject *me)
{
    Py_ssize_t len = PyList_GET_SIZE(holders), at = 0;
    for (Py_ssize_t i = len - 1; i > (len - 9 > -1 ? len - 9 : -1); i--) {
        PyObject *h = PyList_GET_ITEM(holders, i);
        if (me != NULL && PyTuple_Check(h) && PyTuple_GET_SIZE(h) > 0 && PyTuple_GET_ITEM(h, 0) == me) {
            at = i;
            break;
        }
    }
    PyObject *item = Py_NewRef(PyList_GET_ITEM(holders, at));
    if (PyList_SetSlice(holders, at, at + 1, NULL) < 0) PyErr_Clear(); /* (a deletion: cannot fail) */
    return item;
}

static PyObject *
sem_release(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *n_obj = NULL;
    if (nargs > 1 || !sem_plain(self)) goto slow;
    if (nargs == 1) n_obj = args[0];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
        if (n_obj == NULL && kw_is(kw, s_n)) n_obj = args[nargs + i];
        else goto slow;
    }
    long long n = 1;
    if (n_obj != NULL) {
        if (!PyLong_CheckExact(n_obj)) goto slow;
        n = as_ll(n_obj);
        if (n < 1) {
            PyErr_Clear();
            goto slow; /* ValueError, raised by the Python method */
        }
    }
    /* Who releases (a thread without a threading.Thread matches no record, as in Python). */
    PyThreadState *ts = CT_TSTATE();
    PyObject *me = current_thread_object((unsigned long long)ts->id, ts->thread_id);
    PyObject *cond = sem_cond_free(self);
    if (cond == NULL) goto slow;
    PyObject *waiters = PyObject_GetAttr(cond, s_cond_waiters);
    Py_DECREF(cond);
    /* (the stdlib Condition's waiters: a collections.deque, whose len() runs no Python code) */
    Py_ssize_t nwaiting = waiters != NULL ? PyObject_Size(waiters) : -1;
    Py_XDECREF(waiters);
    long long value = nwaiting == 0 ? sem_int_attr(self, s_value) : -1;
    PyObject *bound = value >= 0 ? PyObject_GetAttr(self, s_ct_bound) : NULL;
    PyObject *holders = bound != NULL ? PyObject_GetAttr(self, s_holders) : NULL;
    PyObject *old_trash = holders != NULL ? PyObject_GetAttr(self, s_ct_trash) : NULL;
    /* n > 1 drops a list of records: made by the Python method (an allocation the collector counts). */
    int fast = old_trash != NULL && PyList_CheckExact(holders) && (n == 1 || PyList_GET_SIZE(holders) == 0) &&
               (bound == Py_None || (PyLong_CheckExact(bound) && value + n <= as_ll(bound)));
    Py_XDECREF(bound);
    if (!fast) { /* someone to wake, too many releases, or unexpected state: as Python does */
        PyErr_Clear();
        Py_XDECREF(holders);
        Py_XDECREF(old_trash);
        goto slow;
    }
    /* As under the internal lock (sem_cond_free): stores only from here (the dropped record and the
     * old trash are released after the last store). */
    PyObject *dropped = NULL;
    int err = sem_set_int(self, s_value, value + n);
    if (!err && PyList_GET_SIZE(holders) > 0) {
        dropped = sem_forget_one(holders, me); /* (n is 1 here) */
        if (PyObject_SetAttr(self, s_ct_trash, dropped) < 0) PyErr_Clear();
    }
    Py_DECREF(holders);
    Py_XDECREF(dropped);
    Py_XDECREF(old_trash);
    if (err) return NULL;
    PyObject *w = ((TrackedObject *)self)->waiters;
    if (w != NULL && PyDict_Check(w) && PyDict_GET_SIZE(w) > 0 && g_progress != NULL && PyList_Check(g_progress) &&
        PyList_GET_SIZE(g_progress) > 0) {
        PyObject *now = PyLong_FromLongLong(mono_ns());
        if (now != NULL) PyList_SetItem(g_progress, 0, now); /* the previous stamp is an int */
        else PyErr_Clear();
    }
    Py_RETURN_NONE;
slow:
    return sem_fallback(g_sem_release_py, self, args, (size_t)nargsf, kwnames);
}

static PyObject *
sem_exit(PyObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    return sem_release(self, NULL, 0, NULL);
}

/* setup_primitives(sem_acquire, sem_release, condition, max_holders, lock_cls, rlock_cls): the Python
 * Semaphore methods the C ones hand the other cases to, the stdlib's Condition class,
 * locks.MAX_HOLDERS, and conctools.Lock and RLock (whose methods a Condition calls directly). */
static PyObject *
py_setup_primitives(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyType_Check(args[2]) || !PyLong_Check(args[3]) || !PyType_Check(args[4]) ||
        !PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "setup_primitives(sem_acquire, sem_release, condition, max_holders, lock_cls, rlock_cls)");
        return NULL;
    }
    Py_XSETREF(g_lock_cls, (PyTypeObject *)Py_NewRef(args[4]));
    Py_XSETREF(g_rlock_cls, (PyTypeObject *)Py_NewRef(args[5]));
    Py_ssize_t max_holders = PyLong_AsSsize_t(args[3]);
    if (max_holders < 0) return NULL;
    Py_XSETREF(g_sem_acquire_py, Py_NewRef(args[0]));
    Py_XSETREF(g_sem_release_py, Py_NewRef(args[1]));
    Py_XSETREF(g_std_condition, Py_NewRef(args[2]));
    g_sem_max_holders = max_holders;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"handover", (PyCFunction)(void (*)(void))py_handover, METH_FASTCALL,
     "handover([on]) -> (asked, yielded, handed over): the GIL hand-over's counts; on: turn it on or off"},
    {"handover_yielding", (PyCFunction)py_handover_yielding, METH_NOARGS,
     "handover_yielding() -> bool: the main thread waits for an asker to take the GIL it let go of"},
    {"handover_after_fork", (PyCFunction)py_handover_after_fork, METH_NOARGS,
     "handover_after_fork(): in a forked child, nobody asks for the GIL"},
    {"sem_enter", (PyCFunction)py_sem_enter, METH_O,
     "sem_enter(sem) -> awaitable: a traced asyncio semaphore's __aenter__ (asyncio's acquire(), watched)"},
    {"sem_enter_setup", (PyCFunction)(void (*)(void))py_sem_enter_setup, METH_FASTCALL,
     "sem_enter_setup(base_acquire, hooks, run_started, run_ended, current_tasks, current_task, max_holders)"},
    {"create_task_noter", (PyCFunction)(void (*)(void))py_create_task_noter, METH_O,
     "create_task_noter(create_task) -> a create_task that notes each task's creation site (3.13.0)"},
    {"task_factory", (PyCFunction)(void (*)(void))py_task_factory, METH_O,
     "task_factory(task_type) -> the loop monitor's task factory, in C (sites noted for task_site)"},
    {"task_site", (PyCFunction)(void (*)(void))py_task_site, METH_O,
     "task_site(task_id) -> (weakref, code, offset) where the task factory saw that live task created, or None"},
    {"task_sites_len", (PyCFunction)(void (*)(void))py_task_sites_len, METH_NOARGS,
     "task_sites_len() -> entries in the task factory's table of creation sites"},
    {"note_task_site", (PyCFunction)(void (*)(void))py_note_task_site, METH_FASTCALL,
     "note_task_site(table, task) -> bool: table[id(task)] = (weakref(task), file, line) of its creation site"},
    {"thread_state_id", (PyCFunction)py_thread_state_id, METH_O,
     "thread_state_id(ident): the thread-state id of the live thread with this id, or None"},
    {"current_thread_key", (PyCFunction)py_current_thread_key, METH_NOARGS,
     "current_thread_key(): the calling thread's thread-state id (never reused in the process)"},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     "setup(...): what the C paths need from conctools.locks"},
    {"clear_caches", (PyCFunction)py_clear_caches, METH_NOARGS, "clear_caches(): forget cached creation sites"},
    {"order_checking", (PyCFunction)py_order_checking, METH_O,
     "order_checking(on): lockorder.check is running in this thread (True), or no longer (False)"},
    {"drop_dead_run", (PyCFunction)(void (*)(void))drop_dead_run, METH_FASTCALL,
     "drop_dead_run(run, into, has_out): lockorder._drop_if_dead in C"},
    {"graph_alive", (PyCFunction)graph_alive, METH_O,
     "graph_alive(into): both locks of every instance edge alive (a prune pass would forget nothing)"},
    {"setup_runs", (PyCFunction)(void (*)(void))setup_runs, METH_VARARGS | METH_KEYWORDS,
     "setup_runs(...): lockorder's instance-edge tables, for the next lock of a run"},
    {"setup_waits", (PyCFunction)(void (*)(void))setup_waits, METH_VARARGS | METH_KEYWORDS,
     "setup_waits(...): what the C wait records need from conctools.locks"},
    {"wait_begin", (PyCFunction)(void (*)(void))py_wait_begin, METH_FASTCALL | METH_KEYWORDS,
     "wait_begin(prim, frame, timeout_s, holder, by_task=False, event=True, task=False): a wait record"},
    {"wait_done", (PyCFunction)(void (*)(void))py_wait_done, METH_FASTCALL,
     "wait_done(wait, acquired): the wait ended (stores only)"},
    {"aio_run_waits", (PyCFunction)py_aio_run_waits, METH_NOARGS,
     "aio_run_waits() -> (waits, longest): asyncio waits counted in runs (issue 12), those kept as the longest"},
    {"drain_brief", (PyCFunction)py_drain_brief, METH_NOARGS,
     "drain_brief(): record the contended waits that ended in their brief window"},
    {"set_brief_wait", (PyCFunction)py_set_brief_wait, METH_O,
     "set_brief_wait(seconds) -> previous: a contended acquisition's first wait, before its record (0: none)"},
    {"brief_waits", (PyCFunction)py_brief_waits, METH_NOARGS,
     "brief_waits() -> (ended in their window so far, in their window now, not yet recorded)"},
    {"promote_waits", (PyCFunction)(void (*)(void))py_promote_waits, METH_FASTCALL,
     "promote_waits(min_age_s=0.0) -> int: young asyncio waits at least that old into the waiters tables"},
    {"young_waits", py_young_waits, METH_NOARGS, "young_waits() -> int: asyncio waits not yet in the waiters tables"},
    {"wait_done_now", (PyCFunction)(void (*)(void))py_wait_done_now, METH_FASTCALL,
     "wait_done_now(wait, acquired): the wait ended; its statistics now unless it is sampled"},
    {"try_register", (PyCFunction)(void (*)(void))py_try_register, METH_FASTCALL,
     "try_register(prim, kind, name) -> bool: name a primitive from the cached creation sites"},
    {"remember_site", (PyCFunction)(void (*)(void))py_remember_site, METH_FASTCALL,
     "remember_site(kind, name, stats, created): cache a creation site"},
    {"live", (PyCFunction)py_live, METH_NOARGS, "live(): every live traced primitive of the C types"},
    {"holder_record", (PyCFunction)py_holder_record, METH_NOARGS,
     "holder_record(): (ThreadInfo, task or None) of the calling thread"},
    {"holder_site_record", (PyCFunction)py_holder_site_record, METH_NOARGS,
     "holder_site_record(): (ThreadInfo, task or None, (code, offset) of the program's call)"},
    {"link", (PyCFunction)py_link, METH_O, "link(prim): a Tracked primitive joins the list of live ones"},
    {"untrack", (PyCFunction)py_untrack, METH_O,
     "untrack(obj): the garbage collector stops following a tuple or list that cannot be in a cycle"},
    {"acquisitions", (PyCFunction)py_acquisitions, METH_NOARGS, "acquisitions(): total of the live locks' counters"},
    {"raw_stack", (PyCFunction)py_raw_stack, METH_O, "raw_stack(limit): (code, offset, ...) innermost first"},
    {"bucket_of", (PyCFunction)py_bucket_of, METH_O, "bucket_of(value): recorder.bucket_of, as the C path computes it"},
    {"hist_add", (PyCFunction)(void (*)(void))py_hist_add, METH_FASTCALL, "hist_add(hist, value): Histogram.add in C"},
    {"cond_setup", (PyCFunction)py_cond_setup, METH_O,
     "cond_setup(cls): the traced Condition class, whose _lock slot its C __enter__/__exit__ read in place"},
    {"pool_sem_started", (PyCFunction)py_pool_sem_started, METH_O,
     "pool_sem_started(prim) -> start_ns: a task must wait on a traced asyncio semaphore (pool blame)"},
    {"pool_sem_ended", (PyCFunction)(void (*)(void))py_pool_sem_ended, METH_FASTCALL,
     "pool_sem_ended(prim, start_ns): that wait is over"},
    {"aio_steps_setup", (PyCFunction)(void (*)(void))py_aio_steps_setup, METH_FASTCALL,
     "aio_steps_setup(lock_cls, lock_aenter, lock_aexit, sem_aexit, task_stacks, spare_stacks, sem_cls, sem_types, "
     "progress) -> 4 descriptors"},
    {"aio_took", (PyCFunction)(void (*)(void))py_aio_took, METH_FASTCALL,
     "aio_took(lock, task_stacks, spare_stacks) -> bool: aio.Lock._took_timed when no Python is needed"},
    {"aio_released", (PyCFunction)(void (*)(void))py_aio_released, METH_FASTCALL,
     "aio_released(lock, task_stacks, spare_stacks) -> bool: aio.Lock._released_timed when no Python is needed"},
    {"setup_primitives", (PyCFunction)(void (*)(void))py_setup_primitives, METH_FASTCALL,
     "setup_primitives(sem_acquire, sem_release, condition, max_holders, lock_cls, rlock_cls): the Semaphore\n"
     "C paths' fallbacks, and the lock classes whose methods a Condition calls directly"},
    {"setup_pools", (PyCFunction)(void (*)(void))py_setup_pools, METH_FASTCALL,
     "setup_pools(sem_states, started, ended, state_globals): pool blame's tables and Python paths"},
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
    INTERN(s_popleft, "popleft");
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
    INTERN(s_name, "name");
    INTERN(s_sites, "sites");
    INTERN(s_contentions, "contentions");
    INTERN(s_waits, "waits");
    INTERN(s_stacks, "stacks");
    INTERN(s_function, "function");
    INTERN(s_ct_waiters, "_ct_waiters");
    INTERN(s_ct_n, "_ct_n");
    INTERN(s_ct_holders, "_ct_holders");
    INTERN(s_ct_loop, "_ct_loop");
    INTERN(s_ct_task, "_ct_task");
    INTERN(s_throw, "throw");
    INTERN(s_close, "close");
    INTERN(s_get_name, "get_name");
    INTERN(s_retired, "retired");
    INTERN(s_lock_attr, "_lock");
    INTERN(s_enter, "__enter__");
    INTERN(s_exit, "__exit__");
    INTERN(s_ct_stats, "_ct_stats");
    INTERN(s_qsize, "_qsize");
    INTERN(s_queue_attr, "queue");
    INTERN(s_took_timed, "_took_timed");
    INTERN(s_released_timed, "_released_timed");
    INTERN(s_wake_up_first, "_wake_up_first");
    INTERN(s_wake_up_next, "_wake_up_next");
    INTERN(s_ct_created, "_ct_created");
    INTERN(s_ct_name, "_ct_name");
    INTERN(s_mutex, "mutex");
    INTERN(s_events, "events");
    INTERN(s_timeouts, "timeouts");
    INTERN(s_wait, "wait");
    INTERN(s_champion, "champion");
    INTERN(s_queue_state, "_conctools_pool");
    INTERN(s_snapshot_every, "SNAPSHOT_EVERY_S");
    INTERN(s_episode_snapshot_every, "EPISODE_SNAPSHOT_EVERY_S");
    INTERN(s_value, "_value");
    INTERN(s_cond, "_cond");
    INTERN(s_holders, "_holders");
    INTERN(s_ct_trash, "_ct_trash");
    INTERN(s_ct_bound, "_ct_bound");
    INTERN(s_cond_waiters, "_waiters");
    INTERN(s_blocking, "blocking");
    INTERN(s_timeout, "timeout");
    INTERN(s_n, "n");
    INTERN(g_key_thread, "conctools.thread");
    INTERN(g_key_held, "conctools.held");
    if ((g_false_args = PyTuple_Pack(1, Py_False)) == NULL) goto fail;
    if ((g_true_args = PyTuple_Pack(1, Py_True)) == NULL) goto fail;
    if ((g_true_minus_one = Py_BuildValue("(Oi)", Py_True, -1)) == NULL) goto fail;
    if ((g_brief_args = Py_BuildValue("(Od)", Py_True, (double)g_brief_ns / 1e9)) == NULL) goto fail;
    if ((g_question = PyUnicode_FromString("?")) == NULL) goto fail;
    if ((g_empty_str = PyUnicode_FromString("")) == NULL) goto fail;
    if ((g_zero_int = PyLong_FromLong(0)) == NULL) goto fail;
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
    PyObject *waitrecord = PyType_FromSpec(&waitrecord_spec);
    if (waitrecord == NULL) goto fail;
    g_waitrecord_type = (PyTypeObject *)waitrecord; /* never freed */
    if (PyModule_AddObject(m, "WaitRecord", Py_NewRef(waitrecord)) < 0) {
        Py_DECREF(waitrecord);
        goto fail;
    }
    PyObject *threadinfo = PyType_FromSpec(&threadinfo_spec);
    if (threadinfo == NULL) goto fail;
    g_threadinfo_type = (PyTypeObject *)threadinfo; /* never freed */
    if (PyModule_AddObject(m, "ThreadInfo", Py_NewRef(threadinfo)) < 0) {
        Py_DECREF(threadinfo);
        goto fail;
    }
    if (heldstack_ready(m) < 0) goto fail;
    if (poolcounters_ready(m) < 0) goto fail;
    if (beatcell_ready(m) < 0) goto fail;
    if (waitlock_ready(m) < 0) goto fail;
    if (lockref_ready(m) < 0) goto fail;
    if (run_index_ready(m) < 0) goto fail;
    if (queuemethod_ready(m) < 0) goto fail;
    PyObject *tracked = PyType_FromSpec(&tracked_spec);
    if (tracked == NULL) goto fail;
    g_tracked_type = (PyTypeObject *)tracked; /* never freed either */
    if (PyModule_AddObject(m, "Tracked", Py_NewRef(tracked)) < 0) {
        Py_DECREF(tracked);
        goto fail;
    }
    PyObject *aiolock = PyType_FromSpecWithBases(&aiolock_spec, tracked);
    if (aiolock == NULL) goto fail;
    g_aiolock_type = (PyTypeObject *)aiolock; /* never freed either */
    if (PyModule_AddObject(m, "AioLockFields", Py_NewRef(aiolock)) < 0) {
        Py_DECREF(aiolock);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
