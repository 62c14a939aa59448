/*
 * chrootarchive.tarformat._ustar: the reader's fast path for one tar header, compiled.
 *
 * Why: on an archive of many small files the jailed worker's main thread is the limit,
 * and reading a header in Python costs about 2 us of it (slices, a translate, six int()
 * parses, the checksum through adler32). This does the same in about 0.5 us (issue 16).
 *
 * What: ustar(buffer, pos, end) reads the 512-byte block at buffer[pos:pos + 512] when
 * it lies within buffer[:end] and is what most archives hold: a non-zero first byte, the
 * numeric fields in the usual layout (octal digits, each ended by a NUL or a space), and
 * a correct unsigned checksum. It returns (typeflag, mode, uid, gid, size, mtime, name,
 * linkname) with the name joined to a ustar prefix and decoded as UTF-8 with
 * surrogateescape, the link name only for a hard or symbolic link, else None. Any other
 * block gives None, and the Python reader's general rules take it (errors included).
 *
 * entry() makes such a header, a plain member's, into its entry (a Fields) at once;
 * pax_entry() does the same for the member after a PAX header that holds only times.
 *
 * The references are _ustar_py(), _entry_py() and _pax_entry_py() in reader.py: each
 * pair must agree on every block, which tests/test_ustar_parser.py checks on random and
 * mutated headers and records. Bounds: every read is inside the 512 bytes after pos,
 * checked against end and the buffer's length first (pax_entry: the records and the
 * member's header after them, within end); the joined
 * name is at most 155 + 1 + 100 bytes; the largest number is 11 octal digits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "../stable_refs.h"  /* after Python.h: references counted alike by every version */
#include <stddef.h>
#include <string.h>
#include <structmember.h>

#define BLOCK 512
#define PREFIX_AT 345
#define PREFIX_MAX 155
#define NAME_MAX_LEN 100

/* Whether h[start:start + n] are octal digits. */
static int octal_digits(const unsigned char *h, int start, int n)
{
    for (int i = start; i < start + n; i++) {
        if (h[i] < '0' || h[i] > '7')
            return 0;
    }
    return 1;
}

/* The value of h[start:start + n], checked by octal_digits() (n <= 11: below 2**33). */
static long long octal_value(const unsigned char *h, int start, int n)
{
    long long value = 0;
    for (int i = start; i < start + n; i++)
        value = (value << 3) | (h[i] - '0');
    return value;
}

static int field_end(unsigned char c) { return c == 0 || c == ' '; }

/* The fields at 100..155 in the layout GNU tar, bsdtar, Go and tarfile write:
 * mode, uid, gid (7 digits), size, mtime (11 digits), each ended by NUL or space, and the
 * checksum's 6 digits ended by two such bytes. */
static int usual_layout(const unsigned char *h)
{
    return octal_digits(h, 100, 7) && field_end(h[107])
        && octal_digits(h, 108, 7) && field_end(h[115])
        && octal_digits(h, 116, 7) && field_end(h[123])
        && octal_digits(h, 124, 11) && field_end(h[135])
        && octal_digits(h, 136, 11) && field_end(h[147])
        && octal_digits(h, 148, 6) && field_end(h[154]) && field_end(h[155]);
}

/* The unsigned byte sum with the checksum field counted as eight spaces (at most
 * 512 * 255: a 32-bit sum, which the compiler adds sixteen bytes at a time). */
static unsigned int unsigned_sum(const unsigned char *h)
{
    unsigned int sum = 8 * ' ';
    for (int i = 0; i < 148; i++)
        sum += h[i];
    for (int i = 156; i < BLOCK; i++)
        sum += h[i];
    return sum;
}

/* The bytes of p[0:max] up to the first NUL, decoded. */
static PyObject *c_string(const unsigned char *p, Py_ssize_t max)
{
    const unsigned char *nul = memchr(p, 0, (size_t)max);
    return PyUnicode_DecodeUTF8((const char *)p, nul ? nul - p : max, "surrogateescape");
}

