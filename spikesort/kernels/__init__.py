"""Numba kernels. Each has a plain numpy twin in the tests that it is checked against."""

# fastmath lets numba vectorise the float reductions; contract/reassoc only, so NaN and inf
# checks elsewhere keep their meaning
FASTMATH = {"contract", "reassoc", "arcp"}

# Compile time (issue 16): kernels allocate with np.empty and fill with ``a[:] = v`` rather than
# np.zeros/np.full (each of those overloads compiles two or three more functions per dtype and
# shape), copy with element loops rather than slice assignment (a shape-checked copy compiles a
# formatted error message), and are called with one set of argument types each.

# every kernel releases the GIL and is cached on disk; none gets numba's C-callable wrapper (made
# for use as a function pointer, which nothing here does: a tenth of the compiled machine code)
JIT = {"nogil": True, "cache": True, "no_cfunc_wrapper": True}
# a kernel that only other kernels call needs no Python-callable wrapper either
INNER = {**JIT, "no_cpython_wrapper": True}
