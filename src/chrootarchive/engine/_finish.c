/*
 * chrootarchive.engine._finish: the helper's loop over one batch of files, compiled.
 *
 * Why: on an archive of many small files the helper process (engine/finisher.py) takes
 * most files, and its Python loop costs about 2 us a file beside the 6 us the kernel
 * takes to create, fill, time and close it. This does the loop in C (issue 16).
 *
 * What: finish(batch, fds, source, ring) does for a batch what finisher._finish_batch()
 * does when the batch has no symlink: for each file, create it by name (O_CREAT |
 * O_EXCL | O_NOFOLLOW, relative to the working directory: the jail's) or take the next
 * descriptor passed with the batch, copy its extent from ``source`` (the archive:
 * sendfile, else pread and write; or, with ring > 0, a ring of that size, where the
 * stream's offsets wrap: sendfile) or write its data from the batch, set its times
 * through the descriptor, close it. It returns (errno, index, returned): the first
 * error and its file (errno 0: none), and the files left to the worker (their creation
 * met EEXIST, EACCES or EPERM). After an error the remaining files are only closed. A
 * failed close is the file's error (Python's loop dies of it). It returns None, having
 * done nothing, for a batch it does not take (a symlink, a layout that does not add
 * up): the Python loop takes the first; the helper's _well_formed() rules out the
 * second before either loop sees it.
 *
 * The reference is _finish_batch() in finisher.py: tests/test_finish_batch.py runs the
 * two on the same batches and compares the files made and the replies. Bounds: the
 * whole layout (the count, at most 64; the numbers; every name and every inline datum)
 * is checked to lie inside the batch, with running sums that cannot wrap, and the
 * numbers are copied out, before any file is touched or the GIL released; afterwards
 * only names and data are read, within those bounds. A name is copied into a
 * NUL-terminated buffer: longer than PATH_MAX is ENAMETOOLONG, and one holding a NUL
 * byte is EINVAL (the reader refuses such names), never a shorter name.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "../stable_refs.h"  /* after Python.h: references counted alike by every version */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <structmember.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILES 64
#define MAX_EXTENT (1LL << 62) /* finisher.MAX_EXTENT */
#define SYMLINK (-1)
#define COPY_CHUNK (1 << 20)
#define CREATE (O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC)

/* One file of a batch, as checked. */
struct file {
    uint64_t size, name_size;
    int64_t atime, mtime, extent, mode;
};

/* Little-endian fields of the batch (struct "<H", "<Q", "<I", "<q"). */
static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* A descriptor number: an int of 0 or more (-1 and an exception otherwise). */
static int as_fd(PyObject *number)
{
    long value = PyLong_AsLong(number);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < 0 || value > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a descriptor");
        return -1;
    }
    return (int)value;
}

static int returned_errno(int err) { return err == EEXIST || err == EACCES || err == EPERM; }

/* sendfile() from source at *at into fd until *size bytes are sent (both updated as
 * it goes): 0, or an errno (ENODATA: the source ends first). */
static int send_range(int fd, int source, off_t *at, uint64_t *size)
{
    while (*size) {
        size_t want = *size > 0x7ffff000u ? 0x7ffff000u : (size_t)*size;
        ssize_t sent = sendfile(fd, source, at, want);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (sent == 0)
            return ENODATA;
        *size -= (uint64_t)sent;
    }
    return 0;
}

/* Copy size bytes of the stream from offset out of the ring source (of ring bytes) to
 * fd: _ring.send(). 0 or an errno (ENODATA: the ring ends inside the file's data). */
static int copy_from_ring(int fd, int source, uint64_t offset, uint64_t size, uint64_t ring)
{
    /* offset + size <= 2**63 + 2**62 (MAX_EXTENT): no wrap in 64 unsigned bits. */
    while (size) {
        uint64_t at = offset % ring;
        uint64_t lap = ring - at < size ? ring - at : size, left = lap;
        off_t from = (off_t)at;
        int err = send_range(fd, source, &from, &left);
        if (err)
            return err;
        offset += lap;
        size -= lap;
    }
    return 0;
}