/* The entry's name: the name field up to its NUL, after "prefix/" in a ustar header
 * whose prefix is not empty. */
static PyObject *entry_name(const unsigned char *h)
{
    const unsigned char *nul = memchr(h, 0, NAME_MAX_LEN);
    Py_ssize_t name_len = nul ? nul - h : NAME_MAX_LEN;
    if (!h[PREFIX_AT] || memcmp(h + 257, "ustar\0", 6) != 0)
        return PyUnicode_DecodeUTF8((const char *)h, name_len, "surrogateescape");
    char joined[PREFIX_MAX + 1 + NAME_MAX_LEN];
    const unsigned char *prefix = h + PREFIX_AT;
    nul = memchr(prefix, 0, PREFIX_MAX);
    Py_ssize_t prefix_len = nul ? nul - prefix : PREFIX_MAX;
    memcpy(joined, prefix, (size_t)prefix_len);
    joined[prefix_len] = '/';
    memcpy(joined + prefix_len + 1, h, (size_t)name_len);
    return PyUnicode_DecodeUTF8(joined, prefix_len + 1 + name_len, "surrogateescape");
}

/* Whether the header h takes the fast path: a non-zero first byte, the usual layout,
 * a correct unsigned checksum. */
static int fast_path(const unsigned char *h)
{
    return h[0] && usual_layout(h) && unsigned_sum(h) == (unsigned int)octal_value(h, 148, 6);
}

static PyObject *parse(const unsigned char *h)
{
    if (!fast_path(h))
        Py_RETURN_NONE;
    PyObject *name = entry_name(h);
    if (name == NULL)
        return NULL;
    PyObject *link;
    if (h[156] == '1' || h[156] == '2') {
        link = c_string(h + 157, 100);
        if (link == NULL) {
            Py_DECREF(name);
            return NULL;
        }
    } else {
        link = Py_NewRef(Py_None);
    }
    /* "N" steals the two references. */
    return Py_BuildValue("(iLLLLLNN)", (int)h[156], octal_value(h, 100, 7),
                         octal_value(h, 108, 7), octal_value(h, 116, 7),
                         octal_value(h, 124, 11), octal_value(h, 136, 11), name, link);
}

/* The 512 bytes at buffer[pos:pos + 512], when they lie within both buffer[:end] and
 * the buffer: 1, with *view held (the caller releases it), *block set and *room the
 * bytes from pos to end; 0 when they do not (nothing held); -1 with an exception set. */
static int block_at(PyObject *buffer, PyObject *pos_arg, PyObject *end_arg, Py_buffer *view,
                    const unsigned char **block, Py_ssize_t *room)
{
    Py_ssize_t pos = PyLong_AsSsize_t(pos_arg);
    if (pos == -1 && PyErr_Occurred())
        return -1;
    Py_ssize_t end = PyLong_AsSsize_t(end_arg);
    if (end == -1 && PyErr_Occurred())
        return -1;
    if (PyObject_GetBuffer(buffer, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (pos < 0 || end > view->len || pos > end || end - pos < BLOCK) {
        PyBuffer_Release(view);
        return 0;
    }
    *block = (const unsigned char *)view->buf + pos;
    *room = end - pos;
    return 1;
}

/* The arguments of the entry makers (entry(), pax_entry()) after the first three. */
typedef struct {
    PyObject *cls, *kinds, *regular;
    Py_ssize_t max_pax;  /* pax_entry()'s seventh */
} entry_args;

static int check_entry_args(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            const char *usage, entry_args *out);

/* The start of each function: ``nargs`` must be ``want`` (else TypeError, ``usage``);
 * for an entry maker (``out`` not NULL) its other arguments are checked; then
 * block_at() (its result). */
static int start_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                      Py_ssize_t want, const char *usage, entry_args *out,
                      Py_buffer *view, const unsigned char **block, Py_ssize_t *room)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (out != NULL && check_entry_args(module, args, nargs, usage, out) < 0)
        return -1;
    return block_at(args[0], args[1], args[2], view, block, room);
}

