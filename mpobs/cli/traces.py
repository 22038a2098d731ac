"""``mpobs traces``: the traces of a --save-traces file, one JSON document a line, as /trace shows them."""

from __future__ import annotations

import sys

import click

from mpobs.errors import MpobsError


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--line",
    "lines",
    multiple=True,
    metavar="N|NAME:N",
    help="Only this line: its number in the run, or its id (input name and line, as traces show it). Repeatable.",
)
@click.option(
    "--status", metavar="STATUS", help="Only traces with a step of this status: emit, drop, error, route:NAME."
)
@click.option(
    "--processor", metavar="ID", help="Only traces that reached this processor (with --status: had that status there)."
)
def traces(path: str, lines: tuple[str, ...], status: str | None, processor: str | None) -> None:
    """Print the traces a run saved with --save-traces (JSON Lines, in the order the run saved them).

    The file records what each processor did to each batch; this replays it into one
    document per traced line: its id, original text, every step (processor, status,
    timestamp, what changed) and what it became in the output.
    """
    import json  # here: `mpobs process` imports this module too (for its command), and reads no JSON

    from mpobs.tracing.tracefile import TraceReader

    wanted: list[int | str] = [int(x) if x.isdecimal() else x for x in lines]
    reader = TraceReader(path, wanted or None)
    out = sys.stdout
    shown = 0
    try:
        for t in reader:
            if (status or processor) and not any(
                (status is None or step["status"] == status) and (processor is None or step["processor"] == processor)
                for step in t["path"]
            ):
                continue
            out.write(json.dumps(t) + "\n")
            shown += 1
        out.flush()
    except MpobsError as err:
        click.echo(f"mpobs: error: {err}", err=True)
        sys.exit(err.exit_code)
    except BrokenPipeError:  # `mpobs traces t.jsonl | head`: the reader has what it wanted
        sys.stderr.close()
        sys.exit(0)
    if reader.empty:
        click.echo(f"mpobs: note: {path} is empty: no traces", err=True)
    if reader.truncated:
        click.echo(
            f"mpobs: note: {path} ends in a record cut short (the run was killed while writing it); "
            "every trace before it is here",
            err=True,
        )
    if lines and not shown:
        click.echo(f"mpobs: note: no saved trace of line {', '.join(lines)}", err=True)
