/* conctools._ctracing: the per-call fast path of @traced in C.
 *
 * A traced call does little (read the parent span, take an id, set the span variable, note the
 * task when a loop runs here, read the clock twice, reset the variable, append a tuple to this
 * thread's chunk of spans), but as Python it costs a Python frame and a dozen bytecode-level
 * lookups: ~0.8 us on a bare call, ~1.8 us on an awaited coroutine. Here:
 *
 *   - TracedFunction is the wrapper of a sync function: a callable with the vectorcall protocol
 *     and the descriptor protocol of a function (it binds as a method), whose __dict__ takes what
 *     functools.wraps copies. No Python frame of its own: tracebacks show the user's frames only.
 *   - The same type wraps an async function; its calls return a TracedCoroutine: an awaitable that
 *     drives fn's coroutine through am_send (no Python frame, no wrapper coroutine) and records the
 *     span when it ends, the way the `async def` wrapper of the Python path does.
 *
 * Everything uncommon stays in Python and is called from here: logging (Traced._finish), argument
 * formatting (log_args), sealing a full chunk and feeding sinks (Recorder._after_span), creating a
 * thread's shard (Recorder._new_shard). The success path with logging below its level is the one
 * done here entirely, exactly as the inlined Python code does it (same tuple, same chunk).
 *
 * Observation never breaks the program: a bookkeeping failure (an Exception) is logged through
 * tracing._log_record_failure and swallowed; the user's result or exception always goes back
 * unchanged. As in the Python path, a KeyboardInterrupt or SystemExit raised by bookkeeping (only
 * Python code called from here can raise one) propagates.
 *
 * Built only for interpreters with a GIL (the one-entry shard cache relies on it); elsewhere, and
 * when CONCTOOLS_PURE_PYTHON=1, tracing.py uses its pure-Python path with the same behaviour.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <frameobject.h>
#include <limits.h>
#include <time.h>

#ifdef Py_GIL_DISABLED
#error "conctools._ctracing relies on the GIL; the pure-Python path is used instead"
#endif

#define API_VERSION 2

/* Set once by setup(), from conctools/tracing.py. */
static PyObject *g_span_var;       /* tracing._span_var (ContextVar) */
static PyObject *g_current;        /* recorder._current: [the current recorder] */
static PyObject *g_get_loop;       /* asyncio._get_running_loop */
static PyObject *g_current_task;   /* asyncio.current_task */
static PyObject *g_current_tasks;  /* asyncio.tasks._current_tasks (loop -> task), or NULL where it is not a dict */
static PyObject *g_sinks_anywhere; /* recorder._sinks_anywhere: [number of sinks of all recorders] */
static PyObject *g_cancelled;      /* asyncio.CancelledError */
static PyObject *g_log_failure;    /* tracing._log_record_failure(name, exc) */
static PyObject *g_format_args;    /* tracing._format_args(args, kwargs) */
static PyObject *g_mono;           /* time.monotonic_ns (where the clock is not read directly) */
static Py_ssize_t g_chunk_size = 256; /* recorder.SPAN_CHUNK */
static PyTypeObject *g_shard_type;  /* recorder._SpanShard */
static Py_ssize_t g_chunk_offset;   /* where its `chunk` slot lives (0: use getattr) */
static unsigned long long g_last_id; /* span ids: next_id() hands out g_last_id + 1 */

static PyObject *s_ok, *s_raised, *s_cancelled, *s_local, *s_shard, *s_new_shard, *s_chunk, *s_sinks,
    *s_after_span, *s_get_name, *s_dunder_qualname, *s_key, *s_dunder_name, *s_throw, *s_close, *s_cr_await,
    *s_cr_frame, *s_cr_running, *s_gi_code;
static PyObject *g_warn_unawaited; /* warnings._warn_unawaited_coroutine, or NULL */
static PyObject *g_getframe;       /* sys._getframe */
static Py_ssize_t g_sites_limit = 4096; /* note_site(): purge dead entries when the table reaches this */
static PyObject *g_zero;           /* 0 (CPython's small ints are shared: the count reads as this object when 0) */

/* The shard of the last (thread, recorder) pair that recorded a span: thread-state ids are never
 * reused, so a stale entry can never be taken for another thread's. A miss goes to the thread
 * state's dict, then to recorder._local.shard / recorder._new_shard() as the Python path does. */
static uint64_t c_tid;
static PyObject *c_rec;   /* strong */
static PyObject *c_shard; /* strong */

static PyTypeObject TracerType, TracedFunctionType, TracedCoroutineType;

/* -- small helpers --------------------------------------------------------------------- */

static inline int
now_ns(long long *out)
{
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) { /* what time.monotonic_ns() reads on Linux */
        *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return 0;
    }
#endif
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_MonotonicRaw(&t) == 0) {
        *out = (long long)t;
        return 0;
    }
    PyErr_Clear();
