"""The model core: the transformer, its residual connections and their kernels, and their diagnostics.

Nothing here imports from the other packages of the repository; they build on it. Importing the package registers
the connection variants (models/connections/__init__.py), which the configuration needs to read `connection.arch`.
"""

from . import connections as connections