static PyObject *ustar(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *h;
    Py_ssize_t room;
    int found = start_call(module, args, nargs, 3, "ustar() takes (buffer, pos, end)",
                           NULL, &view, &h, &room);
    if (found <= 0)
        return found < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *result = parse(h);
    PyBuffer_Release(&view);
    return result;
}

/* ---- Fields: the slots of reader.TarEntry, made in C ------------------------------
 *
 * Why: the reader makes one entry per member, and a Python __init__ that stores fifteen
 * slots costs about 0.7 us of the worker's main thread on an archive of small files
 * (issue 16, sixteenth round); made here, about half of that. reader.TarEntry
 * subclasses it (adding __repr__ and __eq__); reader._EntryFields is its reference, and
 * the fallback where this was not built (tests/test_ustar_parser.py checks that the two
 * agree). The fields hold any object, as the slots of a Python class do. */

#define N_FIELDS 15

typedef struct {
    PyObject_HEAD
    PyObject *fields[N_FIELDS];
} Fields;

/* The order of TarEntry's parameters; the first seven have no default. */
static char *field_names[N_FIELDS + 1] = {
    "name", "kind", "mode", "uid", "gid", "size", "mtime_ns", "atime_ns", "linkname",
    "devmajor", "devminor", "xattrs", "sparse", "stored_size", "unknown_type", NULL,
};
#define REQUIRED 7
#define XATTRS 11

#define FIELD(i) {NULL, T_OBJECT_EX, offsetof(Fields, fields) + (i) * sizeof(PyObject *), \
                  0, NULL}
static PyMemberDef fields_members[N_FIELDS + 1] = {
    FIELD(0), FIELD(1), FIELD(2), FIELD(3), FIELD(4), FIELD(5), FIELD(6), FIELD(7),
    FIELD(8), FIELD(9), FIELD(10), FIELD(11), FIELD(12), FIELD(13), FIELD(14),
    {NULL, 0, 0, 0, NULL},
};

/* The default of field i (i >= REQUIRED): a new reference. */
static PyObject *field_default(int i)
{
    switch (i) {
    case 8: case 14:  /* linkname, unknown_type */
        return PyUnicode_FromStringAndSize("", 0);
    case 9: case 10: case 13:  /* devmajor, devminor, stored_size */
        return PyLong_FromLong(0);
    case XATTRS:
        return PyDict_New();
    default:  /* atime_ns, sparse */
        return Py_NewRef(Py_None);
    }
}

static PyObject *fields_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *given[N_FIELDS] = {NULL};
    Py_ssize_t nargs = PyTuple_Size(args);
    if (nargs < 0)
        return NULL;
    if (kwds == NULL && nargs >= REQUIRED && nargs <= N_FIELDS) {
        /* The reader's call: positional only. Borrowed from the tuple. */
        for (Py_ssize_t i = 0; i < nargs; i++)
            given[i] = PyTuple_GetItem(args, i);
    } else if (!PyArg_ParseTupleAndKeywords(
                   args, kwds, "OOOOOOO|OOOOOOOO:TarEntry", field_names, &given[0],
                   &given[1], &given[2], &given[3], &given[4], &given[5], &given[6],
                   &given[7], &given[8], &given[9], &given[10], &given[11], &given[12],
                   &given[13], &given[14])) {
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Fields *self = (Fields *)alloc(type, 0);
    if (self == NULL)
        return NULL;
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *value = given[i];
        if (value == NULL || (i == XATTRS && value == Py_None))
            value = field_default(i);
        else
            Py_INCREF(value);
        if (value == NULL) {
            Py_DECREF(self);
            return NULL;
        }
        self->fields[i] = value;
    }
    return (PyObject *)self;
}

static int fields_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    for (int i = 0; i < N_FIELDS; i++)
        Py_VISIT(((Fields *)self)->fields[i]);
    return 0;
}

static int fields_clear(PyObject *self)
{
    for (int i = 0; i < N_FIELDS; i++)
        Py_CLEAR(((Fields *)self)->fields[i]);
    return 0;
}

