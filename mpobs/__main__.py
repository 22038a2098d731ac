"""``python -m mpobs`` and the ``mpobs`` command."""

import signal


def main() -> None:
    # logrotate's postrotate may send SIGHUP (reopen the output) while we are still
    # starting: ignored until the run installs its handler (mpobs.coordinator), never fatal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from mpobs.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