#endif
    PyObject *v = PyObject_CallNoArgs(g_mono);
    if (v == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
fetch_exc(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static void
restore_exc(PyObject *exc) /* steals exc */
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

/* A bookkeeping error is pending: log and swallow an Exception (0), keep anything else pending
 * (-1: a KeyboardInterrupt or SystemExit goes on to the caller, as in the Python path). */
static int
swallow(PyObject *name)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *exc = fetch_exc();
    if (g_log_failure != NULL && exc != NULL) {
        PyObject *r = PyObject_CallFunctionObjArgs(g_log_failure, name ? name : Py_None, exc, NULL);
        if (r == NULL) {
            PyErr_Clear(); /* logging itself failed: nothing more to do */
        }
        Py_XDECREF(r);
    }
    Py_XDECREF(exc);
    return 0;
}

/* asyncio._get_running_loop(): a METH_NOARGS builtin, called without the generic call machinery. */
static inline PyObject *
running_loop(void)
{
    if (PyCFunction_Check(g_get_loop) && PyCFunction_GET_FLAGS(g_get_loop) == METH_NOARGS) {
        return PyCFunction_GET_FUNCTION(g_get_loop)(PyCFunction_GET_SELF(g_get_loop), NULL);
    }
    return PyObject_CallNoArgs(g_get_loop);
}

/* The running task's name, or None (never fails: errors read as "no task"). */
static PyObject *
task_name_here(void)
{
    PyObject *loop = running_loop();
    if (loop == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (loop == Py_None) {
        return loop;
    }
    PyObject *task;
    if (g_current_tasks != NULL) { /* what current_task(loop) reads, without the call */
        task = PyDict_GetItemWithError(g_current_tasks, loop);
        if (task == NULL && !PyErr_Occurred()) {
            task = Py_None;
        }
        Py_XINCREF(task);
    }
    else {
        task = PyObject_CallOneArg(g_current_task, loop);
    }
    Py_DECREF(loop);
    if (task == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (task == Py_None) {
        return task;
    }
    PyObject *name = PyObject_CallMethodNoArgs(task, s_get_name);
    Py_DECREF(task);
    if (name == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return name;
}


/* -- SpanChunk: one chunk of raw spans, as C rows ------------------------------------------------
 *
 * The recorder keeps spans in chunks of SPAN_CHUNK rows, each row what a raw span tuple holds:
 * (start_ns, end_ns, name, span_id, parent_id, outcome, exc_type, task_name, args). As a list of
 * tuples, each span costs a tuple and two ints made on record, freed on eviction, and converted
 * back to C numbers by the fold. A SpanChunk keeps the two times as C integers and the rest as
 * references, and gives tuples back only to readers (indexing, slicing, iteration: snapshots).
 * It holds strings, ints and None only (append checks), so it can be in no reference cycle and
 * is not tracked by the garbage collector.
 */

typedef struct {
    long long start, end;
    PyObject *name, *span_id, *parent_id, *outcome, *exc_type, *task_name, *args;
} Row;

typedef struct {
    PyObject_HEAD
    Row *rows;
    Py_ssize_t len, cap;
} SpanChunkObject;

static PyTypeObject SpanChunkType;

static int
chunk_reserve(SpanChunkObject *c, Py_ssize_t need)
{
    if (need <= c->cap) {
        return 0;
    }
    Py_ssize_t cap = c->cap > 0 ? c->cap * 2 : 16;
    while (cap < need) {
        cap *= 2;
    }
    Row *rows = PyMem_Realloc(c->rows, (size_t)cap * sizeof(Row));
    if (rows == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->rows = rows;
    c->cap = cap;
    return 0;
}

static void
row_clear(Row *r)
{
    Py_XDECREF(r->name);
    Py_XDECREF(r->span_id);
    Py_XDECREF(r->parent_id);
    Py_XDECREF(r->outcome);
    Py_XDECREF(r->exc_type);
    Py_XDECREF(r->task_name);
    Py_XDECREF(r->args);
}

static void
row_incref(Row *r)
{
    Py_XINCREF(r->name);
    Py_XINCREF(r->span_id);
    Py_XINCREF(r->parent_id);
    Py_XINCREF(r->outcome);
    Py_XINCREF(r->exc_type);
    Py_XINCREF(r->task_name);
    Py_XINCREF(r->args);
}

/* A new tuple from a row (the row's references are borrowed). */
static PyObject *
row_tuple(const Row *r)
{
    PyObject *start = PyLong_FromLongLong(r->start);
    PyObject *end = PyLong_FromLongLong(r->end);
    PyObject *t = (start != NULL && end != NULL) ? PyTuple_New(9) : NULL;
    if (t == NULL) {
        Py_XDECREF(start);
        Py_XDECREF(end);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, start);
    PyTuple_SET_ITEM(t, 1, end);
    PyTuple_SET_ITEM(t, 2, Py_NewRef(r->name));
    PyTuple_SET_ITEM(t, 3, Py_NewRef(r->span_id));
    PyTuple_SET_ITEM(t, 4, Py_NewRef(r->parent_id));
    PyTuple_SET_ITEM(t, 5, Py_NewRef(r->outcome));
    PyTuple_SET_ITEM(t, 6, Py_NewRef(r->exc_type));
    PyTuple_SET_ITEM(t, 7, Py_NewRef(r->task_name));
    PyTuple_SET_ITEM(t, 8, Py_NewRef(r->args));
    return t;
}

static int
atomic(PyObject *o)
{
    return o == Py_None || PyUnicode_Check(o) || PyLong_Check(o);
}

static PyObject *
chunk_append(SpanChunkObject *self, PyObject *row)
{
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 9) {
        PyErr_SetString(PyExc_TypeError, "a span row is a tuple of 9 items");
        return NULL;
    }
    long long start = PyLong_AsLongLong(PyTuple_GET_ITEM(row, 0));
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long long end = PyLong_AsLongLong(PyTuple_GET_ITEM(row, 1));
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    for (Py_ssize_t i = 2; i < 9; i++) {
        if (!atomic(PyTuple_GET_ITEM(row, i))) {
            PyErr_Format(PyExc_TypeError, "span row item %zd must be a str, an int or None", i);
            return NULL;
        }
    }
    if (chunk_reserve(self, self->len + 1) < 0) {
        return NULL;
    }
    Row *r = &self->rows[self->len++];
    r->start = start;
    r->end = end;
    r->name = Py_NewRef(PyTuple_GET_ITEM(row, 2));
    r->span_id = Py_NewRef(PyTuple_GET_ITEM(row, 3));
    r->parent_id = Py_NewRef(PyTuple_GET_ITEM(row, 4));
    r->outcome = Py_NewRef(PyTuple_GET_ITEM(row, 5));
    r->exc_type = Py_NewRef(PyTuple_GET_ITEM(row, 6));
    r->task_name = Py_NewRef(PyTuple_GET_ITEM(row, 7));
    r->args = Py_NewRef(PyTuple_GET_ITEM(row, 8));
    Py_RETURN_NONE;
}

static PyObject *
chunk_clear_method(SpanChunkObject *self, PyObject *Py_UNUSED(ignored))
{
    /* Detach the rows first: freeing them cannot re-enter this chunk half-cleared. */
    Row *rows = self->rows;
    Py_ssize_t n = self->len;
    self->rows = NULL;
    self->len = self->cap = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        row_clear(&rows[i]);
    }
    PyMem_Free(rows);
    Py_RETURN_NONE;
}

static Py_ssize_t
chunk_length(SpanChunkObject *self)
{
    return self->len;
}

static PyObject *
chunk_item(SpanChunkObject *self, Py_ssize_t i)
{
    if (i < 0 || i >= self->len) {
        PyErr_SetString(PyExc_IndexError, "span chunk index out of range");
        return NULL;
    }
    Row copy = self->rows[i]; /* the row may move (another append) once Python code runs */
    row_incref(&copy);
    PyObject *t = row_tuple(&copy);
    row_clear(&copy);
    return t;
}

/* chunk[i] (negative too) and chunk[a:b:c] (a list of tuples: the copy readers take). */
static PyObject *
chunk_subscript(SpanChunkObject *self, PyObject *key)
{
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (i < 0) {
            i += self->len;
        }
        return chunk_item(self, i);
    }
    if (!PySlice_Check(key)) {
        PyErr_Format(PyExc_TypeError, "span chunk indices must be integers or slices, not %s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
        return NULL;
    }
    Py_ssize_t n = PySlice_AdjustIndices(self->len, &start, &stop, step);
    /* Take the rows (and references to their items) before allocating any tuple. */
    Row *taken = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(Row));
    if (taken == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0, i = start; k < n; k++, i += step) {
        taken[k] = self->rows[i];
        row_incref(&taken[k]);
    }
    PyObject *out = PyList_New(n);
    for (Py_ssize_t k = 0; k < n && out != NULL; k++) {
        PyObject *t = row_tuple(&taken[k]);
        if (t == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, t);
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        row_clear(&taken[k]);
    }
    PyMem_Free(taken);
    return out;
}

static void
chunk_dealloc(SpanChunkObject *self)
{
    for (Py_ssize_t i = 0; i < self->len; i++) {
        row_clear(&self->rows[i]);
    }
    PyMem_Free(self->rows);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
chunk_repr(SpanChunkObject *self)
{
    return PyUnicode_FromFormat("<SpanChunk of %zd spans>", self->len);
}

static PyMethodDef chunk_methods[] = {
    {"append", (PyCFunction)chunk_append, METH_O, "append(row): add a raw span tuple"},
    {"clear", (PyCFunction)chunk_clear_method, METH_NOARGS, "clear(): drop every span"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods chunk_as_sequence = {
    .sq_length = (lenfunc)chunk_length,
    .sq_item = (ssizeargfunc)chunk_item,
};

static PyMappingMethods chunk_as_mapping = {
    .mp_length = (lenfunc)chunk_length,
    .mp_subscript = (binaryfunc)chunk_subscript,
};

static PyTypeObject SpanChunkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conctools._ctracing.SpanChunk",
    .tp_basicsize = sizeof(SpanChunkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SpanChunk(): raw spans as C rows; reads as a sequence of the recorder's span tuples.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)chunk_dealloc,
    .tp_repr = (reprfunc)chunk_repr,
    .tp_as_sequence = &chunk_as_sequence,
    .tp_as_mapping = &chunk_as_mapping,
    .tp_methods = chunk_methods,
};

/* -- Tracer: what one @traced definition needs on every call ------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *name;   /* the span name */
    PyObject *finish; /* Traced._finish: the general (logging) path */
    PyObject *cache;  /* logger._cache when the silent success path may be taken, else NULL */
    PyObject *level;  /* the logging level (int) */
    int log_args;
} TracerObject;

/* One call's state between entering and leaving. */
typedef struct {
    PyObject *parent;    /* the enclosing span (or None) */
    PyObject *span_id;
    PyObject *token;     /* of the span variable's set(); NULL if setting failed */
    PyObject *task_name; /* or None */
    PyObject *args_text; /* or None */
    long long start;
} CallState;

static void
state_clear(CallState *st)
{
    Py_CLEAR(st->parent);
    Py_CLEAR(st->span_id);
    Py_CLEAR(st->token);
    Py_CLEAR(st->task_name);
    Py_CLEAR(st->args_text);
}

/* parent, id, set the span variable, the task; -1 with an exception set on failure (state cleared). */
static int
state_enter(TracerObject *tr, CallState *st, int with_task)
{
    st->parent = st->span_id = st->token = st->task_name = NULL;
    if (st->args_text == NULL) {
        st->args_text = Py_NewRef(Py_None);
    }
    if (PyContextVar_Get(g_span_var, NULL, &st->parent) < 0) {
        goto fail;
    }
    if (st->parent == NULL) {
        st->parent = Py_NewRef(Py_None);
    }
    st->span_id = PyLong_FromUnsignedLongLong(++g_last_id);
    if (st->span_id == NULL) {
        goto fail;
    }
    PyObject *mine = PyTuple_New(2);
    if (mine == NULL) {
        goto fail;
    }
    PyTuple_SET_ITEM(mine, 0, Py_NewRef(st->span_id));
    PyTuple_SET_ITEM(mine, 1, Py_NewRef(tr->name));
    st->token = PyContextVar_Set(g_span_var, mine);
    Py_DECREF(mine);
    if (st->token == NULL) {
        goto fail;
    }
    st->task_name = with_task ? task_name_here() : Py_NewRef(Py_None);
    return 0;
fail:
    state_clear(st);
    return -1;
}

/* Give the span variable back its value from before the call. If the token belongs to another
 * context (a coroutine driven from elsewhere), set the parent instead, as tracing._reset does. */
static void
state_reset(CallState *st)
{
    if (st->token == NULL) {
        return;
    }
    if (PyContextVar_Reset(g_span_var, st->token) < 0) {
        PyErr_Clear();
        PyObject *t = PyContextVar_Set(g_span_var, st->parent);
        if (t == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(t);
    }
    Py_CLEAR(st->token);
}

/* The shard of spans for this thread in recorder `rec` (a new reference) or NULL on error. */
static PyObject *
shard_of(PyObject *rec)
{
    uint64_t tid = PyThreadState_GetID(PyThreadState_Get());
    if (tid == c_tid && rec == c_rec) {
        return Py_NewRef(c_shard);
    }
    PyObject *tdict = PyThreadState_GetDict();
    PyObject *shard = NULL;
    if (tdict != NULL) {
        PyObject *entry = PyDict_GetItemWithError(tdict, s_key);
        if (entry != NULL && PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 2 &&
            PyTuple_GET_ITEM(entry, 0) == rec) {
            shard = Py_NewRef(PyTuple_GET_ITEM(entry, 1));
        }
        else if (entry == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (shard == NULL) {
        PyObject *local = PyObject_GetAttr(rec, s_local);
        if (local == NULL) {
            return NULL;
        }
        shard = PyObject_GetAttr(local, s_shard);
        Py_DECREF(local);
        if (shard == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return NULL;
            }
            PyErr_Clear();
            shard = PyObject_CallMethodNoArgs(rec, s_new_shard);
            if (shard == NULL) {
                return NULL;
            }
        }
        if (tdict != NULL) {
            PyObject *entry = PyTuple_Pack(2, rec, shard);
            if (entry == NULL || PyDict_SetItem(tdict, s_key, entry) < 0) {
                Py_XDECREF(entry);
                Py_DECREF(shard);
                return NULL;
            }
            Py_DECREF(entry);
        }
    }
    PyObject *old_rec = c_rec, *old_shard = c_shard;
    c_tid = tid;
    c_rec = Py_NewRef(rec);
    c_shard = Py_NewRef(shard);
    Py_XDECREF(old_rec); /* may run finalizers (and traced calls): the cache is already consistent */
    Py_XDECREF(old_shard);
    return shard;
}

/* Recorder.record_span's success case, inlined (the same tuple into the same chunk). 0 / -1. */
static int
record_ok(PyObject *name, CallState *st, long long end)
{
    PyObject *rec = PyList_GET_SIZE(g_current) > 0 ? PyList_GET_ITEM(g_current, 0) : NULL;
    if (rec == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no current recorder");
        return -1;
    }
    Py_INCREF(rec);
    int rc = -1;
    PyObject *shard = shard_of(rec);
    if (shard == NULL) {
        goto done;
    }
    PyObject *chunk;
    if (Py_TYPE(shard) == g_shard_type && g_chunk_offset > 0) {
        /* The slot read that getattr would do, without the lookups. */
        chunk = *(PyObject **)((char *)shard + g_chunk_offset);
        if (chunk == NULL) {
            PyErr_SetString(PyExc_AttributeError, "chunk");
        }
        Py_XINCREF(chunk);
    }
    else {
        chunk = PyObject_GetAttr(shard, s_chunk);
    }
    if (chunk == NULL) {
        Py_DECREF(shard);
        goto done;
    }
    PyObject *parent_id;
    if (Py_IS_TYPE(chunk, &SpanChunkType) && (st->parent == Py_None || PyTuple_CheckExact(st->parent))) {
        /* The row, without a tuple or two ints. */
        SpanChunkObject *c = (SpanChunkObject *)chunk;
        if (chunk_reserve(c, c->len + 1) < 0) {
            Py_DECREF(chunk);
            Py_DECREF(shard);
            goto done;
        }
        Row *r = &c->rows[c->len++];
        r->start = st->start;
        r->end = end;
        r->name = Py_NewRef(name);
        r->span_id = Py_NewRef(st->span_id);
        r->parent_id = Py_NewRef(st->parent == Py_None || PyTuple_GET_SIZE(st->parent) == 0
                                     ? Py_None
                                     : PyTuple_GET_ITEM(st->parent, 0));
        r->outcome = Py_NewRef(s_ok);
        r->exc_type = Py_NewRef(Py_None);
        r->task_name = Py_NewRef(st->task_name);
        r->args = Py_NewRef(Py_None);
        goto appended;
    }
    if (PyTuple_Check(st->parent) && PyTuple_GET_SIZE(st->parent) > 0) {
        parent_id = Py_NewRef(PyTuple_GET_ITEM(st->parent, 0));
    }
    else {
        int truth = PyObject_IsTrue(st->parent);
        parent_id = truth > 0 ? PySequence_GetItem(st->parent, 0) : (truth == 0 ? Py_NewRef(Py_None) : NULL);
    }
    PyObject *row = NULL;
    if (parent_id != NULL && (row = PyTuple_New(9)) != NULL) {
        PyObject *start_o = PyLong_FromLongLong(st->start);
        PyObject *end_o = PyLong_FromLongLong(end);
        PyTuple_SET_ITEM(row, 0, start_o);
        PyTuple_SET_ITEM(row, 1, end_o);
        PyTuple_SET_ITEM(row, 2, Py_NewRef(name));
        PyTuple_SET_ITEM(row, 3, Py_NewRef(st->span_id));
        PyTuple_SET_ITEM(row, 4, Py_NewRef(parent_id));
        PyTuple_SET_ITEM(row, 5, Py_NewRef(s_ok));
        PyTuple_SET_ITEM(row, 6, Py_NewRef(Py_None));
        PyTuple_SET_ITEM(row, 7, Py_NewRef(st->task_name));
        PyTuple_SET_ITEM(row, 8, Py_NewRef(Py_None));
        if (start_o == NULL || end_o == NULL) {
            Py_CLEAR(row);
        }
        else {
            /* Ints, strings and None only: it can be in no cycle, so the collector need not
             * visit it (it would untrack it at its first collection; the recorder keeps many). */
            PyObject_GC_UnTrack(row);
        }
    }
    Py_XDECREF(parent_id);
    if (row == NULL || PyList_Append(chunk, row) < 0) {
        Py_XDECREF(row);
        Py_DECREF(chunk);
        Py_DECREF(shard);
        goto done;
    }
    Py_DECREF(row);
appended:;
    Py_ssize_t n = PyList_Check(chunk) ? PyList_GET_SIZE(chunk) : PyObject_Length(chunk);
    Py_DECREF(chunk);
    if (n < 0) {
        Py_DECREF(shard);
        goto done;
    }
    int more = n >= g_chunk_size;
    if (!more && PyList_GET_SIZE(g_sinks_anywhere) > 0 && PyList_GET_ITEM(g_sinks_anywhere, 0) != g_zero) {
        more = PyObject_IsTrue(PyList_GET_ITEM(g_sinks_anywhere, 0)); /* any sinks at all? (an int) */
        if (more < 0) {
            Py_DECREF(shard);
            goto done;
        }
    }
    if (more && n < g_chunk_size) {
        PyObject *sinks = PyObject_GetAttr(rec, s_sinks);
        if (sinks == NULL) {
            Py_DECREF(shard);
            goto done;
        }
        more = PyObject_IsTrue(sinks);
        Py_DECREF(sinks);
        if (more < 0) {
            Py_DECREF(shard);
            goto done;
        }
    }
    if (more) {
        PyObject *r = PyObject_CallMethodOneArg(rec, s_after_span, shard);
        if (r == NULL) {
            Py_DECREF(shard);
            goto done;
        }
        Py_DECREF(r);
    }
    Py_DECREF(shard);
    rc = 0;
done:
    Py_DECREF(rec);
    return rc;
}

/* Record the end of a call. exc: the exception that ended it, or NULL for a success.
 * 0 done (any bookkeeping Exception logged), -1 a KeyboardInterrupt/SystemExit is pending. */
static int
state_leave(TracerObject *tr, CallState *st, long long end, PyObject *exc)
{
    if (exc == NULL && tr->cache != NULL &&
        (st->args_text == Py_None || (PyUnicode_Check(st->args_text) && PyUnicode_GET_LENGTH(st->args_text) == 0))) {
        PyObject *enabled = PyDict_GetItemWithError(tr->cache, tr->level);
        if (enabled == Py_False) {
            if (record_ok(tr->name, st, end) < 0) {
                return swallow(tr->name);
            }
            return 0;
        }
        if (enabled == NULL && PyErr_Occurred()) {
            PyErr_Clear();
        }
    }
    PyObject *outcome = s_ok, *exc_type = Py_None;
    PyObject *qualname = NULL;
    if (exc != NULL) {
        int cancelled = PyObject_IsInstance(exc, g_cancelled);
        if (cancelled < 0) {
            PyErr_Clear();
            cancelled = 0;
        }
        if (cancelled) {
            outcome = s_cancelled;
        }
        else {
            outcome = s_raised;
            qualname = PyObject_GetAttr((PyObject *)Py_TYPE(exc), s_dunder_qualname);
            if (qualname == NULL) {
                PyErr_Clear();
                qualname = PyUnicode_FromString(Py_TYPE(exc)->tp_name);
                if (qualname == NULL) {
                    PyErr_Clear();
                }
            }
            if (qualname != NULL) {
                exc_type = qualname;
            }
        }
    }
    PyObject *start_o = PyLong_FromLongLong(st->start);
    PyObject *end_o = PyLong_FromLongLong(end);
    PyObject *r = NULL;
    if (start_o != NULL && end_o != NULL) {
        PyObject *args[8] = {st->span_id, st->parent, start_o, end_o, outcome, exc_type, st->task_name, st->args_text};
        r = PyObject_Vectorcall(tr->finish, args, 8, NULL);
    }
    Py_XDECREF(start_o);
    Py_XDECREF(end_o);
    Py_XDECREF(qualname);
    if (r == NULL) {
        return swallow(tr->name);
    }
    Py_DECREF(r);
    return 0;
}

static int
tracer_init(TracerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "finish", "cache", "level", "log_args", NULL};
    PyObject *name, *finish, *cache, *level;
    int log_args;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOp:Tracer", kwlist, &name, &finish, &cache, &level, &log_args)) {
        return -1;
    }
    if (cache != Py_None && !PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a dict or None");
        return -1;
    }
    Py_XSETREF(self->name, Py_NewRef(name));
    Py_XSETREF(self->finish, Py_NewRef(finish));
    Py_XSETREF(self->cache, cache == Py_None ? NULL : Py_NewRef(cache));
    Py_XSETREF(self->level, Py_NewRef(level));
    self->log_args = log_args;
    return 0;
}

static int
tracer_traverse(TracerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->finish);
    Py_VISIT(self->cache);
    Py_VISIT(self->level);
    return 0;
}

static int
tracer_clear(TracerObject *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->finish);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->level);
    return 0;
}

static void
tracer_dealloc(TracerObject *self)
{
    PyObject_GC_UnTrack(self);
    tracer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
tracer_ready(TracerObject *self)
{
    if (self->name == NULL || self->finish == NULL || self->level == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools Tracer used before __init__");
        return -1;
    }
    if (g_span_var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools._ctracing.setup() was not called");
        return -1;
    }
    return 0;
}

/* -- TracedFunction: the sync wrapper --------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    TracerObject *tracer;
    PyObject *fn;
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
} TracedFunctionObject;

static PyObject *
args_text_of(PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *tuple = PyTuple_New(nargs);
    PyObject *kwargs = PyDict_New();
    PyObject *text = NULL;
    if (tuple != NULL && kwargs != NULL) {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
        }
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        int ok = 1;
        for (Py_ssize_t i = 0; i < nkw && ok; i++) {
            ok = PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) == 0;
        }
        if (ok) {
            text = PyObject_CallFunctionObjArgs(g_format_args, tuple, kwargs, NULL);
        }
    }
    Py_XDECREF(tuple);
    Py_XDECREF(kwargs);
    return text;
}

static PyObject *
tf_vectorcall(TracedFunctionObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    TracerObject *tr = self->tracer;
    CallState st;
    st.args_text = NULL;
    if (tr->log_args) {
        st.args_text = args_text_of(args, nargsf, kwnames);
        if (st.args_text == NULL) {
            if (swallow(tr->name) < 0) {
                return NULL;
            }
            st.args_text = Py_NewRef(Py_None);
        }
    }
    if (state_enter(tr, &st, 1) < 0 || now_ns(&st.start) < 0) {
        /* Bookkeeping failed before the call: the call still happens, untraced. */
        state_reset(&st);
        state_clear(&st);
        if (swallow(tr->name) < 0) {
            return NULL;
        }
        return PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    }
    PyObject *result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    long long end;
    if (now_ns(&end) < 0) {
        end = st.start;
    }
    if (result == NULL) {
        PyObject *exc = fetch_exc();
        state_reset(&st);
        if (exc == NULL) { /* NULL without an exception: a broken callable; let CPython say so */
            state_clear(&st);
            return NULL;
        }
        if (state_leave(tr, &st, end, exc) < 0) {
            /* A KeyboardInterrupt/SystemExit from the logging path replaces the user's exception,
             * which becomes its __context__, as in the Python path. */
            PyObject *other = fetch_exc();
            if (other != NULL) {
                PyException_SetContext(other, exc);
                restore_exc(other);
            }
            else {
                restore_exc(exc);
            }
        }
        else {
            restore_exc(exc);
        }
        state_clear(&st);
        return NULL;
    }
    state_reset(&st);
    int rc = state_leave(tr, &st, end, NULL);
    state_clear(&st);
    if (rc < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
tracer_wrap(TracerObject *self, PyObject *fn)
{
    if (tracer_ready(self) < 0) {
        return NULL;
    }
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "traced() wraps functions, not %s", Py_TYPE(fn)->tp_name);
        return NULL;
    }
    TracedFunctionObject *tf = PyObject_GC_New(TracedFunctionObject, &TracedFunctionType);
    if (tf == NULL) {
        return NULL;
    }
    tf->tracer = (TracerObject *)Py_NewRef(self);
    tf->fn = Py_NewRef(fn);
    tf->dict = NULL;
    tf->weakreflist = NULL;
    tf->vectorcall = (vectorcallfunc)tf_vectorcall;
    PyObject_GC_Track(tf);
    return (PyObject *)tf;
}