static void fields_dealloc(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    fields_clear(self);
    freefunc free_slot = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_slot(self);
    Py_DECREF(type);
}

static PyType_Slot fields_slots[] = {
    {Py_tp_doc, "The fifteen fields of a tar entry (reader.TarEntry), stored in C."},
    {Py_tp_new, fields_new},
    {Py_tp_members, fields_members},
    {Py_tp_traverse, fields_traverse},
    {Py_tp_clear, fields_clear},
    {Py_tp_dealloc, fields_dealloc},
    {0, NULL},
};

static PyType_Spec fields_spec = {
    "chrootarchive.tarformat._ustar.Fields", sizeof(Fields), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, fields_slots,
};

/* ---- entry(): a plain member's header straight to its entry ------------------------
 *
 * Why: most members of most archives are a plain file, directory or link with nothing
 * but its header. Reading the header as a tuple, then making the entry from it in
 * Python, cost about 4,000 machine instructions per member more than making it here
 * (issue 16, sixteenth round: callgrind, small.tar). reader._entry_py is the
 * reference: the two must agree on every block (tests/test_ustar_parser.py). */

typedef struct {
    PyTypeObject *fields_type;
} module_state;

/* PAX times in nanoseconds, as read by plain_times(): present[i] for mtime (0) and
 * atime (1); seconds of at most 18 digits and the fraction's first nine digits. */
typedef struct {
    int present[2];
    long long seconds[2];
    long long fraction[2];
} pax_times;

/* The arguments cls, kinds and regular of entry() and pax_entry(), and pax_entry()'s
 * max_pax (when there are 7): 0 when they are of the right types (*out set), -1 with
 * an exception set. */
static int check_entry_args(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                            const char *usage, entry_args *out)
{
    module_state *state = PyModule_GetState(module);
    if (state == NULL)
        return -1;
    PyObject *cls = args[3], *kinds = args[4];
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, state->fields_type)) {
        PyErr_Format(PyExc_TypeError, "%s: cls must be a subtype of Fields", usage);
        return -1;
    }
    if (!PyTuple_Check(kinds) || PyTuple_Size(kinds) != 256) {
        PyErr_Format(PyExc_TypeError, "%s: kinds must be a tuple of 256", usage);
        return -1;
    }
    out->cls = cls;
    out->kinds = kinds;
    out->regular = args[5];
    out->max_pax = 0;
    if (nargs > 6) {
        out->max_pax = PyLong_AsSsize_t(args[6]);
        if (out->max_pax == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* A PAX time's value in nanoseconds: seconds (at most 18 digits, so the product may
 * pass 2**63) times 10**9, plus the fraction. */
static PyObject *time_ns(long long seconds, long long fraction)
{
    if (seconds <= 9000000000LL)
        return PyLong_FromLongLong(seconds * 1000000000LL + fraction);
    PyObject *secs = PyLong_FromLongLong(seconds), *scale = PyLong_FromLong(1000000000L);
    PyObject *frac = PyLong_FromLongLong(fraction), *product = NULL, *sum = NULL;
    if (secs && scale && frac && (product = PyNumber_Multiply(secs, scale)))
        sum = PyNumber_Add(product, frac);
    Py_XDECREF(secs);
    Py_XDECREF(scale);
    Py_XDECREF(frac);
    Py_XDECREF(product);
    return sum;
}

static int all_digits(const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
    }
    return 1;
}

/* Whether p[0:n], PAX records, hold nothing but times in the plain form GNU tar
 * writes ("seconds[.fraction]" of decimal digits): each record "length key=value\n"
 * with a decimal length of 1 to 20 characters (as TarReader._read_pax takes it) that
 * counts the whole record, the key mtime, atime or ctime
 * (ctime checked, then ignored), the seconds 1 to 18 digits, a fraction of at least
 * one digit after a dot. A later record of a key wins. The reference is
 * reader._pax_times; anything else goes to the reader's general rules. */