/* Write all of data to fd: 0 or an errno. */
static int write_all(int fd, const unsigned char *data, uint64_t size)
{
    while (size) {
        ssize_t n = write(fd, data, size > 0x7ffff000u ? 0x7ffff000u : (size_t)size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        data += n;
        size -= (uint64_t)n;
    }
    return 0;
}

/* Copy size bytes of the archive source from offset to fd: sendfile (page cache to
 * page cache), else through a buffer where the kernel cannot. 0 or an errno (ENODATA:
 * the archive ends inside the file's data): _copy_extent(). */
static int copy_extent(int fd, int source, int64_t offset, uint64_t size, char **buffer)
{
    off_t at = (off_t)offset;
    int err = send_range(fd, source, &at, &size);
    if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP)
        return err;  /* 0: all sent */
    if (*buffer == NULL) {
        *buffer = malloc(COPY_CHUNK);
        if (*buffer == NULL)
            return ENOMEM;
    }
    while (size) {
        size_t want = size > COPY_CHUNK ? COPY_CHUNK : (size_t)size;
        ssize_t got = pread(source, *buffer, want, at);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (got == 0)
            return ENODATA;
        err = write_all(fd, (const unsigned char *)*buffer, (uint64_t)got);
        if (err)
            return err;
        at += got;
        size -= (uint64_t)got;
    }
    return 0;
}

/* Python's os.utime(fd, ns=...): seconds rounded down, nanoseconds 0..999999999. */
static struct timespec to_timespec(int64_t ns)
{
    struct timespec t;
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) {
        rem += 1000000000;
        sec -= 1;
    }
    t.tv_sec = (time_t)sec;
    t.tv_nsec = (long)rem;
    return t;
}

