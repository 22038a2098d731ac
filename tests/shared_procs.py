"""Processes a module-scoped fixture shares between tests (a Dask cluster): not leftovers of one test.

One module, imported by the same name everywhere, so that conftest (loaded by pytest as
``conftest``) and the tests (``tests.conftest``) see the same set.
"""

SHARED_PIDS: set[int] = set()
