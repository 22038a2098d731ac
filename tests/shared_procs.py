"""Processes a module-scoped fixture shares between tests (a Dask cluster): not leftovers of one test.

One module, imported by the same name everywhere (``tests.shared_procs``), so that conftest
and the tests see the same set.
"""

SHARED_PIDS: set[int] = set()