static PyObject *finish(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "finish() takes (batch, fds, source, ring)");
        return NULL;
    }
    long source = PyLong_AsLong(args[2]);  /* -1: no archive to copy from */
    if (source == -1 && PyErr_Occurred())
        return NULL;
    if (source < -1 || source > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "source is not a descriptor");
        return NULL;
    }
    long long ring = PyLong_AsLongLong(args[3]);  /* 0: source is the archive itself */
    if (ring == -1 && PyErr_Occurred())
        return NULL;
    if (ring < 0) {
        PyErr_SetString(PyExc_ValueError, "ring must be 0 or a size");
        return NULL;
    }
    PyObject *fds = args[1];
    if (!PyList_Check(fds)) {
        PyErr_SetString(PyExc_TypeError, "fds must be a list");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *b = view.buf;
    Py_ssize_t length = view.len;
    PyObject *result = NULL;

    /* The layout: count, count sizes (Q), count name sizes (I), 4 * count numbers (q),
     * then the names, then the inline data. All of it is checked, and copied here,
     * before anything is done: the loop below reads the batch only for the names and
     * the data, within the bounds checked, whatever changes in it meanwhile. */
    if (length < 2)
        goto not_taken;
    const Py_ssize_t count = (Py_ssize_t)le(b, 2);
    if (count < 1 || count > MAX_FILES)
        goto not_taken;
    const Py_ssize_t sizes_at = 2, name_sizes_at = sizes_at + 8 * count;
    const Py_ssize_t numbers_at = name_sizes_at + 4 * count, names_at = numbers_at + 32 * count;
    if (length < names_at)
        goto not_taken;
    const uint64_t room = (uint64_t)(length - names_at);  /* for the names and the data */
    struct file files[MAX_FILES];
    uint64_t taken = 0;  /* <= room, so no sum below can wrap */
    Py_ssize_t without_name = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        struct file *f = &files[i];
        const unsigned char *numbers = b + numbers_at + 32 * i;
        f->size = le(b + sizes_at + 8 * i, 8);
        f->name_size = le(b + name_sizes_at + 4 * i, 4);
        f->atime = (int64_t)le(numbers, 8);
        f->mtime = (int64_t)le(numbers + 8, 8);
        f->extent = (int64_t)le(numbers + 16, 8);
        f->mode = (int64_t)le(numbers + 24, 8);
        if (f->mode == SYMLINK)
            goto not_taken;  /* the Python loop makes symlinks */
        if (f->mode < 0 || f->mode > 07777 || f->size > (uint64_t)MAX_EXTENT)
            goto not_taken;  /* not a batch of ours */
        if (!f->name_size)
            without_name++;
        if (f->name_size > room - taken)
            goto not_taken;
        taken += f->name_size;
    }
    const uint64_t names_total = taken;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (files[i].extent < 0) {
            if (files[i].size > room - taken)
                goto not_taken;
            taken += files[i].size;
        }
    }
    if (without_name != PyList_Size(fds))
        goto not_taken;
    int passed[MAX_FILES];
    for (Py_ssize_t i = 0; i < without_name; i++) {
        passed[i] = as_fd(PyList_GetItem(fds, i));
        if (passed[i] == -1 && PyErr_Occurred())
            goto done;
    }

    int failed = 0;
    Py_ssize_t failed_index = 0, returned_count = 0, next_fd = 0;
    unsigned short returned[MAX_FILES];
    char name[PATH_MAX + 1];
    char *buffer = NULL;
    const unsigned char *names = b + names_at;
    const unsigned char *data = names + names_total;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        const struct file *f = &files[i];
        int fd = -1, err = 0;
        if (f->name_size) {
            if (!failed) {
                if (f->name_size > PATH_MAX)
                    err = ENAMETOOLONG;
                else if (memchr(names, 0, f->name_size) != NULL)
                    err = EINVAL;
                else {
                    memcpy(name, names, f->name_size);
                    name[f->name_size] = 0;
                    do
                        fd = open(name, CREATE, (mode_t)f->mode);
                    while (fd < 0 && errno == EINTR);
                    if (fd < 0) {
                        if (returned_errno(errno))
                            returned[returned_count++] = (unsigned short)i;
                        else
                            err = errno;
                    }
                }
            }
            names += f->name_size;
        } else {
            fd = passed[next_fd++];
        }
        if (!failed && !err && fd >= 0) {
            if (f->extent < 0)
                err = write_all(fd, data, f->size);
            else if (f->size)
                err = ring ? copy_from_ring(fd, (int)source, (uint64_t)f->extent, f->size,
                                            (uint64_t)ring)
                           : copy_extent(fd, (int)source, f->extent, f->size, &buffer);
            if (!err) {
                struct timespec times[2] = {to_timespec(f->atime), to_timespec(f->mtime)};
                if (futimens(fd, times) < 0)
                    err = errno;
            }
        }
        /* A failed close is the file's error (NFS and FUSE report some only there);
         * EINTR leaves the descriptor closed on Linux. */
        if (fd >= 0 && close(fd) < 0 && errno != EINTR && !err)
            err = errno;
        if (err && !failed) {
            failed = err;
            failed_index = i;
        }
        if (f->extent < 0)
            data += f->size;
    }
    Py_END_ALLOW_THREADS
    free(buffer);
    PyObject *indexes = PyTuple_New(returned_count);
    if (indexes == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < returned_count; i++) {
        PyObject *index = PyLong_FromLong(returned[i]);
        if (index == NULL) {
            Py_DECREF(indexes);
            goto done;
        }
        if (PyTuple_SetItem(indexes, i, index) < 0) {
            Py_DECREF(indexes);
            goto done;
        }
    }
    result = Py_BuildValue("(inN)", failed, failed_index, indexes);
    goto done;
not_taken:
    Py_IncRef(Py_None);  /* immortal: counted by the interpreter (see Batch below) */
    result = Py_None;
done:
    PyBuffer_Release(&view);
    return result;
}