static PyObject *
tf_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *
tf_attr_or(TracedFunctionObject *self, PyObject *attr, PyObject *fallback)
{
    if (self->dict != NULL) {
        PyObject *v = PyDict_GetItemWithError(self->dict, attr);
        if (v != NULL && PyUnicode_Check(v)) {
            return Py_NewRef(v);
        }
        PyErr_Clear();
    }
    return Py_NewRef(fallback);
}

static PyObject *
tf_repr(TracedFunctionObject *self)
{
    PyObject *name = tf_attr_or(self, s_dunder_qualname, self->tracer->name);
    PyObject *r = PyUnicode_FromFormat("<function %U at %p>", name, self);
    Py_DECREF(name);
    return r;
}

/* Pickled by reference, like a function: module + qualified name. */
static PyObject *
tf_reduce(TracedFunctionObject *self, PyObject *Py_UNUSED(ignored))
{
    return tf_attr_or(self, s_dunder_qualname, self->tracer->name);
}

static int
tf_traverse(TracedFunctionObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tracer);
    Py_VISIT(self->fn);
    Py_VISIT(self->dict);
    return 0;
}

static int
tf_clear(TracedFunctionObject *self)
{
    Py_CLEAR(self->tracer);
    Py_CLEAR(self->fn);
    Py_CLEAR(self->dict);
    return 0;
}

