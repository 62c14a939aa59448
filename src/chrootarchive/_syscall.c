/*
 * chrootarchive._syscall: Linux system calls by number, and dlopen, for _linux.py.
 *
 * Why: Python 3.11 has no unshare, mount, pivot_root, openat2 or capset, and reaching
 * them through ctypes costs the worker about 3.5 ms of its start (the ctypes package
 * and its types: a third of what a one-file untar spends booting its worker; issue 16).
 * This module is the same calls without ctypes. It is optional, as the other two
 * compiled modules are: without it _linux.py makes the same calls through ctypes, and
 * tests/test_syscall.py runs the two on the same calls.
 *
 * What: syscall(nr, *args) makes system call ``nr`` with up to six arguments, each an
 * int (a C long, or an unsigned long: -2**63 <= int < 2**64; OverflowError beyond),
 * None (NULL), bytes (a pointer to its data, which the call may only read) or a
 * bytearray (a pointer to its data, which the call may write). It
 * returns the call's result, or -errno when the call failed: the kernel's own
 * convention, so that the caller (_linux._check) names the call in its error. The GIL
 * is released during the call; the arguments stay referenced by the call's tuple, and
 * a bytearray's buffer is held (it cannot be resized) until the call has returned.
 * address(data) is the address of a bytes object's data, for the one structure that
 * holds a pointer (seccomp's sock_fprog); the caller keeps the bytes alive across the
 * call that reads it. dlopen(name) loads a shared library RTLD_NOW | RTLD_GLOBAL and
 * keeps it loaded (True), or returns False.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "stable_refs.h"  /* after Python.h: references counted alike by every version */
#include <dlfcn.h>
#include <errno.h>
#include <unistd.h>

#define MAX_ARGS 6

static PyObject *sys_syscall(PyObject *self, PyObject *args)
{
    Py_ssize_t count = PyTuple_Size(args);
    long values[MAX_ARGS] = {0};
    Py_buffer held[MAX_ARGS];
    int holding[MAX_ARGS] = {0};
    long nr, result;
    int saved_errno = 0;
    PyObject *answer = NULL;

    if (count < 1 || count > MAX_ARGS + 1) {
        PyErr_SetString(PyExc_TypeError, "syscall() takes a number and up to 6 arguments");
        return NULL;
    }
    nr = PyLong_AsLong(PyTuple_GetItem(args, 0));
    if (nr == -1 && PyErr_Occurred())
        return NULL;
    for (Py_ssize_t i = 1; i < count; i++) {
        PyObject *arg = PyTuple_GetItem(args, i);
        if (arg == Py_None) {
            values[i - 1] = 0;
        } else if (PyLong_Check(arg)) {
            /* a C long, or an unsigned long as the kernel reads its registers */
            values[i - 1] = PyLong_AsLong(arg);
            if (values[i - 1] == -1 && PyErr_Occurred()) {
                unsigned long as_unsigned;
                if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                    goto done;
                PyErr_Clear();
                as_unsigned = PyLong_AsUnsignedLong(arg);
                if (as_unsigned == (unsigned long)-1 && PyErr_Occurred())
                    goto done;
                values[i - 1] = (long)as_unsigned;
            }
        } else if (PyBytes_Check(arg)) {
            values[i - 1] = (long)PyBytes_AsString(arg);
        } else if (PyByteArray_Check(arg)) {
            if (PyObject_GetBuffer(arg, &held[i - 1], PyBUF_WRITABLE) < 0)
                goto done;
            holding[i - 1] = 1;
            values[i - 1] = (long)held[i - 1].buf;
        } else {
            PyErr_Format(PyExc_TypeError,
                         "syscall() argument %zd must be int, None, bytes or bytearray", i);
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    result = syscall(nr, values[0], values[1], values[2], values[3], values[4], values[5]);
    if (result == -1)
        saved_errno = errno;
    Py_END_ALLOW_THREADS
    answer = PyLong_FromLong(result == -1 ? -saved_errno : result);
done:
    for (int i = 0; i < MAX_ARGS; i++)
        if (holding[i])
            PyBuffer_Release(&held[i]);
    return answer;
}

static PyObject *sys_address(PyObject *self, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "address() takes bytes");
        return NULL;
    }
    return PyLong_FromUnsignedLong((unsigned long)PyBytes_AsString(data));
}

static PyObject *sys_dlopen(PyObject *self, PyObject *name)
{
    PyObject *encoded;
    const char *path;
    void *handle;

    if (!PyUnicode_FSConverter(name, &encoded))
        return NULL;
    path = PyBytes_AsString(encoded);
    Py_BEGIN_ALLOW_THREADS
    handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    return PyBool_FromLong(handle != NULL);
}

static PyMethodDef methods[] = {
    {"syscall", sys_syscall, METH_VARARGS,
     "syscall(nr, *args): the result, or -errno (ints, None, bytes, bytearray)."},
    {"address", sys_address, METH_O, "address(data): where a bytes object's data is."},
    {"dlopen", sys_dlopen, METH_O, "dlopen(name): load a library for good (RTLD_GLOBAL)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "chrootarchive._syscall",
    "Linux system calls by number, and dlopen (see _syscall.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__syscall(void)
{
    return PyModule_Create(&module);
}