/* ---- Batch: the worker's side, one file added to the batch being made ---------------
 *
 * Why: on an archive of small files the worker's main thread is the limit, and adding
 * a file to the batch (Finisher.add_new: a dozen appends, counters and room checks)
 * cost about 1 us of it, a sixth of a file's Python (issue 16, eighteenth round:
 * callgrind, small.tar). Here it costs a tenth of that.
 *
 * What: the batch's lists, buffers and counters are this type's members, under the
 * names engine.finisher.Finisher gives them (Finisher subclasses it), and add_new()
 * does what finisher._Batch.add_new() does, its reference and the fallback where this
 * was not built (tests/test_finish_batch.py runs both on the same calls and compares
 * every member). The Python code may replace a member at any time (Finisher._send()
 * starts a new batch): each is looked up, and its type checked, where it is used,
 * after any call back into Python (_send(), _can_send()).
 *
 * References to objects that may be immortal (bools, None, small ints) are counted by
 * the interpreter's functions (stable_refs.h, and PyBool_FromLong): a True returned by
 * 3.11's inline Py_RETURN_TRUE brought the worker down on 3.13 ("bool_dealloc",
 * tests/test_finisher.py as uid 65534). */

/* The object members, by index (their Python names in object_names). */
enum { NAMES, OWN, SIZES, NAME_SIZES, NUMBERS, PATHS, DATA, PENDING, N_OBJECTS };
static const char *object_names[N_OBJECTS] = {
    "_names", "_own", "_sizes", "_name_sizes", "_numbers", "_paths", "_data", "pending",
};

typedef struct {
    PyObject_HEAD
    PyObject *objects[N_OBJECTS];
    long long extents, first_extent, in_flight_bytes, extent_count, taken, by_name;
    long long max_data, batch_extents;
} Batch;

#define OBJECT(name, i) \
    {name, T_OBJECT_EX, offsetof(Batch, objects) + (i) * sizeof(PyObject *), 0, NULL}
#define NUMBER(name, field) {name, T_LONGLONG, offsetof(Batch, field), 0, NULL}
static PyMemberDef batch_members[] = {
    OBJECT("_names", NAMES), OBJECT("_own", OWN), OBJECT("_sizes", SIZES),
    OBJECT("_name_sizes", NAME_SIZES), OBJECT("_numbers", NUMBERS),
    OBJECT("_paths", PATHS), OBJECT("_data", DATA), OBJECT("pending", PENDING),
    NUMBER("_extents", extents), NUMBER("_first_extent", first_extent),
    NUMBER("in_flight_bytes", in_flight_bytes), NUMBER("extents", extent_count),
    NUMBER("taken", taken), NUMBER("by_name", by_name), NUMBER("_max_data", max_data),
    NUMBER("_batch_extents", batch_extents),
    {NULL, 0, 0, 0, NULL},
};

static int batch_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    for (int i = 0; i < N_OBJECTS; i++)
        Py_VISIT(((Batch *)self)->objects[i]);
    return 0;
}

static int batch_clear(PyObject *self)
{
    for (int i = 0; i < N_OBJECTS; i++)
        Py_CLEAR(((Batch *)self)->objects[i]);
    return 0;
}

static void batch_dealloc(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    batch_clear(self);
    freefunc free_slot = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_slot(self);
    Py_DECREF(type);
}

/* The object member i, which must be a list (kind 'l'), a bytearray ('b') or a set
 * ('s'): borrowed, or NULL with an error. */
static PyObject *member(Batch *self, int i, char kind)
{
    PyObject *value = self->objects[i];
    int ok = value != NULL && (kind == 'l'   ? PyList_Check(value)
                               : kind == 'b' ? PyByteArray_Check(value)
                                             : PySet_Check(value));
    if (!ok)
        PyErr_Format(PyExc_TypeError, "Batch.%s is not a %s", object_names[i],
                     kind == 'l' ? "list" : kind == 'b' ? "bytearray" : "set");
    return ok ? value : NULL;
}

#define LIST(self, i) member((self), (i), 'l')
#define BYTES(self, i) member((self), (i), 'b')

/* Append n bytes to the bytearray b. */
static int extend(PyObject *b, const void *p, Py_ssize_t n)
{
    Py_ssize_t old = PyByteArray_Size(b);
    if (n == 0)
        return 0;
    if (old > PY_SSIZE_T_MAX - n) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyByteArray_Resize(b, old + n) < 0)
        return -1;
    memcpy(PyByteArray_AsString(b) + old, p, (size_t)n);
    return 0;
}