static void
tf_dealloc(TracedFunctionObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    tf_clear(self);
    PyObject_GC_Del(self);
}

static PyMethodDef tf_methods[] = {
    {"__reduce__", (PyCFunction)tf_reduce, METH_NOARGS, "pickled by reference, like the function it wraps"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tf_members[] = {
    {"_ct_fn", T_OBJECT, offsetof(TracedFunctionObject, fn), READONLY, "the wrapped callable"},
    {NULL},
};

static PyGetSetDef tf_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject TracedFunctionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conctools._ctracing.TracedFunction",
    .tp_basicsize = sizeof(TracedFunctionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A sync function wrapped by @traced (made by Tracer.wrap()).",
    .tp_dealloc = (destructor)tf_dealloc,
    .tp_vectorcall_offset = offsetof(TracedFunctionObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)tf_repr,
    .tp_traverse = (traverseproc)tf_traverse,
    .tp_clear = (inquiry)tf_clear,
    .tp_weaklistoffset = offsetof(TracedFunctionObject, weakreflist),
    .tp_dictoffset = offsetof(TracedFunctionObject, dict),
    .tp_descr_get = tf_descr_get,
    .tp_methods = tf_methods,
    .tp_members = tf_members,
    .tp_getset = tf_getset,
};


/* -- TracedCoroutine: what calling an async traced function returns ------------------------------
 *
 * An awaitable that behaves as the coroutine of the `async def` wrapper it replaces:
 *
 *     async def traced_coro(*args, **kwargs):
 *         span = enter()                         # on the first send, in the awaiting task
 *         try:
 *             result = await fn(*args, **kwargs)
 *         except BaseException as exc:
 *             span.fail(exc)
 *             raise
 *         span.ok()
 *         return result
 *
 * but without a Python frame: send/throw/close go straight to fn's coroutine (am_send, so an
 * `await` and a Task drive it at C speed). Like that wrapper, fn is called on the first send, not
 * when the traced function is called. For introspection it shows fn's coroutine: cr_frame and
 * cr_await are those of fn's coroutine (task stacks and await chains look as without @traced).
 */

enum { CO_CREATED = 0, CO_STARTED = 1, CO_DONE = 2 };

typedef struct {
    PyObject_HEAD
    TracedFunctionObject *func; /* the traced async function: its tracer, fn and __dict__ */
    PyObject *args;             /* positional then keyword values, until the first send */
    PyObject *kwnames;
    Py_ssize_t nargs;
    PyObject *inner;            /* the iterator of fn's awaitable, once started */
    CallState st;
    char state;
    char running;
    char traced;                /* 0 when bookkeeping failed at the start: nothing to record */
    PyObject *weakreflist;
} TracedCoroutineObject;

static int
is_iterable_coroutine(PyObject *o)
{
    if (!PyGen_CheckExact(o)) {
        return 0;
    }
    PyObject *code = PyObject_GetAttr(o, s_gi_code);
    if (code == NULL) {
        PyErr_Clear();
        return 0;
    }
    int yes = PyCode_Check(code) && (((PyCodeObject *)code)->co_flags & CO_ITERABLE_COROUTINE);
    Py_DECREF(code);
    return yes;
}

/* What `await o` iterates over (the checks and errors of CPython's GET_AWAITABLE). */
static PyObject *
awaitable_iter(PyObject *o)
{
    if (PyCoro_CheckExact(o) || is_iterable_coroutine(o)) {
        return Py_NewRef(o);
    }
    unaryfunc getter = Py_TYPE(o)->tp_as_async != NULL ? Py_TYPE(o)->tp_as_async->am_await : NULL;
    if (getter == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression", Py_TYPE(o)->tp_name);
        return NULL;
    }
    PyObject *res = getter(o);
    if (res == NULL) {
        return NULL;
    }
    if (PyCoro_CheckExact(res) || is_iterable_coroutine(res)) {
        PyErr_SetString(PyExc_TypeError, "__await__() returned a coroutine");
        Py_DECREF(res);
        return NULL;
    }
    if (!PyIter_Check(res)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'", Py_TYPE(res)->tp_name);
        Py_DECREF(res);
        return NULL;
    }
    return res;
}

/* The call ended (exc NULL: returned). Records it; -1 when a KeyboardInterrupt/SystemExit from the
 * logging path is pending (it replaces the outcome, with exc as its __context__). */
static int
co_end(TracedCoroutineObject *self, PyObject *exc)
{
    long long end;
    if (now_ns(&end) < 0) {
        PyErr_Clear();
        end = self->st.start;
    }
    self->state = CO_DONE;
    Py_CLEAR(self->inner);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwnames);
    int rc = 0;
    if (self->traced) {
        state_reset(&self->st);
        rc = state_leave(self->func->tracer, &self->st, end, exc);
        state_clear(&self->st);
        self->traced = 0;
    }
    return rc;
}

/* Ends the call with the pending exception; always returns PYGEN_ERROR with an exception set. */
static PySendResult
co_fail(TracedCoroutineObject *self)
{
    PyObject *exc = fetch_exc();
    if (exc == NULL) {
        PyErr_SetString(PyExc_SystemError, "error return without exception set");
        exc = fetch_exc();
    }
    if (co_end(self, exc) < 0) {
        PyObject *other = fetch_exc();
        if (other != NULL) {
            PyException_SetContext(other, exc); /* steals exc */
            restore_exc(other);
            return PYGEN_ERROR;
        }
    }
    restore_exc(exc);
    return PYGEN_ERROR;
}

/* First send: enter the span and call fn (in the awaiting task, as the async def wrapper did). */
static int
co_start(TracedCoroutineObject *self)
{
    TracerObject *tr = self->func->tracer;
    PyObject *const *argv = &PyTuple_GET_ITEM(self->args, 0);
    self->st.args_text = NULL;
    if (tr->log_args) {
        self->st.args_text = args_text_of(argv, (size_t)self->nargs, self->kwnames);
        if (self->st.args_text == NULL) {
            if (swallow(tr->name) < 0) {
                self->state = CO_DONE;
                return -1;
            }
            self->st.args_text = Py_NewRef(Py_None);
        }
    }
    self->traced = 1;
    if (state_enter(tr, &self->st, 1) < 0 || now_ns(&self->st.start) < 0) {
        state_reset(&self->st);
        state_clear(&self->st);
        self->traced = 0;
        if (swallow(tr->name) < 0) {
            self->state = CO_DONE;
            return -1;
        }
    }
    self->state = CO_STARTED;
    PyObject *awaitable = PyObject_Vectorcall(self->func->fn, argv, (size_t)self->nargs, self->kwnames);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwnames);
    if (awaitable != NULL) {
        self->inner = awaitable_iter(awaitable);
        Py_DECREF(awaitable);
    }
    if (self->inner == NULL) {
        co_fail(self);
        return -1;
    }
    return 0;
}

