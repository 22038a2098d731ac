"""The exceptions mpobs raises where it meets the outside world, and their exit codes."""

from __future__ import annotations

# Exit codes, documented in the README's CLI reference.
EXIT_OK = 0
EXIT_FAILED = 1  # the run failed (a task kept killing its worker, an internal error)
EXIT_USAGE = 2  # bad config, bad input, bad option, dashboard cannot bind
EXIT_MAX_ERRORS = 3  # --max-errors reached
EXIT_ALERT = 4  # an alert named by --fail-on-alert fired
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class MpobsError(Exception):
    """Base of every error mpobs reports to a user as a message, not a traceback."""

    exit_code = EXIT_FAILED


class ConfigError(MpobsError, ValueError):
    """The pipeline configuration is invalid."""

    exit_code = EXIT_USAGE


class InputError(MpobsError, OSError):
    """An input or output path cannot be used."""

    exit_code = EXIT_USAGE


class DashboardError(MpobsError):
    """The dashboard cannot start (port in use, host cannot be bound, no token)."""

    exit_code = EXIT_USAGE


def describe(err: BaseException) -> str:
    """An exception in words, ``Type: message``; ``Type`` alone when it has no message (never an empty cause)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class PathIOError(OSError):
    """An OSError that names the file it was about: ``cannot write the output '/x': No space left on device``.

    ``str()`` is that sentence alone (no ``[Errno N]``); ``errno`` stays the original's.
    """

    def __init__(self, err: OSError, doing: str) -> None:
        super().__init__(err.errno, f"{doing}: {err.strerror or describe(err)}")

    def __str__(self) -> str:
        return str(self.strerror)