/* Files in the batch and bytes of its data and names (-1: an error). */
static int batch_fill(Batch *self, Py_ssize_t *files, Py_ssize_t *fill)
{
    PyObject *names, *data, *paths;
    if ((names = LIST(self, NAMES)) == NULL || (data = BYTES(self, DATA)) == NULL
        || (paths = BYTES(self, PATHS)) == NULL)
        return -1;
    *files = PyList_Size(names);
    *fill = PyByteArray_Size(data) + PyByteArray_Size(paths);
    return 0;
}

static int call_send(PyObject *self)
{
    PyObject *done = PyObject_CallMethod(self, "_send", NULL);
    if (done == NULL)
        return -1;
    Py_DecRef(done);
    return 0;
}

static PyObject *batch_add_new(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    Batch *self = (Batch *)op;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "add_new() takes 10 arguments (path, encoded, "
                        "mode, data, offset, size, atime_ns, mtime_ns, entry, token)");
        return NULL;
    }
    PyObject *path = args[0], *encoded = args[1], *mode = args[2], *data = args[3];
    PyObject *offset_obj = args[4], *atime = args[6], *mtime = args[7], *entry = args[8];
    PyObject *token = args[9];
    if (!PyBytes_Check(encoded) || !PyLong_Check(mode) || !PyLong_Check(offset_obj)
        || !PyLong_Check(args[5]) || !PyLong_Check(atime) || !PyLong_Check(mtime)) {
        PyErr_SetString(PyExc_TypeError, "add_new(): encoded must be bytes; mode, offset, "
                        "size, atime_ns and mtime_ns ints");
        return NULL;
    }
    long long offset = PyLong_AsLongLong(offset_obj);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    long long size = 0;
    if (offset >= 0) {
        /* An extent larger than MAX_EXTENT (or below 0) is not taken: False, as for a
         * helper too far behind (the worker copies it, and finds the archive short). */
        int overflow;
        size = PyLong_AsLongLongAndOverflow(args[5], &overflow);
        if (size == -1 && PyErr_Occurred())
            return NULL;
        if (overflow || size < 0 || size > MAX_EXTENT)
            return PyBool_FromLong(0);
    }
    Py_ssize_t name_len = PyBytes_Size(encoded);
    Py_ssize_t files, fill, start = 0;
    if (batch_fill(self, &files, &fill) < 0)
        return NULL;
    if (offset < 0) {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        int failed = 0;
        if (files && (files >= MAX_FILES || fill + view.len + name_len > self->max_data))
            failed = call_send(op);
        PyObject *buffer = failed ? NULL : BYTES(self, DATA);
        if (buffer != NULL) {
            start = PyByteArray_Size(buffer);
            size = view.len;
            failed = extend(buffer, view.buf, view.len);
        }
        PyBuffer_Release(&view);
        if (failed || buffer == NULL)
            return NULL;
    } else {
        int full = files >= MAX_FILES || fill + name_len > self->max_data;
        long long planned;  /* past any limit when it overflows, as in Python */
        int after = __builtin_add_overflow(full ? 0 : self->extents, size, &planned)
            || planned >= self->batch_extents;
        if (full || after) {
            PyObject *can = PyObject_CallMethod(op, "_can_send", "iL", full + after,
                                                after ? size : 0LL);
            if (can == NULL)
                return NULL;
            int yes = PyObject_IsTrue(can);
            Py_DecRef(can);
            if (yes < 0)
                return NULL;
            if (!yes)
                return PyBool_FromLong(0);
        }
        if (full) {
            PyObject *names = LIST(self, NAMES);
            if (names == NULL || (PyList_Size(names) && call_send(op) < 0))
                return NULL;
        }
        PyObject *buffer = BYTES(self, DATA);
        if (buffer == NULL)
            return NULL;
        start = PyByteArray_Size(buffer);
    }
    /* Everything that allocates an object the collector tracks (or might run Python)
     * comes first: a collection's finalizers may replace a member, so the members are
     * looked up only after it, and nothing between their lookup and their use calls
     * back into Python (appends and a bytearray's resize do not). */
    PyObject *size_obj = offset < 0 ? PyLong_FromLongLong(size) : (Py_IncRef(args[5]), args[5]);
    PyObject *start_obj = PyLong_FromSsize_t(start);
    PyObject *name_size = PyLong_FromSsize_t(name_len);
    PyObject *mine = size_obj == NULL || start_obj == NULL || name_size == NULL ? NULL
        : PyTuple_Pack(5, path, token, start_obj, size_obj, offset_obj);
    if (start_obj != NULL)
        Py_DecRef(start_obj);
    PyObject *paths = NULL, *sizes = NULL, *name_sizes = NULL, *numbers = NULL;
    PyObject *names = NULL, *own = NULL, *pending = NULL;
    long long extents = self->extents, in_flight = self->in_flight_bytes;
    int failed = mine == NULL
        || (paths = BYTES(self, PATHS)) == NULL || (sizes = LIST(self, SIZES)) == NULL
        || (name_sizes = LIST(self, NAME_SIZES)) == NULL
        || (numbers = LIST(self, NUMBERS)) == NULL || (names = LIST(self, NAMES)) == NULL
        || (own = LIST(self, OWN)) == NULL
        || (pending = member(self, PENDING, 's')) == NULL;
    if (pending != NULL)
        Py_IncRef(pending);  /* hashing a str subclass may run Python that replaces it */
    if (!failed && offset >= 0
        && (__builtin_add_overflow(extents, size, &extents)
            || __builtin_add_overflow(in_flight, size, &in_flight))) {
        PyErr_SetString(PyExc_OverflowError, "add_new(): the batch's byte counts overflow");
        failed = 1;
    }
    if (!failed && offset >= 0) {
        if (self->first_extent < 0)
            self->first_extent = offset;
        self->extents = extents;
        self->in_flight_bytes = in_flight;
        self->extent_count += 1;
    }
    failed = failed || extend(paths, PyBytes_AsString(encoded), name_len) < 0
        || PyList_Append(sizes, size_obj) < 0 || PyList_Append(name_sizes, name_size) < 0
        || PyList_Append(numbers, atime) < 0 || PyList_Append(numbers, mtime) < 0
        || PyList_Append(numbers, offset_obj) < 0 || PyList_Append(numbers, mode) < 0
        || PyList_Append(names, entry) < 0 || PyList_Append(own, mine) < 0
        || PySet_Add(pending, path) < 0;  /* last: hashing a str subclass may run Python */
    PyObject *made[] = {size_obj, name_size, mine, pending};
    for (int i = 0; i < 4; i++)
        if (made[i] != NULL)
            Py_DecRef(made[i]);
    if (failed)
        return NULL;
    self->taken += 1;
    self->by_name += 1;
    if (self->extents >= self->batch_extents && call_send(op) < 0)
        return NULL;
    return PyBool_FromLong(1);
}

