"""Numba kernels. Each has a plain numpy twin in the tests that it is checked against."""

# fastmath lets numba vectorise the float reductions; contract/reassoc only, so NaN and inf
# checks elsewhere keep their meaning
FASTMATH = {"contract", "reassoc", "arcp"}
