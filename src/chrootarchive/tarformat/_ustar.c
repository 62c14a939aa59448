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
 * The reference is _ustar_py() in reader.py: the two must agree on every block, which
 * tests/test_ustar_parser.py checks on random and mutated headers. Bounds: every read is
 * inside the 512 bytes after pos, checked against end and the buffer's length first;
 * the joined name is at most 155 + 1 + 100 bytes; the largest number is 11 octal digits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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

/* The unsigned byte sum with the checksum field counted as eight spaces. */
static long unsigned_sum(const unsigned char *h)
{
    long sum = 8 * ' ';
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

static PyObject *parse(const unsigned char *h)
{
    if (!h[0] || !usual_layout(h) || unsigned_sum(h) != octal_value(h, 148, 6))
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

static PyObject *ustar(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "ustar() takes (buffer, pos, end)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result;
    if (pos < 0 || end > view.len || pos > end || end - pos < BLOCK)
        result = Py_NewRef(Py_None);
    else
        result = parse((const unsigned char *)view.buf + pos);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"ustar", (PyCFunction)(void (*)(void))ustar, METH_FASTCALL,
     "ustar(buffer, pos, end) -> (typeflag, mode, uid, gid, size, mtime, name, linkname)"
     " | None\n\nThe tar header at buffer[pos:pos + 512] when it takes the fast path;"
     " None for the general rules."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "chrootarchive.tarformat._ustar",
    "The tar reader's fast path for one header, compiled (see reader._ustar_py).",
    0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ustar(void) { return PyModuleDef_Init(&module); }