/* What fn's coroutine did on a send or a throw, as the result of ours. */
static PySendResult
co_after(TracedCoroutineObject *self, PySendResult r, PyObject *res, PyObject **presult)
{
    if (r == PYGEN_NEXT) {
        *presult = res;
        return PYGEN_NEXT;
    }
    if (r == PYGEN_RETURN) {
        if (co_end(self, NULL) < 0) {
            Py_DECREF(res);
            *presult = NULL;
            return PYGEN_ERROR;
        }
        *presult = res;
        return PYGEN_RETURN;
    }
    *presult = NULL;
    return co_fail(self);
}

static int
co_check_runnable(TracedCoroutineObject *self)
{
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return -1;
    }
    return 0;
}

static PySendResult
co_send_impl(TracedCoroutineObject *self, PyObject *arg, PyObject **presult)
{
    *presult = NULL;
    if (co_check_runnable(self) < 0) {
        return PYGEN_ERROR;
    }
    if (self->state == CO_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    self->running = 1;
    if (self->state == CO_CREATED) {
        if (arg != Py_None) {
            self->running = 0;
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        if (co_start(self) < 0) {
            self->running = 0;
            return PYGEN_ERROR;
        }
    }
    PyObject *res = NULL;
    PySendResult r = PyIter_Send(self->inner, arg, &res);
    self->running = 0;
    return co_after(self, r, res, presult);
}

static PySendResult
co_am_send(PyObject *self, PyObject *arg, PyObject **presult)
{
    return co_send_impl((TracedCoroutineObject *)self, arg, presult);
}

/* A return of the coroutine, as the method API reports it: StopIteration(value). */
static PyObject *
raise_stop(PyObject *value)
{
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
co_iternext(TracedCoroutineObject *self)
{
    PyObject *res;
    PySendResult r = co_send_impl(self, Py_None, &res);
    if (r == PYGEN_NEXT) {
        return res;
    }
    if (r == PYGEN_RETURN) {
        if (res == Py_None) { /* exhausted: no StopIteration needed */
            Py_DECREF(res);
            return NULL;
        }
        return raise_stop(res);
    }
    return NULL;
}

static PyObject *
co_send(TracedCoroutineObject *self, PyObject *arg)
{
    PyObject *res;
    PySendResult r = co_send_impl(self, arg, &res);
    if (r == PYGEN_NEXT) {
        return res;
    }
    if (r == PYGEN_RETURN) {
        return raise_stop(res);
    }
    return NULL;
}

/* Raise `typ(val)` with traceback tb as the throw() arguments describe (PyErr_Restore semantics). */
static void
raise_thrown(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : NULL;
    PyObject *tb = nargs > 2 ? args[2] : NULL;
    if (val == Py_None) {
        val = NULL;
    }
    if (tb == Py_None) {
        tb = NULL;
    }
    if (PyExceptionInstance_Check(typ)) {
        if (val != NULL) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return;
        }
        PyObject *inst_tb = tb != NULL ? Py_NewRef(tb) : PyException_GetTraceback(typ);
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(typ)), Py_NewRef(typ), inst_tb);
        return;
    }
    if (!PyExceptionClass_Check(typ)) {
        PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException, not %s",
                     Py_TYPE(typ)->tp_name);
        return;
    }
    PyObject *t = Py_NewRef(typ), *v = Py_XNewRef(val), *b = Py_XNewRef(tb);
    PyErr_NormalizeException(&t, &v, &b);
    if (b != NULL && v != NULL) {
        PyException_SetTraceback(v, b);
    }
    PyErr_Restore(t, v, b);
}

static PyObject *
co_throw_impl(TracedCoroutineObject *self, PyObject *const *args, Py_ssize_t nargs, PySendResult *kind)
{
    *kind = PYGEN_ERROR;
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument, got %zd", nargs);
        return NULL;
    }
    if (co_check_runnable(self) < 0) {
        return NULL;
    }
    if (self->state != CO_STARTED) { /* not started (it never will be) or finished: raise it here */
        self->state = CO_DONE;
        Py_CLEAR(self->args);
        Py_CLEAR(self->kwnames);
        raise_thrown(args, nargs);
        return NULL;
    }
    PyObject *res = NULL;
    self->running = 1;
    if (PyErr_GivenExceptionMatches(args[0], PyExc_GeneratorExit)) {
        /* As `await` does: close the inner coroutine, then raise GeneratorExit at the await. */
        PyObject *r = PyObject_CallMethodNoArgs(self->inner, s_close);
        if (r == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            r = Py_NewRef(Py_None);
        }
        self->running = 0;
        if (r == NULL) {
            co_fail(self);
            return NULL;
        }
        Py_DECREF(r);
        raise_thrown(args, nargs);
        co_fail(self);
        return NULL;
    }
    PyObject *meth = PyObject_GetAttr(self->inner, s_throw);
    if (meth == NULL) {
        self->running = 0;
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            co_fail(self);
            return NULL;
        }
        PyErr_Clear(); /* no throw(): the exception is raised at the await */
        raise_thrown(args, nargs);
        co_fail(self);
        return NULL;
    }
    res = PyObject_Vectorcall(meth, args, (size_t)nargs, NULL);
    Py_DECREF(meth);
    self->running = 0;
    if (res != NULL) {
        *kind = PYGEN_NEXT;
        return res;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) { /* the inner coroutine returned */
        PyObject *stop = fetch_exc();
        PyObject *value = stop != NULL ? PyObject_GetAttrString(stop, "value") : NULL;
        Py_XDECREF(stop);
        if (value == NULL) {
            co_fail(self);
            return NULL;
        }
        PyObject *out;
        *kind = co_after(self, PYGEN_RETURN, value, &out);
        return out;
    }
    co_fail(self);
    return NULL;
}

static PyObject *
co_throw(TracedCoroutineObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PySendResult kind;
    PyObject *res = co_throw_impl(self, args, nargs, &kind);
    if (kind == PYGEN_RETURN) {
        return raise_stop(res);
    }
    return res;
}

static PyObject *
co_close(TracedCoroutineObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->state != CO_STARTED) {
        if (co_check_runnable(self) < 0) {
            return NULL;
        }
        self->state = CO_DONE;
        Py_CLEAR(self->args);
        Py_CLEAR(self->kwnames);
        Py_RETURN_NONE;
    }
    PyObject *args[1] = {PyExc_GeneratorExit};
    PySendResult kind;
    PyObject *res = co_throw_impl(self, args, 1, &kind);
    if (res != NULL) {
        Py_DECREF(res);
        if (kind == PYGEN_RETURN) {
            Py_RETURN_NONE;
        }
        PyErr_SetString(PyExc_RuntimeError, "coroutine ignored GeneratorExit");
        return NULL;
    }
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit) || PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

static PyObject *
co_await(PyObject *self)
{
    return Py_NewRef(self);
}

static void
co_finalize(TracedCoroutineObject *self)
{
    if (self->state == CO_DONE) {
        return;
    }
    PyObject *saved = fetch_exc();
    if (self->state == CO_CREATED) {
        self->state = CO_DONE;
        if (g_warn_unawaited != NULL) { /* what CPython says of a coroutine that was never awaited */
            PyObject *r = PyObject_CallOneArg(g_warn_unawaited, (PyObject *)self);
            if (r == NULL) {
                PyErr_WriteUnraisable((PyObject *)self);
            }
            Py_XDECREF(r);
        }
    }
    else {
        PyObject *r = co_close(self, NULL);
        if (r == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(r);
    }
    if (saved != NULL) {
        restore_exc(saved);
    }
}

static int
co_traverse(TracedCoroutineObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->func);
    Py_VISIT(self->args);
    Py_VISIT(self->kwnames);
    Py_VISIT(self->inner);
    Py_VISIT(self->st.parent);
    Py_VISIT(self->st.span_id);
    Py_VISIT(self->st.token);
    Py_VISIT(self->st.task_name);
    Py_VISIT(self->st.args_text);
    return 0;
}

static int
co_clear(TracedCoroutineObject *self)
{
    Py_CLEAR(self->func);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwnames);
    Py_CLEAR(self->inner);
    state_clear(&self->st);
    return 0;
}

