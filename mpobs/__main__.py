"""``python -m mpobs``: the same as the ``mpobs`` command."""

from mpobs.cli import main

main()
