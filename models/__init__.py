"""The model core: the transformer, its residual connections and their kernels, and their diagnostics.

Nothing here imports from the other packages of the repository; they build on it.
"""
