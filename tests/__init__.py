"""The test suite, a package: conftest and the helper modules are imported once, as ``tests.<name>``."""