static void
co_dealloc(TracedCoroutineObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return; /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    co_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
co_func_attr(TracedCoroutineObject *self, PyObject *attr)
{
    if (self->func == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *fallback = self->func->tracer != NULL ? self->func->tracer->name : Py_None;
    return tf_attr_or(self->func, attr, fallback);
}

static PyObject *
co_get_qualname(TracedCoroutineObject *self, void *closure)
{
    return co_func_attr(self, s_dunder_qualname);
}

static PyObject *
co_get_name(TracedCoroutineObject *self, void *closure)
{
    return co_func_attr(self, s_dunder_name);
}

/* fn's coroutine, while it runs, or NULL (no exception) */
static PyObject *
co_live_inner(TracedCoroutineObject *self)
{
    return self->state == CO_STARTED ? self->inner : NULL;
}

static PyObject *
co_get_cr_frame(TracedCoroutineObject *self, void *closure)
{
    PyObject *inner = co_live_inner(self);
    if (inner == NULL || !PyCoro_CheckExact(inner)) {
        Py_RETURN_NONE;
    }
    return PyObject_GetAttr(inner, s_cr_frame);
}

static PyObject *
co_get_cr_await(TracedCoroutineObject *self, void *closure)
{
    PyObject *inner = co_live_inner(self);
    if (inner == NULL) {
        Py_RETURN_NONE;
    }
    if (PyCoro_CheckExact(inner)) {
        return PyObject_GetAttr(inner, s_cr_await); /* we stand for fn's coroutine itself */
    }
    return Py_NewRef(inner);
}

static PyObject *
co_get_cr_running(TracedCoroutineObject *self, void *closure)
{
    PyObject *inner = co_live_inner(self);
    if (self->running) {
        Py_RETURN_TRUE;
    }
    if (inner != NULL && PyCoro_CheckExact(inner)) {
        return PyObject_GetAttr(inner, s_cr_running);
    }
    Py_RETURN_FALSE;
}

static PyObject *
co_get_cr_suspended(TracedCoroutineObject *self, void *closure)
{
    return PyBool_FromLong(self->state == CO_STARTED && !self->running);
}

static PyObject *
co_get_cr_code(TracedCoroutineObject *self, void *closure)
{
    PyObject *fn = self->func != NULL ? self->func->fn : NULL;
    PyObject *code = fn != NULL && PyFunction_Check(fn) ? PyFunction_GetCode(fn) : NULL;
    return Py_NewRef(code != NULL ? code : Py_None);
}

static PyObject *
co_get_none(PyObject *self, void *closure)
{
    Py_RETURN_NONE;
}

static PyObject *
co_repr(TracedCoroutineObject *self)
{
    PyObject *name = co_get_qualname(self, NULL);
    if (name == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("<coroutine object %S at %p>", name, self);
    Py_DECREF(name);
    return r;
}

static PyMethodDef co_methods[] = {
    {"send", (PyCFunction)co_send, METH_O, "send(value): resume the coroutine"},
    {"throw", (PyCFunction)(void (*)(void))co_throw, METH_FASTCALL, "throw(exc): raise exc at the await"},
    {"close", (PyCFunction)co_close, METH_NOARGS, "close(): raise GeneratorExit at the await"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef co_getset[] = {
    {"__name__", (getter)co_get_name, NULL, NULL, NULL},
    {"__qualname__", (getter)co_get_qualname, NULL, NULL, NULL},
    {"cr_frame", (getter)co_get_cr_frame, NULL, "the frame of the traced function's coroutine", NULL},
    {"cr_await", (getter)co_get_cr_await, NULL, "what the traced function's coroutine awaits", NULL},
    {"cr_running", (getter)co_get_cr_running, NULL, NULL, NULL},
    {"cr_suspended", (getter)co_get_cr_suspended, NULL, NULL, NULL},
    {"cr_code", (getter)co_get_cr_code, NULL, "the traced function's code", NULL},
    {"cr_origin", (getter)co_get_none, NULL, NULL, NULL},
    {NULL},
};

static PyAsyncMethods co_as_async = {
    .am_await = co_await,
    .am_send = co_am_send,
};

static PyTypeObject TracedCoroutineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conctools._ctracing.TracedCoroutine",
    .tp_basicsize = sizeof(TracedCoroutineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The coroutine of a traced async function: fn's coroutine, inside a span.",
    .tp_dealloc = (destructor)co_dealloc,
    .tp_finalize = (destructor)co_finalize,
    .tp_as_async = &co_as_async,
    .tp_repr = (reprfunc)co_repr,
    .tp_traverse = (traverseproc)co_traverse,
    .tp_clear = (inquiry)co_clear,
    .tp_weaklistoffset = offsetof(TracedCoroutineObject, weakreflist),
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)co_iternext,
    .tp_methods = co_methods,
    .tp_getset = co_getset,
};

static PyObject *
tcf_vectorcall(TracedFunctionObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *argv = PyTuple_New(nargs + nkw);
    if (argv == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        PyTuple_SET_ITEM(argv, i, Py_NewRef(args[i]));
    }
    TracedCoroutineObject *co = PyObject_GC_New(TracedCoroutineObject, &TracedCoroutineType);
    if (co == NULL) {
        Py_DECREF(argv);
        return NULL;
    }
    co->func = (TracedFunctionObject *)Py_NewRef(self);
    co->args = argv;
    co->kwnames = nkw > 0 ? Py_NewRef(kwnames) : NULL;
    co->nargs = nargs;
    co->inner = NULL;
    co->st.parent = co->st.span_id = co->st.token = co->st.task_name = co->st.args_text = NULL;
    co->state = CO_CREATED;
    co->running = 0;
    co->traced = 0;
    co->weakreflist = NULL;
    PyObject_GC_Track(co);
    return (PyObject *)co;
}

static PyObject *
tracer_wrap_async(TracerObject *self, PyObject *fn)
{
    TracedFunctionObject *tf = (TracedFunctionObject *)tracer_wrap(self, fn);
    if (tf != NULL) {
        tf->vectorcall = (vectorcallfunc)tcf_vectorcall;
    }
    return (PyObject *)tf;
}

static PyMethodDef tracer_methods[] = {
    {"wrap", (PyCFunction)tracer_wrap, METH_O, "wrap(fn) -> TracedFunction: the sync wrapper of fn"},
    {"wrap_async", (PyCFunction)tracer_wrap_async, METH_O,
     "wrap_async(fn) -> TracedFunction: the wrapper of async fn (its calls return TracedCoroutine objects)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tracer_members[] = {
    {"name", T_OBJECT, offsetof(TracerObject, name), READONLY, "the span name"},
    {NULL},
};

static PyTypeObject TracerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conctools._ctracing.Tracer",
    .tp_basicsize = sizeof(TracerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Tracer(name, finish, cache, level, log_args): the per-call fast path of one @traced definition.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tracer_init,
    .tp_dealloc = (destructor)tracer_dealloc,
    .tp_traverse = (traverseproc)tracer_traverse,
    .tp_clear = (inquiry)tracer_clear,
    .tp_methods = tracer_methods,
    .tp_members = tracer_members,
};


static PyObject *
next_id(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(++g_last_id);
}

/* -- fold: the aggregates of spans leaving the recorder's window -------------------------------- */

/* a - b and a + b, or 1 when the result does not fit (portable: no compiler builtins). */
static inline int
sub_overflows(long long a, long long b, long long *r)
{
    if ((b < 0 && a > LLONG_MAX + b) || (b > 0 && a < LLONG_MIN + b)) {
        return 1;
    }
    *r = a - b;
    return 0;
}

static inline int
add_overflows(long long a, long long b, long long *r)
{
    if ((b > 0 && a > LLONG_MAX - b) || (b < 0 && a < LLONG_MIN - b)) {
        return 1;
    }
    *r = a + b;
    return 0;
}

typedef struct {
    PyObject *name; /* borrowed from the chunk */
    long long count, errors, cancelled, total, max;
    Py_ssize_t argmax; /* the row of the first longest span of the group */
    Py_ssize_t first;  /* its first row, then (hists) where its rows start in the order array */
} Group;

/* recorder.bucket_of(): the same log-linear buckets, 8 per power of two (at most 488 of them). */
#define FOLD_BUCKETS 512
static inline int
fold_bucket(long long value)
{
    if (value < 8) {
        return value > 0 ? (int)value : 0;
    }
#if defined(__GNUC__) || defined(__clang__)
    int bits = 64 - __builtin_clzll((unsigned long long)value);
#else
    int bits = 0;
    for (unsigned long long v = (unsigned long long)value; v; v >>= 1) {
        bits++;
    }
#endif
    return ((bits - 3) << 3) | (int)((value >> (bits - 4)) & 7);
}

/* hist[bucket] += n for a dict of ints. 0 / -1. */
static int
hist_add_n(PyObject *hist, int bucket, long long n)
{
    PyObject *key = PyLong_FromLong(bucket);
    if (key == NULL) {
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(hist, key); /* borrowed */
    PyObject *sum = NULL;
    if (old != NULL) {
        PyObject *add = PyLong_FromLongLong(n);
        sum = add != NULL ? PyNumber_Add(old, add) : NULL;
        Py_XDECREF(add);
    }
    else if (!PyErr_Occurred()) {
        sum = PyLong_FromLongLong(n);
    }
    int rc = sum != NULL ? PyDict_SetItem(hist, key, sum) : -1;
    Py_XDECREF(sum);
    Py_DECREF(key);
    return rc;
}

static int
outcome_is(PyObject *outcome, PyObject *interned, const char *text)
{
    if (outcome == interned) {
        return 1;
    }
    return PyUnicode_CheckExact(outcome) && PyUnicode_CompareWithASCIIString(outcome, text) == 0;
}

static int
add_into(PyObject *list, Py_ssize_t i, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) {
        return -1;
    }
    PyObject *sum = PyNumber_Add(PyList_GET_ITEM(list, i), v);
    Py_DECREF(v);
    if (sum == NULL) {
        return -1;
    }
    return PyList_SetItem(list, i, sum); /* steals sum */
}

/* recorder._fold(aggs, chunk[, hists, beaten]) over raw span tuples, in one pass of C arithmetic.
 * hists (a dict or None): name -> {bucket: count}, the durations' histogram per name, added to.
 * beaten (a list or None): gets (name, row index) for each name whose longest span in this chunk
 * (its first row of that length) is longer than every span of that name folded before.
 * Returns True when done; False, with nothing changed, when the chunk has anything unusual for the
 * Python fold to do (a row that is not a plain tuple of ints and strings, a number that does not
 * fit in 64 bits). */
static PyObject *
py_fold(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 4 || !PyDict_Check(args[0]) ||
        !(PyList_Check(args[1]) || Py_IS_TYPE(args[1], &SpanChunkType))) {
        Py_RETURN_FALSE;
    }
    PyObject *aggs = args[0], *chunk = args[1];
    PyObject *hists = nargs > 2 && args[2] != Py_None ? args[2] : NULL;
    PyObject *beaten = nargs > 3 && args[3] != Py_None ? args[3] : NULL;
    if ((hists != NULL && !PyDict_Check(hists)) || (beaten != NULL && !PyList_Check(beaten))) {
        Py_RETURN_FALSE;
    }
    SpanChunkObject *rows = Py_IS_TYPE(chunk, &SpanChunkType) ? (SpanChunkObject *)chunk : NULL;
    Py_ssize_t n = rows != NULL ? rows->len : PyList_GET_SIZE(chunk);
    if (n == 0) {
        Py_RETURN_TRUE;
    }
    /* One block: the groups, then (hists) each row's group and duration, and the rows by group. */
    size_t extra = hists != NULL ? (size_t)n * (sizeof(Py_ssize_t) * 2 + sizeof(long long)) : 0;
    Group *groups = PyMem_Malloc((size_t)n * sizeof(Group) + extra); /* each group set when made */
    if (groups == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t *row_group = hists != NULL ? (Py_ssize_t *)(groups + n) : NULL;
    Py_ssize_t *order = hists != NULL ? row_group + n : NULL;
    long long *durations = hists != NULL ? (long long *)(order + n) : NULL;
    Py_ssize_t ng = 0, last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *outcome;
        long long start, end;
        if (rows != NULL) {
            Row *r = &rows->rows[i];
            name = r->name;
            outcome = r->outcome;
            start = r->start;
            end = r->end;
            if (!PyUnicode_CheckExact(name)) {
                goto python;
            }
        }
        else {
            PyObject *row = PyList_GET_ITEM(chunk, i);
            if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) < 6) {
                goto python;
            }
            PyObject *start_o = PyTuple_GET_ITEM(row, 0), *end_o = PyTuple_GET_ITEM(row, 1);
            name = PyTuple_GET_ITEM(row, 2);
            outcome = PyTuple_GET_ITEM(row, 5);
            if (!PyLong_CheckExact(start_o) || !PyLong_CheckExact(end_o) || !PyUnicode_CheckExact(name)) {
                goto python;
            }
            int overflow = 0;
            start = PyLong_AsLongLongAndOverflow(start_o, &overflow);
            if (overflow) {
                goto python;
            }
            end = PyLong_AsLongLongAndOverflow(end_o, &overflow);
            if (overflow) {
                goto python;
            }
        }
        long long d;
        if (sub_overflows(end, start, &d)) {
            goto python;
        }
        Group *g = NULL;
        if (last >= 0 && groups[last].name == name) {
            g = &groups[last];
        }
        else {
            for (Py_ssize_t k = 0; k < ng && g == NULL; k++) {
                if (groups[k].name == name) {
                    g = &groups[k];
                    last = k;
                }
            }
            for (Py_ssize_t k = 0; k < ng && g == NULL; k++) {
                if (PyUnicode_Compare(groups[k].name, name) == 0) { /* equal strings, distinct objects */
                    g = &groups[k];
                    last = k;
                }
            }
            if (PyErr_Occurred()) {
                goto python;
            }
            if (g == NULL) {
                g = &groups[ng];
                g->name = name;
                g->count = g->errors = g->cancelled = g->total = 0;
                g->max = d;
                g->argmax = i;
                g->first = i;
                last = ng++;
            }
        }
        g->count++;
        if (add_overflows(g->total, d, &g->total)) {
            goto python;
        }
        if (d > g->max) {
            g->max = d;
            g->argmax = i;
        }
        if (row_group != NULL) {
            row_group[i] = last;
            durations[i] = d;
        }
        if (!outcome_is(outcome, s_ok, "ok")) {
            if (outcome_is(outcome, s_cancelled, "cancelled")) {
                g->cancelled++;
            }
            else {
                g->errors++;
            }
        }
    }
    if (hists != NULL) {
        /* The rows of each group, in row order (a counting sort by group). */
        Py_ssize_t at = 0;
        for (Py_ssize_t k = 0; k < ng; k++) {
            groups[k].first = at;
            at += (Py_ssize_t)groups[k].count;
        }
        for (Py_ssize_t k = 0; k < ng; k++) {
            groups[k].count = 0;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            Group *g = &groups[row_group[i]];
            order[g->first + (Py_ssize_t)g->count++] = i;
        }
    }
    int counts[FOLD_BUCKETS] = {0}; /* one group's buckets at a time, reset after each */
    int touched[FOLD_BUCKETS];
    for (Py_ssize_t k = 0; k < ng; k++) {
        Group *g = &groups[k];
        PyObject *agg = PyDict_GetItemWithError(aggs, g->name);
        int fresh = 0;
        if (agg == NULL) {
            if (PyErr_Occurred()) {
                goto error;
            }
            agg = Py_BuildValue("[iiiii]", 0, 0, 0, 0, 0);
            if (agg == NULL || PyDict_SetItem(aggs, g->name, agg) < 0) {
                Py_XDECREF(agg);
                goto error;
            }
            Py_DECREF(agg); /* the dict holds it */
            fresh = 1;
        }
        if (!PyList_CheckExact(agg) || PyList_GET_SIZE(agg) != 5) {
            PyErr_SetString(PyExc_TypeError, "span aggregates must be lists of 5 ints");
            goto error;
        }
        Py_INCREF(agg);
        int bad = add_into(agg, 0, g->count) < 0 || add_into(agg, 1, g->errors) < 0 ||
                  add_into(agg, 2, g->cancelled) < 0 || add_into(agg, 3, g->total) < 0;
        int greater = 0;
        if (!bad) {
            PyObject *mx = PyLong_FromLongLong(g->max);
            greater = mx == NULL ? -1 : PyObject_RichCompareBool(mx, PyList_GET_ITEM(agg, 4), Py_GT);
            if (greater > 0) {
                PyList_SetItem(agg, 4, mx); /* steals mx */
            }
            else {
                Py_XDECREF(mx);
            }
            bad = greater < 0;
        }
        Py_DECREF(agg);
        if (bad) {
            goto error;
        }
        if (beaten != NULL && (fresh || greater > 0)) {
            PyObject *entry = Py_BuildValue("(On)", g->name, g->argmax);
            if (entry == NULL || PyList_Append(beaten, entry) < 0) {
                Py_XDECREF(entry);
                goto error;
            }
            Py_DECREF(entry);
        }
        if (hists != NULL) {
            PyObject *hist = PyDict_GetItemWithError(hists, g->name); /* borrowed */
            if (hist == NULL) {
                if (PyErr_Occurred()) {
                    goto error;
                }
                hist = PyDict_New();
                if (hist == NULL || PyDict_SetItem(hists, g->name, hist) < 0) {
                    Py_XDECREF(hist);
                    goto error;
                }
                Py_DECREF(hist); /* the dict holds it */
            }
            if (!PyDict_CheckExact(hist)) {
                PyErr_SetString(PyExc_TypeError, "span histograms must be dicts");
                goto error;
            }
            int nt = 0;
            for (Py_ssize_t j = g->first; j < g->first + (Py_ssize_t)g->count; j++) {
                int b = fold_bucket(durations[order[j]]);
                if (counts[b]++ == 0) {
                    touched[nt++] = b;
                }
            }
            Py_INCREF(hist);
            for (int t = 0; t < nt; t++) {
                if (!bad) {
                    bad = hist_add_n(hist, touched[t], counts[touched[t]]) < 0;
                }
                counts[touched[t]] = 0;
            }
            Py_DECREF(hist);
            if (bad) {
                goto error;
            }
        }
    }
    PyMem_Free(groups);
    Py_RETURN_TRUE;
python:
    PyErr_Clear();
    PyMem_Free(groups);
    Py_RETURN_FALSE;
error:
    PyMem_Free(groups);
    return NULL;
}


/* -- caller_site: where the code that called into a library is -------------------------------- */

static int
starts_with_any(PyObject *filename, PyObject *prefixes)
{
    Py_ssize_t n = PyTuple_GET_SIZE(prefixes);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t r = PyUnicode_Tailmatch(filename, PyTuple_GET_ITEM(prefixes, i), 0, PY_SSIZE_T_MAX, -1);
        if (r != 0) {
            return (int)r; /* 1, or -1 on error */
        }
    }
    return 0;
}

/* The caller's frame `depth` frames up (a new reference), or NULL (with no error: no such frame).
 * sys._getframe walks the interpreter's frames without making frame objects for those it passes. */
static PyFrameObject *
frame_at(Py_ssize_t depth)
{
    if (g_getframe == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "conctools._ctracing.setup() was not called");
        return NULL;
    }
    PyObject *d = PyLong_FromSsize_t(depth); /* frame 0: the Python code that called into this module */
    if (d == NULL) {
        return NULL;
    }
    PyObject *f = PyObject_CallOneArg(g_getframe, d);
    Py_DECREF(d);
    if (f == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) { /* call stack is not deep enough */
            PyErr_Clear();
        }
        return NULL;
    }
    if (!PyFrame_Check(f)) {
        Py_DECREF(f);
        PyErr_SetString(PyExc_TypeError, "sys._getframe() did not return a frame");
        return NULL;
    }
    return (PyFrameObject *)f;
}

