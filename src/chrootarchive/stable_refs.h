/*
 * References counted by the running interpreter, not by the headers it was built with.
 * Included by each compiled module (engine/_finish.c, tarformat/_ustar.c) after Python.h.
 *
 * Why: the modules are built once, for the stable ABI of 3.11, and loaded by every
 * Python from 3.11 on; from 3.12 None, the bools, small ints and interned strings are
 * immortal. The macros below are inline in the headers, and the headers of one version
 * count in a way another does not undo: 3.11's add one to an immortal's count that 3.13
 * never takes away (a True returned by Py_RETURN_TRUE brought the worker down on 3.13:
 * "bool_dealloc"), and take one away from the empty string that 3.13 gave without
 * adding one; 3.13's return None and the bools without a reference at all, which frees
 * None on 3.11 ("none_dealloc"). Py_IncRef and Py_DecRef are the interpreter's own
 * functions, right for every version, at the cost of a call.
 * tests/test_refcounts.py runs both modules under every Python the machine has and
 * checks that those counts do not move.
 */
#ifndef CHROOTARCHIVE_STABLE_REFS_H
#define CHROOTARCHIVE_STABLE_REFS_H

static inline PyObject *stable_new_ref(PyObject *object)
{
    Py_IncRef(object);
    return object;
}

#undef Py_INCREF
#undef Py_XINCREF
#undef Py_DECREF
#undef Py_XDECREF
#undef Py_NewRef
#undef Py_XNewRef
#undef Py_RETURN_NONE
#undef Py_RETURN_TRUE
#undef Py_RETURN_FALSE
/* Py_IncRef and Py_DecRef accept NULL. Py_CLEAR and Py_SETREF expand to these. */
#define Py_INCREF(op) Py_IncRef((PyObject *)(op))
#define Py_XINCREF(op) Py_IncRef((PyObject *)(op))
#define Py_DECREF(op) Py_DecRef((PyObject *)(op))
#define Py_XDECREF(op) Py_DecRef((PyObject *)(op))
#define Py_NewRef(op) stable_new_ref((PyObject *)(op))
#define Py_XNewRef(op) stable_new_ref((PyObject *)(op))
#define Py_RETURN_NONE return stable_new_ref(Py_None)
#define Py_RETURN_TRUE return stable_new_ref(Py_True)
#define Py_RETURN_FALSE return stable_new_ref(Py_False)

#endif