static int plain_times(const unsigned char *p, Py_ssize_t n, pax_times *times)
{
    times->present[0] = times->present[1] = 0;
    if (n > 0 && p[n - 1] != '\n')
        return 0;
    for (Py_ssize_t at = 0; at < n;) {
        const unsigned char *record = p + at;
        Py_ssize_t len = (const unsigned char *)memchr(record, '\n', (size_t)(n - at)) - record;
        const unsigned char *space = memchr(record, ' ', (size_t)len);
        if (space == NULL || space == record || space - record > 20)
            return 0;  /* no length, or longer than _read_pax takes (20 characters) */
        long long length = 0;
        for (const unsigned char *d = record; d < space; d++) {
            if (*d < '0' || *d > '9')
                return 0;
            length = length * 10 + (*d - '0');
            if (length > n + 1)  /* too large to count the record (leading zeros pass) */
                return 0;
        }
        if (length != len + 1)
            return 0;
        const unsigned char *key = space + 1, *stop = record + len;
        const unsigned char *equals = memchr(key, '=', (size_t)(stop - key));
        if (equals == NULL)
            return 0;
        int slot;
        if (equals - key == 5 && memcmp(key, "mtime", 5) == 0)
            slot = 0;
        else if (equals - key == 5 && memcmp(key, "atime", 5) == 0)
            slot = 1;
        else if (equals - key == 5 && memcmp(key, "ctime", 5) == 0)
            slot = 2;
        else
            return 0;
        const unsigned char *value = equals + 1;
        const unsigned char *dot = memchr(value, '.', (size_t)(stop - value));
        const unsigned char *secs_end = dot ? dot : stop;
        Py_ssize_t secs_len = secs_end - value;
        if (secs_len < 1 || secs_len > 18 || !all_digits(value, secs_len))
            return 0;
        long long fraction = 0;
        if (dot) {
            Py_ssize_t frac_len = stop - dot - 1;
            if (frac_len < 1 || !all_digits(dot + 1, frac_len))
                return 0;
            for (int i = 0; i < 9; i++)
                fraction = fraction * 10 + (i < frac_len ? dot[1 + i] - '0' : 0);
        }
        if (slot < 2) {
            long long seconds = 0;
            for (const unsigned char *d = value; d < secs_end; d++)
                seconds = seconds * 10 + (*d - '0');
            times->present[slot] = 1;
            times->seconds[slot] = seconds;
            times->fraction[slot] = fraction;
        }
        at += len + 1;
    }
    return 1;
}

/* The entry of the header h, of kind ``kind`` (not None), when it takes the fast path:
 * a new reference; None when it does not, or is of kind ``regular`` and named "x/";
 * NULL with an exception set. Its mtime_ns and atime_ns are those of ``times`` where
 * given (a times-only PAX header before it), else the header's mtime and None. */