/* caller_site(depth, skip_prefixes, keep_prefix) -> "file:line" | None: from the caller's frame
 * `depth` frames up, the first frame whose file does not start with one of skip_prefixes (or
 * starts with keep_prefix), at most 32 frames: what taskdump.note_creation_site's loop does, with
 * no Python-level work per frame. */
static PyObject *
caller_site_impl(PyObject *const *args, Py_ssize_t nargs, int raw)
{
    if (nargs != 3 || !PyLong_Check(args[0]) || !PyTuple_Check(args[1]) || !PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "caller_site(depth: int, skip_prefixes: tuple[str, ...], keep_prefix: str)");
        return NULL;
    }
    Py_ssize_t depth = PyLong_AsSsize_t(args[0]);
    if (depth == -1 && PyErr_Occurred()) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[1]); i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(args[1], i))) {
            PyErr_SetString(PyExc_TypeError, "skip_prefixes must be strings");
            return NULL;
        }
    }
    PyFrameObject *f = frame_at(depth);
    if (f == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *site = NULL;
    for (int n = 0; f != NULL && n < 32 && site == NULL; n++) {
        PyCodeObject *code = PyFrame_GetCode(f);
        PyObject *filename = code->co_filename;
        int skip = PyUnicode_Check(filename) ? starts_with_any(filename, args[1]) : 1;
        if (skip == 1) {
            Py_ssize_t keep = PyUnicode_Tailmatch(filename, args[2], 0, PY_SSIZE_T_MAX, -1);
            skip = keep == 1 ? 0 : (keep < 0 ? -1 : 1);
        }
        if (skip < 0) {
            Py_DECREF(code);
            Py_DECREF(f);
            return NULL;
        }
        if (skip == 0) {
            int lineno = PyFrame_GetLineNumber(f);
            site = raw ? Py_BuildValue("(Oi)", filename, lineno) : PyUnicode_FromFormat("%U:%d", filename, lineno);
            Py_DECREF(code);
            Py_DECREF(f);
            return site; /* NULL with an error if formatting failed */
        }
        Py_DECREF(code);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    Py_RETURN_NONE;
}

static PyObject *
py_caller_site(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return caller_site_impl(args, nargs, 0);
}

/* note_site(table, obj, depth, skip_prefixes, keep_prefix): table[id(obj)] = (weakref(obj), filename,
 * lineno), the caller site as caller_site() finds it (formatted only when someone reads it). Entries
 * of dead objects are purged when the table doubles: no callback per object death, unlike a
 * WeakKeyDictionary. */
static PyObject *
py_note_site(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "note_site(table: dict, obj, depth, skip_prefixes, keep_prefix)");
        return NULL;
    }
    PyObject *table = args[0], *obj = args[1];
    PyObject *site_args[3] = {args[2], args[3], args[4]};
    PyObject *site = caller_site_impl(site_args, 3, 1);
    if (site == NULL || site == Py_None) {
        return site;
    }
    PyObject *ref = PyWeakref_NewRef(obj, NULL);
    if (ref == NULL) {
        Py_DECREF(site);
        return NULL; /* TypeError: not weak-referenceable */
    }
    PyObject *entry = PyTuple_Pack(3, ref, PyTuple_GET_ITEM(site, 0), PyTuple_GET_ITEM(site, 1));
    /* Neither can be in a reference cycle (a weak reference without a callback holds nothing
     * strongly): the collector need not visit them, and a program with many tasks would otherwise
     * pay for promoting two objects per task through the generations. */
    if (PyObject_GC_IsTracked(ref) && Py_REFCNT(ref) == 2) { /* ours and the entry's: not shared */
        PyObject_GC_UnTrack(ref);
    }
    if (entry != NULL) {
        PyObject_GC_UnTrack(entry);
    }
    Py_DECREF(ref);
    Py_DECREF(site);
    PyObject *key = entry != NULL ? PyLong_FromVoidPtr(obj) : NULL;
    int rc = key != NULL ? PyDict_SetItem(table, key, entry) : -1;
    Py_XDECREF(key);
    Py_XDECREF(entry);
    if (rc < 0) {
        return NULL;
    }
    if (PyDict_GET_SIZE(table) >= g_sites_limit) {
        PyObject *dead = PyList_New(0);
        if (dead == NULL) {
            return NULL;
        }
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(table, &pos, &k, &v)) {
            PyObject *w = PyTuple_Check(v) && PyTuple_GET_SIZE(v) > 0 ? PyTuple_GET_ITEM(v, 0) : NULL;
            int gone = 1;
            if (w != NULL && PyWeakref_Check(w)) {
#if PY_VERSION_HEX >= 0x030D0000
                PyObject *alive = NULL;
                gone = PyWeakref_GetRef(w, &alive) != 1;
                Py_XDECREF(alive);
                PyErr_Clear();
#else
                gone = PyWeakref_GetObject(w) == Py_None;
#endif
            }
            if (gone && PyList_Append(dead, k) < 0) {
                Py_DECREF(dead);
                return NULL;
            }
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dead); i++) {
            if (PyDict_DelItem(table, PyList_GET_ITEM(dead, i)) < 0) {
                PyErr_Clear();
            }
        }
        Py_DECREF(dead);
        Py_ssize_t live = PyDict_GET_SIZE(table);
        g_sites_limit = live * 2 > 4096 ? live * 2 : 4096;
    }
    Py_RETURN_NONE;
}