static PyMethodDef batch_methods[] = {
    {"add_new", (PyCFunction)(void (*)(void))batch_add_new, METH_FASTCALL,
     "add_new(path, encoded, mode, data, offset, size, atime_ns, mtime_ns, entry, token)"
     " -> bool\n\nFinisher.add_new (finisher._Batch.add_new is the reference)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot batch_slots[] = {
    {Py_tp_doc, "The batch a Finisher is making: its members and add_new(), in C."},
    {Py_tp_members, batch_members},
    {Py_tp_methods, batch_methods},
    {Py_tp_traverse, batch_traverse},
    {Py_tp_clear, batch_clear},
    {Py_tp_dealloc, batch_dealloc},
    {0, NULL},
};

static PyType_Spec batch_spec = {
    "chrootarchive.engine._finish.Batch", sizeof(Batch), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, batch_slots,
};

static PyMethodDef methods[] = {
    {"finish", (PyCFunction)(void (*)(void))finish, METH_FASTCALL,
     "finish(batch, fds, source, ring) -> (errno, index, returned) | None: the helper's "
     "loop over one batch (engine.finisher._finish_batch)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_finish",
    "The helper's loop over one batch of files, and the worker's batch, compiled"
    " (engine.finisher).", 0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__finish(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    PyObject *type = PyType_FromSpec(&batch_spec);
    if (type == NULL || PyModule_AddObjectRef(module, "Batch", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(type);
    return module;
}