static PyObject *make_entry(const unsigned char *h, PyObject *cls, PyObject *kind,
                            PyObject *regular, const pax_times *times)
{
    if (!fast_path(h))
        return Py_NewRef(Py_None);
    int is_regular = kind == regular;
    PyObject *name = entry_name(h);
    if (name == NULL)
        return NULL;
    Py_ssize_t length = PyUnicode_GetLength(name);
    if (is_regular && length > 0 && PyUnicode_ReadChar(name, length - 1) == '/') {
        Py_DECREF(name);
        return Py_NewRef(Py_None);
    }
    long long size = is_regular ? octal_value(h, 124, 11) : 0;
    int has_mtime = times != NULL && times->present[0];
    int has_atime = times != NULL && times->present[1];
    PyObject *values[N_FIELDS] = {NULL};
    values[0] = name;
    values[1] = Py_NewRef(kind);
    values[12] = Py_NewRef(Py_None);
    Fields *made = NULL;
    /* Each made only once the one before it was (no call with an error set). */
    if ((values[2] = PyLong_FromLongLong(octal_value(h, 100, 7) & 07777))
        && (values[3] = PyLong_FromLongLong(octal_value(h, 108, 7)))
        && (values[4] = PyLong_FromLongLong(octal_value(h, 116, 7)))
        && (values[5] = PyLong_FromLongLong(size))
        /* At most 11 octal digits of seconds: below 2**33, so below 2**63 in ns. */
        && (values[6] = has_mtime ? time_ns(times->seconds[0], times->fraction[0])
                                  : PyLong_FromLongLong(octal_value(h, 136, 11) * 1000000000LL))
        && (values[7] = has_atime ? time_ns(times->seconds[1], times->fraction[1])
                                  : Py_NewRef(Py_None))
        && (values[8] = (h[156] == '1' || h[156] == '2')
                            ? c_string(h + 157, 100) : PyUnicode_FromStringAndSize("", 0))
        && (values[9] = PyLong_FromLong(0))
        && (values[10] = PyLong_FromLong(0))
        && (values[11] = PyDict_New())
        && (values[13] = PyLong_FromLongLong(size))
        && (values[14] = PyUnicode_FromStringAndSize("", 0))) {
        allocfunc alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)cls, Py_tp_alloc);
        made = (Fields *)alloc((PyTypeObject *)cls, 0);
    }
    if (made == NULL) {
        for (int i = 0; i < N_FIELDS; i++)
            Py_XDECREF(values[i]);
        return NULL;
    }
    memcpy(made->fields, values, sizeof(values));  /* the references move */
    return (PyObject *)made;
}

/* entry(buffer, pos, end, cls, kinds, regular) -> cls | None: the entry of the header
 * at buffer[pos:pos + 512] when its typeflag's kind, kinds[typeflag] (a tuple of 256),
 * is not None and the header takes ustar()'s fast path; None otherwise, and for a
 * member of kind ``regular`` whose name ends in "/" (the reader makes it a directory).
 * cls: a subtype of Fields that defines neither __new__ nor __init__ (the instance is
 * allocated and filled here; they would not be called). A member of kind ``regular``
 * has its size (and stored size); any other, 0. */
static PyObject *entry(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    entry_args given;
    Py_buffer view;
    const unsigned char *h;
    Py_ssize_t room;
    int found = start_call(module, args, nargs, 6,
                           "entry() takes (buffer, pos, end, cls, kinds, regular)", &given,
                           &view, &h, &room);
    if (found <= 0)
        return found < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *kind = PyTuple_GetItem(given.kinds, h[156]);  /* borrowed */
    PyObject *result = kind == NULL ? NULL
                       : kind == Py_None ? Py_NewRef(Py_None)
                       : make_entry(h, given.cls, kind, given.regular, NULL);
    PyBuffer_Release(&view);
    return result;
}

/* ---- pax_entry(): a times-only PAX header and the member after it, in one step ------
 *
 * Why: GNU tar's --format=posix and --xattrs write a PAX header before every member
 * that holds nothing but its times (rootfs.tar: every one of 6,700). Reading the
 * extended header as a tuple, copying its records to bytes and reading them in Python
 * cost about 15,000 machine instructions per member more than this (issue 16,
 * seventeenth round: callgrind, rootfs.tar). reader._pax_entry_py is the reference: the
 * two must agree on every block (tests/test_ustar_parser.py). */

/* pax_entry(buffer, pos, end, cls, kinds, regular, max_pax) -> (cls, int) | None: for
 * a PAX header ('x') at buffer[pos:pos + 512] on ustar()'s fast path, of at most
 * max_pax bytes of records that plain_times() reads, followed within buffer[:end] by a
 * header that entry() makes into an entry: that entry, with the records' times, and
 * the position of its header. None otherwise. */