/* -- module ------------------------------------------------------------------------------------ */

static PyObject *
setup(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"span_var", "current", "get_running_loop", "current_task", "current_tasks",
                             "cancelled_error", "log_failure", "format_args", "monotonic_ns", "chunk_size",
                             "shard_type", "chunk_slot", "sinks_anywhere", NULL};
    PyObject *span_var, *current, *get_loop, *current_task, *current_tasks, *cancelled, *log_failure, *format_args,
        *mono, *shard_type, *chunk_slot, *sinks_anywhere;
    Py_ssize_t chunk_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOOOOOOnO!OO!:setup", kwlist, &PyContextVar_Type, &span_var,
                                     &PyList_Type, &current, &get_loop, &current_task, &current_tasks, &cancelled,
                                     &log_failure, &format_args, &mono, &chunk_size, &PyType_Type, &shard_type,
                                     &chunk_slot, &PyList_Type, &sinks_anywhere)) {
        return NULL;
    }
    Py_XSETREF(g_current_tasks, PyDict_CheckExact(current_tasks) ? Py_NewRef(current_tasks) : NULL);
    Py_XSETREF(g_sinks_anywhere, Py_NewRef(sinks_anywhere));
    PyObject *warnings = PyImport_ImportModule("warnings");
    if (warnings == NULL) {
        return NULL;
    }
    Py_XSETREF(g_warn_unawaited, PyObject_GetAttrString(warnings, "_warn_unawaited_coroutine"));
    Py_DECREF(warnings);
    if (g_warn_unawaited == NULL) {
        PyErr_Clear();
    }
    g_chunk_offset = 0;
    if (Py_IS_TYPE(chunk_slot, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)chunk_slot)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY) && member->offset > 0) {
            g_chunk_offset = member->offset;
        }
    }
    Py_XSETREF(g_shard_type, (PyTypeObject *)Py_NewRef(shard_type));
    Py_XSETREF(g_span_var, Py_NewRef(span_var));
    Py_XSETREF(g_current, Py_NewRef(current));
    Py_XSETREF(g_get_loop, Py_NewRef(get_loop));
    Py_XSETREF(g_current_task, Py_NewRef(current_task));
    Py_XSETREF(g_cancelled, Py_NewRef(cancelled));
    Py_XSETREF(g_log_failure, Py_NewRef(log_failure));
    Py_XSETREF(g_format_args, Py_NewRef(format_args));
    Py_XSETREF(g_mono, Py_NewRef(mono));
    g_chunk_size = chunk_size;
    Py_CLEAR(c_rec);
    Py_CLEAR(c_shard);
    c_tid = 0;
    Py_RETURN_NONE;
}

/* Drop the one-entry shard cache (its references to a recorder and a shard). */
static PyObject *
forget(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(c_rec);
    Py_CLEAR(c_shard);
    c_tid = 0;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     "setup(span_var, current, get_running_loop, current_task, current_tasks, cancelled_error, log_failure, "
     "format_args, monotonic_ns, chunk_size, shard_type, chunk_slot, sinks_anywhere)"},
    {"next_id", next_id, METH_NOARGS, "next_id() -> int: a new span id (the one counter every path uses)"},
    {"caller_site", (PyCFunction)(void (*)(void))py_caller_site, METH_FASTCALL,
     "caller_site(depth, skip_prefixes, keep_prefix) -> 'file:line' | None: the first frame outside skip_prefixes"},
    {"note_site", (PyCFunction)(void (*)(void))py_note_site, METH_FASTCALL,
     "note_site(table, obj, depth, skip_prefixes, keep_prefix): table[id(obj)] = (weakref(obj), file, line)"},
    {"fold", (PyCFunction)(void (*)(void))py_fold, METH_FASTCALL,
     "fold(aggs, chunk, hists=None, beaten=None) -> bool: recorder._fold in C; False when it leaves the chunk to Python"},
    {"forget", forget, METH_NOARGS, "forget(): drop the cached (thread, recorder) -> shard entry"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ctracing_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "conctools._ctracing",
    .m_doc = "C fast path of @traced (optional: conctools works without it).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                     \
    do {                                                      \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            goto fail;                                        \
    } while (0)

PyMODINIT_FUNC
PyInit__ctracing(void)
{
    PyObject *m = PyModule_Create(&ctracing_module);
    if (m == NULL) return NULL;
    INTERN(s_ok, "ok");
    INTERN(s_raised, "raised");
    INTERN(s_cancelled, "cancelled");
    INTERN(s_local, "_local");
    INTERN(s_shard, "shard");
    INTERN(s_new_shard, "_new_shard");
    INTERN(s_chunk, "chunk");
    INTERN(s_sinks, "_sinks");
    INTERN(s_after_span, "_after_span");
    INTERN(s_get_name, "get_name");
    INTERN(s_dunder_qualname, "__qualname__");
    INTERN(s_key, "conctools._ctracing.shard");
    INTERN(s_dunder_name, "__name__");
    INTERN(s_throw, "throw");
    INTERN(s_close, "close");
    INTERN(s_cr_await, "cr_await");
    INTERN(s_cr_frame, "cr_frame");
    INTERN(s_cr_running, "cr_running");
    INTERN(s_gi_code, "gi_code");
    if (PyType_Ready(&TracerType) < 0 || PyType_Ready(&TracedFunctionType) < 0 ||
        PyType_Ready(&TracedCoroutineType) < 0 || PyType_Ready(&SpanChunkType) < 0) {
        goto fail;
    }
    /* tracing.py uses this module only when the versions agree (a stale build in a source tree
     * falls back to pure Python instead of failing). Bump on any change to the interface. */
    if ((g_zero = PyLong_FromLong(0)) == NULL) goto fail;
    if ((g_getframe = PySys_GetObject("_getframe")) == NULL) goto fail; /* borrowed from sys */
    Py_INCREF(g_getframe);
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0) goto fail;
    if (PyModule_AddObject(m, "Tracer", Py_NewRef((PyObject *)&TracerType)) < 0) goto fail;
    if (PyModule_AddObject(m, "TracedFunction", Py_NewRef((PyObject *)&TracedFunctionType)) < 0) goto fail;
    if (PyModule_AddObject(m, "TracedCoroutine", Py_NewRef((PyObject *)&TracedCoroutineType)) < 0) goto fail;
    if (PyModule_AddObject(m, "SpanChunk", Py_NewRef((PyObject *)&SpanChunkType)) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
