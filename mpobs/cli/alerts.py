"""``mpobs alerts`` (check rule files, print the defaults) and the ``--alerts`` options of ``mpobs process``.

Nothing heavy at module level: ``mpobs`` imports this for its commands; the rule
parser (pyyaml, promql-parser) loads only when rules are read.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from mpobs.defaults import ALERTS_INTERVAL
from mpobs.errors import EXIT_OK, EXIT_USAGE, ConfigError, MpobsError

#: The options of ``mpobs process`` that go with --alerts (see ``alert_options``).
ALERT_OPTIONS = (
    click.option(
        "--alerts",
        "alert_files",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=str),
        metavar="RULES.yml",
        help="Evaluate these Prometheus alerting-rule files during the run (repeatable; "
        "`mpobs alerts defaults` prints a start).  Firing and resolved alerts go to stderr, /alerts, /metrics "
        "(ALERTS) and --save-metrics.",
    ),
    click.option(
        "--alerts-interval",
        type=click.FloatRange(0.1),
        default=ALERTS_INTERVAL,
        show_default=True,
        metavar="S",
        help="Seconds between evaluations of the --alerts rules (a group's own interval wins).",
    ),
    click.option(
        "--alertmanager",
        metavar="URL",
        help="Also post firing and resolved alerts to this Alertmanager (URL/api/v2/alerts).",
    ),
    click.option(
        "--fail-on-alert",
        multiple=True,
        metavar="NAME|any",
        help="End the run with exit 4 when this alert (or any) fires (repeatable).",
    ),
)


def with_alert_options(fn: Any) -> Any:
    for option in reversed(ALERT_OPTIONS):
        fn = option(fn)
    return fn


def alert_options(
    pipeline: Any,
    files: tuple[str, ...],
    interval: float,
    alertmanager: str | None,
    fail_on: tuple[str, ...],
    given: set[str],
    generator_url: str = "",
) -> Any:
    """The checked ``AlertOptions`` for a run, or None without --alerts; ConfigError (exit 2) says what is wrong."""
    if not files:
        extra = sorted(given & {"alerts_interval", "alertmanager", "fail_on_alert"})
        if extra:
            raise ConfigError(f"{', '.join('--' + n.replace('_', '-') for n in extra)} need --alerts RULES.yml")
        return None
    from mpobs.alerts.rules import load_rules
    from mpobs.alerts.watch import AlertOptions
    from mpobs.metrics.series import pipeline_series_names

    known = pipeline_series_names(pipeline)
    rules = [rule for path in files for rule in load_rules(path, known)]
    names = {r.name for r in rules}
    unknown = sorted(set(fail_on) - names - {"any"})
    if unknown:
        raise ConfigError(
            f"--fail-on-alert {', '.join(unknown)}: no such alert in {', '.join(files)} "
            f"(the rules name {', '.join(sorted(names)) or 'none'}; or give 'any')"
        )
    if alertmanager is not None and not alertmanager.startswith(("http://", "https://")):
        raise ConfigError(f"--alertmanager must be an http:// or https:// URL, got {alertmanager!r}")
    return AlertOptions(tuple(rules), interval, alertmanager, tuple(fail_on), generator_url)


@click.group()
def alerts() -> None:
    """Alerting rules in Prometheus's rule-file syntax: check them, or print the defaults."""


@alerts.command("check")
@click.argument("rule_files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=str),
    help="Also check that the rules' metrics exist for this pipeline.",
)
def alerts_check(rule_files: tuple[str, ...], config_path: str | None) -> None:
    """Check rule files as `promtool check rules` does, and that mpobs can evaluate them (exit 0, or 2)."""
    from mpobs.alerts.rules import RuleFileError, load_rules
    from mpobs.metrics.series import pipeline_series_names
    from mpobs.pipeline.config import load_config

    try:
        known = pipeline_series_names(load_config(config_path)) if config_path else None
    except MpobsError as err:
        click.echo(f"mpobs: error: {err}", err=True)
        sys.exit(err.exit_code)
    failed = False
    for path in rule_files:
        click.echo(f"Checking {path}")
        try:
            rules = load_rules(path, known)
        except RuleFileError as err:
            failed = True
            click.echo("  FAILED:\n" + "".join(f"    {p}\n" for p in err.problems), nl=False)
            continue
        click.echo(f"  SUCCESS: {len(rules)} rules found")
    sys.exit(EXIT_USAGE if failed else EXIT_OK)


@alerts.command("defaults")
def alerts_defaults() -> None:
    """Print mpobs's default alerting rules (error ratio, throughput drop, stalled run, worker restart)."""
    from mpobs.alerts.rules import defaults_text

    click.echo(defaults_text(), nl=False)