static PyObject *pax_entry(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    entry_args given;
    Py_buffer view;
    const unsigned char *h;
    Py_ssize_t room;
    int found = start_call(
        module, args, nargs, 7,
        "pax_entry() takes (buffer, pos, end, cls, kinds, regular, max_pax)", &given,
        &view, &h, &room);
    if (found <= 0)
        return found < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *result = NULL;
    pax_times times;
    if (h[156] != 'x' || !fast_path(h)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    long long size = octal_value(h, 124, 11);
    /* The member's header: after the records, padded to whole blocks. */
    Py_ssize_t after = BLOCK + (Py_ssize_t)((size + BLOCK - 1) / BLOCK * BLOCK);
    if (size > given.max_pax || after > room - BLOCK
            || !plain_times(h + BLOCK, size, &times)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *kind = PyTuple_GetItem(given.kinds, h[after + 156]);  /* borrowed */
    if (kind == NULL || kind == Py_None) {
        result = kind == NULL ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    PyObject *made = make_entry(h + after, given.cls, kind, given.regular, &times);
    if (made == NULL || made == Py_None) {
        result = made;
        goto done;
    }
    PyObject *at = PyLong_FromSsize_t(PyLong_AsSsize_t(args[1]) + after);
    result = at ? PyTuple_Pack(2, made, at) : NULL;
    Py_DECREF(made);
    Py_XDECREF(at);
done:
    PyBuffer_Release(&view);
    return result;
}

static int module_exec(PyObject *module)
{
    for (int i = 0; i < N_FIELDS; i++)
        fields_members[i].name = field_names[i];
    PyObject *type = PyType_FromModuleAndSpec(module, &fields_spec, NULL);
    if (type == NULL)
        return -1;
    module_state *state = PyModule_GetState(module);
    state->fields_type = (PyTypeObject *)Py_NewRef(type);
    int failed = PyModule_AddObjectRef(module, "Fields", type);
    Py_DECREF(type);
    return failed;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *state = PyModule_GetState(module);
    if (state != NULL)
        Py_VISIT(state->fields_type);
    return 0;
}

static int module_clear(PyObject *module)
{
    module_state *state = PyModule_GetState(module);
    if (state != NULL)
        Py_CLEAR(state->fields_type);
    return 0;
}

static void module_free(void *module) { module_clear((PyObject *)module); }

/* byte_sum(data): the sum of its bytes (format.byte_sum, the header checksum's rule),
 * so that the worker need not load zlib for it (its start-up: issue 16). */
static PyObject *byte_sum(PyObject *module, PyObject *data)
{
    Py_buffer view;
    unsigned long long sum = 0;

    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < view.len; i++)
        sum += ((const unsigned char *)view.buf)[i];
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(sum);
}

static PyMethodDef methods[] = {
    {"byte_sum", byte_sum, METH_O,
     "byte_sum(data) -> int\n\nThe sum of the bytes of data (a header's checksum)."},
    {"ustar", (PyCFunction)(void (*)(void))ustar, METH_FASTCALL,
     "ustar(buffer, pos, end) -> (typeflag, mode, uid, gid, size, mtime, name, linkname)"
     " | None\n\nThe tar header at buffer[pos:pos + 512] when it takes the fast path;"
     " None for the general rules."},
    {"entry", (PyCFunction)(void (*)(void))entry, METH_FASTCALL,
     "entry(buffer, pos, end, cls, kinds, regular) -> cls | None\n\nThe entry of a"
     " plain member's header at buffer[pos:pos + 512] (see reader._entry_py); None"
     " for the general rules."},
    {"pax_entry", (PyCFunction)(void (*)(void))pax_entry, METH_FASTCALL,
     "pax_entry(buffer, pos, end, cls, kinds, regular, max_pax) -> (cls, int) | None\n\n"
     "The entry of the member after a times-only PAX header at buffer[pos:pos + 512],"
     " with those times, and its header's position (see reader._pax_entry_py); None"
     " for the general rules."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "chrootarchive.tarformat._ustar",
    "The tar reader's fast path for one header and the fields of an entry, compiled (see"
    " reader._ustar_py and reader._EntryFields).",
    sizeof(module_state), methods, module_slots, module_traverse, module_clear,
    module_free,
};

PyMODINIT_FUNC PyInit__ustar(void) { return PyModuleDef_Init(&module); }
