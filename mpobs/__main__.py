"""``python -m mpobs`` and the ``mpobs`` command."""

import signal
import sys


def main() -> None:
    # logrotate's postrotate may send SIGHUP (reopen the output) while we are still
    # starting: ignored until the run installs its handler (mpobs.run.coordinator), never fatal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if sys.argv[1:2] == ["process"]:
            from mpobs.cli.early import start_resource_tracker

            start_resource_tracker()
        from mpobs.cli.commands import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("mpobs: interrupted\n")
        sys.exit(130)
    cli_main(prog_name="mpobs")  # also under `python -m mpobs`: messages name the command users type


if __name__ == "__main__":
    main()
