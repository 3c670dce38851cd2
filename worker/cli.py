"""The ``sop-worker`` command line: a thin click layer over :mod:`worker.app`.

Exit codes: 0 ok; 1 some actions failed; 2 usage, configuration or authentication error;
3 another run holds the lock; 4 stopped early, on the API budget reserve or on SIGTERM/SIGINT
(the next run resumes); 5 the outcome of some writes is unknown after the run's own reconcile
(the next run reconciles them).
One error boundary (:class:`_Group`) turns the worker's own errors into one line on stderr
(one ``cli.error`` event when logs are JSON). Every output stream scrubs configured secrets.
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar, cast

import click
import structlog
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from worker import __version__, report
from worker.actions import STOPPED_AUTH, STOPPED_SIGNAL, Outcome
from worker.app import (
    App,
    check_as_of,
    load_rules_and_mapping,
    new_run_id,
    open_app,
    org_today,
    resolve_as_of,
    run_lock,
    utc_now,
)
from worker.canary import Canary
from worker.errors import (
    ApiLimitError,
    AuthError,
    ConfigError,
    DryRunWriteError,
    LockHeldError,
    SalesforceError,
    SopWorkerError,
)
from worker.findings import Severity
from worker.logs import configure_logging, log_fatal
from worker.mapping import load_mapping
from worker.pipeline import RunReport
from worker.plan import Plan
from worker.ports import ProgressPort
from worker.progress import ProgressBars, ProgressLog
from worker.records import full_record_id
from worker.redact import REDACTED, ScrubbedStream, scrub
from worker.rules import ALL_RULES, rule_models
from worker.settings import WorkerSettings, load_settings, parse_as_of
from worker.signals import stop_on_signals
from worker.store import Store, copy_store, resolve_store_arg

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED, EXIT_STOPPED, EXIT_UNKNOWN = 0, 1, 2, 3, 4, 5
F = TypeVar("F", bound=Callable[..., Any])
_JSON_LOGS = "sop_worker.json_logs"  # click context meta: how this invocation logs
log = structlog.get_logger()


class _Group(click.Group):
    """The one error boundary: the worker's errors become a message and an exit code.

    The message is one ``cli.error`` event at error level when logs are JSON lines, else a
    plain ``Error: ...`` line on stderr; either way with every configured secret scrubbed.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LockHeldError as exc:
            _fail(ctx, exc, EXIT_LOCKED)
        except DryRunWriteError:
            raise  # a bug: keep the traceback
        except (ConfigError, AuthError) as exc:
            _fail(ctx, exc, EXIT_CONFIG)
        except ApiLimitError as exc:
            _fail(ctx, exc, EXIT_STOPPED)
        except SopWorkerError as exc:
            _fail(ctx, exc, EXIT_FAILED)


def _fail(ctx: click.Context, exc: SopWorkerError, code: int) -> NoReturn:
    message = scrub(str(exc))
    if not log_fatal(message, code, ctx.meta.get(_JSON_LOGS)):
        click.echo(f"Error: {message}", err=True)
    ctx.exit(code)


def exit_code(result: RunReport) -> int:
    """Failed actions need a look (1); a stop on the API reserve or on a signal resumes by
    itself next run (4); writes whose answer was lost and that the org does not show yet are
    reconciled by the next run (5). Records skipped as unreadable keep 0: the status says
    "ok, with errors". A run stopped by the sign-in is exit 2 (``_raise_if_signed_out``)."""
    if result.failed:
        return EXIT_FAILED
    if result.stop_reason:
        return EXIT_STOPPED
    return EXIT_UNKNOWN if result.unknown else EXIT_OK


def _raise_if_signed_out(result: RunReport) -> None:
    """A run stopped because the org refused the credentials (or the session expired and
    cannot be renewed) ends as that error: exit 2 with the org's own words."""
    if result.stop_reason == STOPPED_AUTH:
        raise AuthError(result.stopped or "authentication failed")


def _settings_options(func: F, mapping_help: str = "Mapping file (env WORKER_MAPPING).") -> F:
    options = [
        click.option(
            "--db-path",
            type=click.Path(path_type=Path),
            envvar=None,
            help="SQLite file (env WORKER_DB_PATH).",
        ),
        click.option("--mapping", type=click.Path(path_type=Path), help=mapping_help),
        click.option(
            "--local-org",
            type=click.Path(path_type=Path),
            help="Org folder on disk to use instead of Salesforce (env WORKER_LOCAL_ORG).",
        ),
        click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR (env WORKER_LOG_LEVEL)."),
        click.option(
            "--log-format",
            type=click.Choice(["auto", "json", "console"]),
            help="Log format (env WORKER_LOG_FORMAT).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _format_option(*choices: str) -> Callable[[F], F]:
    """``--format`` (as ``fmt``; the first choice is the default) and ``--json``, the sf
    CLI's shorthand for machine output (``--format json``)."""
    assert "json" in choices

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, fmt: str | None, as_json: bool, **kwargs: Any) -> Any:
            if as_json and fmt not in (None, "json"):
                raise click.UsageError(f"--json and --format {fmt} disagree: give one of them")
            return func(*args, fmt="json" if as_json else fmt or choices[0], **kwargs)

        decorated = click.option(
            "--json", "as_json", is_flag=True, help="Machine output: the same as --format json."
        )(wrapper)
        decorated = click.option(
            "--format",
            "fmt",
            type=click.Choice(choices),
            help=f"Output format (default: {choices[0]}).",
        )(decorated)
        return decorated  # type: ignore[return-value]

    return decorate


class _DateType(click.ParamType[dt.date, Any]):
    """YYYY-MM-DD, a real calendar date (2026-02-30 is refused, saying why)."""

    name = "YYYY-MM-DD"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.date:
        if isinstance(value, dt.date):
            return value
        try:
            return parse_as_of(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _RecordIdType(click.ParamType[str, Any]):
    """A record Id of 15 or 18 characters, as the 18-character Id the org returns."""

    name = "RECORD_ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return full_record_id(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DATE, RECORD_ID = _DateType(), _RecordIdType()
RULE_IDS = click.Choice([rule.id for rule in ALL_RULES])


def _as_of_option(func: F) -> F:
    return click.option(
        "--as-of",
        type=DATE,
        help="Evaluate as of this date, YYYY-MM-DD, within 5 years of the org's today (env "
        "WORKER_AS_OF). Default: the local org's manifest date, else today in the org's time "
        "zone.",
    )(func)


def _as_of_intended_option(func: F) -> F:
    return click.option(
        "--as-of-is-intended",
        "intended",
        is_flag=True,
        help="Write to a live org as of another day than its today (--as-of, WORKER_AS_OF or "
        "the plan's date); without it that is refused.",
    )(func)


def _no_pull_option(func: F) -> F:
    return click.option(
        "--no-pull",
        is_flag=True,
        help="Use the cache as it is; do not read the org first (needs no credentials).",
    )(func)


def _results_option(func: F) -> F:
    return click.option(
        "--results",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write a result file (CSV, as Data Loader does): one row per action with its "
        "key, record Id, outcome, error code, message, created Id, before and after.",
    )(func)


def _canary_options(func: F) -> F:
    """``--limit``, ``--owner`` and ``--sample``, given to the command as ``canary``."""

    @functools.wraps(func)
    def wrapper(
        *args: Any, limit: int | None, owner: str | None, sample: float | None, **kwargs: Any
    ) -> Any:
        return func(*args, canary=Canary(limit, owner, sample), **kwargs)

    options = [
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="Canary: write to at most this many records (in plan order); the rest stays "
            "planned for the next run.",
        ),
        click.option(
            "--owner",
            type=RECORD_ID,
            help="Canary: only the records this user (Id) owns.",
        ),
        click.option(
            "--sample",
            type=click.FloatRange(0, 100, min_open=True),
            help="Canary: a stable PERCENT sample of the records, chosen by record Id (the "
            "same records every time).",
        ),
    ]
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def _settings(kwargs: dict[str, Any]) -> WorkerSettings:
    settings = load_settings(**kwargs)
    json_logs = configure_logging(settings.log_level, settings.log_format)
    click.get_current_context().meta[_JSON_LOGS] = json_logs
    return settings


def _progress(settings: WorkerSettings) -> AbstractContextManager[ProgressPort]:
    """Progress bars on a terminal, else a ``progress`` log event every few seconds."""
    if sys.stderr.isatty():
        return ProgressBars(Console(stderr=True))
    return ProgressLog(settings.progress_seconds)


class _Console(Console):
    """Scrubs secrets from each text before rich lays it out (a folded cell would split one)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(scrub(text, escape(REDACTED)), **kwargs)


def _console() -> Console:
    return _Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sop-worker")
def cli() -> None:
    """Turn written SOPs into automatic, auditable Salesforce updates.

    Each cycle reads Salesforce (or a local org folder) into a SQLite cache, runs the SOP
    rules as of a date, and writes the resulting plan back exactly once, recording every
    change in an audit log. Exit codes: 0 ok, 1 some actions failed, 2 usage,
    configuration or authentication error, 3 another run holds the lock, 4 stopped early
    on the API budget reserve or on SIGTERM/SIGINT (the next run resumes), 5 the outcome
    of some writes is unknown after the run's own reconcile (the next run reconciles them).

    SIGTERM or SIGINT during a run (run, plan, apply): no new page is read and no new
    write batch started, the request in flight gets up to 5 s to answer, the run is
    recorded as stopped and the command exits 4 within seconds.
    """


@cli.command()
@_settings_options
@_as_of_option
@_as_of_intended_option
@click.option("--dry-run", is_flag=True, help="Plan and show, write nothing.")
@click.option(
    "--loop",
    is_flag=True,
    help="Run cycles until SIGTERM/SIGINT (worker dyno): exit 0 when stopped between "
    "cycles, 4 when the stop cut a cycle short.",
)
@click.option(
    "--interval",
    type=click.IntRange(min=10),
    default=None,
    help="Seconds between cycles with --loop (env WORKER_INTERVAL_SECONDS).",
)
@_results_option
@_canary_options
@_format_option("table", "json")
def run(
    dry_run: bool,
    loop: bool,
    interval: int | None,
    intended: bool,
    results: Path | None,
    canary: Canary,
    fmt: str,
    **kwargs: Any,
) -> None:
    """One cycle: pull, plan, apply. With --loop, repeat every --interval seconds.

    `--limit`, `--owner` and `--sample` apply to a subset of the records first (a
    canary); the rest stays planned for the next run. `--json` prints the run's summary
    as one JSON object."""
    if results and (dry_run or loop):
        raise click.UsageError("--results is for one writing cycle: not with --dry-run or --loop")
    if canary and (dry_run or loop):
        raise click.UsageError(
            "--limit, --owner and --sample are for one writing cycle: not with --dry-run or --loop"
        )
    settings = _settings({**kwargs, "interval_seconds": interval})
    with stop_on_signals() as stop:
        cycle = functools.partial(
            _one_cycle,
            settings,
            write=not dry_run,
            intended=intended,
            results=results,
            fmt=fmt,
            stop=stop,
            canary=canary,
        )
        if not loop:
            result = cycle()
            _raise_if_signed_out(result)
            sys.exit(exit_code(result))
        _loop(cycle, settings, stop)


def _loop(cycle: Callable[[], RunReport], settings: WorkerSettings, stop: threading.Event) -> None:
    worst = EXIT_OK
    while not stop.is_set():
        try:
            result = cycle()
            _raise_if_signed_out(result)  # no later cycle can do better without new credentials
            worst = max(worst, EXIT_FAILED if result.failed else EXIT_OK)
            if result.stop_reason == STOPPED_SIGNAL and worst == EXIT_OK:
                worst = EXIT_STOPPED  # the stop cut this cycle short: the next run resumes
        except LockHeldError as exc:
            log.warning("run.locked", message=str(exc))
        except AuthError:
            raise  # no later cycle can do better without new credentials: exit 2
        except SalesforceError as exc:
            # An org that is down or refusing for now: the next cycle tries again.
            log.error("run.cycle_failed", error=str(exc))
            worst = EXIT_FAILED
        stop.wait(settings.interval_seconds)
    log.info("run.loop_stopped")
    sys.exit(worst)


def _one_cycle(
    settings: WorkerSettings,
    *,
    write: bool,
    intended: bool,
    results: Path | None,
    fmt: str,
    stop: threading.Event,
    canary: Canary | None = None,
) -> RunReport:
    run_id = new_run_id()
    with (
        _progress(settings) as progress,
        open_app(settings, write=write, stop=stop, progress=progress) as app,
        run_lock(app, run_id, "run" if write else "dry-run"),
    ):
        as_of = resolve_as_of(settings, app.mapping, app.clock, write=write, intended=intended)
        with _results_written(app, run_id, results):
            result = app.pipeline.run(run_id, as_of, canary=canary)
    if fmt == "json":
        click.echo(report.machine_text("json", result.summary()), nl=False)
        return result
    console = _console()
    if not write and result.plan is not None:
        report.print_plan(result.plan, console)
    if sys.stdout.isatty() or not write:
        report.print_summary(result.summary(), console)
    return result


@contextmanager
def _results_written(app: App, run_id: str, path: Path | None) -> Iterator[None]:
    """After the block, even one that failed: the run's result file, if one was asked for."""
    try:
        yield
    finally:
        if path:
            path.write_text(report.results_csv(app.store.run_results(run_id)), encoding="utf-8")
            click.echo(f"Results written to {path}", err=True)


@cli.command()
@_settings_options
@_as_of_option
@_format_option("table", "json", "csv")
@click.option("--rule", type=RULE_IDS, help="Only this rule's actions.")
@click.option(
    "--record", "record_id", type=RECORD_ID, help="Only this record's actions (15 or 18 chars)."
)
@click.option("--out", type=click.Path(path_type=Path), help="Write the plan to this file.")
def plan(
    fmt: str, rule: str | None, record_id: str | None, out: Path | None, **kwargs: Any
) -> None:
    """Dry run: pull, then show what the rules would do (a summary by rule and step,
    then every action, and why).

    Nothing is written to Salesforce. `--rule` and `--record` narrow the plan to one rule
    or one record. `--out plan.json` saves a plan file that `sop-worker apply` applies
    exactly; `--out plan.csv` saves the CSV view, for reading (apply takes the JSON file).
    """
    settings = _settings(kwargs)
    run_id = new_run_id()
    with (
        stop_on_signals() as stop,
        _progress(settings) as progress,
        open_app(settings, write=False, stop=stop, progress=progress) as app,
        run_lock(app, run_id, "dry-run"),
    ):
        result = app.pipeline.run(run_id, resolve_as_of(settings, app.mapping, app.clock))
        if result.stop_reason == STOPPED_SIGNAL:
            click.echo(f"Stopped before the plan was complete: {result.stopped}", err=True)
            sys.exit(EXIT_STOPPED)
        _raise_if_signed_out(result)
        if result.plan is None:  # the API reserve was reached before anything was planned
            raise ApiLimitError(result.stopped or "stopped on the API budget reserve")
        the_plan = app.pipeline.narrow(result.plan, rule=rule, record_id=record_id)
    if record_id and not (the_plan.actions or the_plan.skipped or the_plan.errors):
        click.echo(
            f"Nothing planned for {record_id}: `sop-worker explain {record_id}` says why.",
            err=True,
        )
    if out:
        text = (
            the_plan.to_json()
            if out.suffix != ".csv" and fmt != "csv"
            else report.plan_csv(the_plan)
        )
        out.write_text(text, encoding="utf-8")
        click.echo(f"Plan with {len(the_plan.actions)} action(s) written to {out}", err=True)
        if fmt == "table":
            return
    if fmt == "json":
        click.echo(the_plan.to_json(), nl=False)
    elif fmt == "csv":
        click.echo(report.plan_csv(the_plan), nl=False)
    else:
        report.print_plan(the_plan, _console())


@cli.command()
@_settings_options
@_as_of_intended_option
@_results_option
@_canary_options
@_format_option("table", "json")
@click.argument("plan_file", type=click.Path(path_type=Path, dir_okay=False))
def apply(
    plan_file: Path,
    intended: bool,
    results: Path | None,
    canary: Canary,
    fmt: str,
    **kwargs: Any,
) -> None:
    """Apply exactly the actions of a saved plan file (the JSON one).

    `--limit`, `--owner` and `--sample` apply the plan to a subset of its records first
    (a canary); applying the same file again without them applies the rest (keys already
    applied are never applied again).

    Only on the org the plan was made on (its Organization Id): another org exits 2.
    Each target is read again first: one deleted, converted, closed or otherwise changed
    since it was planned is a conflict, not written; keys already applied are never
    applied again. On a live org a plan made as of another day than the org's today is
    refused unless --as-of-is-intended.
    """
    settings = _settings(kwargs)
    saved = Plan.read(plan_file)
    run_id = new_run_id()
    with (
        stop_on_signals() as stop,
        _progress(settings) as progress,
        open_app(settings, write=True, stop=stop, progress=progress) as app,
        run_lock(app, run_id, "apply"),
    ):
        check_as_of(
            saved.as_of,
            org_today(settings, app.mapping, app.clock),
            settings,
            write=True,
            intended=intended,
            what=f"{plan_file} was planned as of {saved.as_of}, which",
        )
        with _results_written(app, run_id, results):
            result = app.pipeline.apply_plan_file(run_id, saved, canary)
    if fmt == "json":
        click.echo(report.machine_text("json", result.summary()), nl=False)
    else:
        report.print_summary(result.summary(), _console())
    _raise_if_signed_out(result)
    sys.exit(exit_code(result))


@cli.command()
@_settings_options
@_format_option("table", "json")
def rules(fmt: str, **kwargs: Any) -> None:
    """List the rules, each with its SOP file, steps, and whether the mapping enables it."""
    settings = _settings({**kwargs})
    mapping, all_rules = load_rules_and_mapping(settings)
    if fmt == "json":
        click.echo(report.machine_text("json", report.rule_records(mapping, all_rules)), nl=False)
    else:
        report.print_rules(mapping, all_rules, _console())


@cli.command()
@_settings_options
@click.option("--record", "record_id", type=RECORD_ID, help="Only this record (15 or 18 chars).")
@click.option("--rule", type=RULE_IDS, help="Only this rule.")
@click.option(
    "--run", "run_id", help="Only this run: its id, or its first characters as tables show."
)
@click.option("--since", type=DATE, help="From this date (UTC).")
@click.option("--outcome", type=click.Choice([o.value for o in Outcome]), help="Only this outcome.")
@_format_option("table", "json", "jsonl", "csv")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="At most this many rows, newest first; 0 for all.",
)
def audit(
    record_id: str | None,
    rule: str | None,
    run_id: str | None,
    since: dt.date | None,
    outcome: str | None,
    fmt: str,
    limit: int,
    **kwargs: Any,
) -> None:
    """Show the audit log, newest first: every intent and outcome, with before/after values
    and errorCodes."""
    settings = _settings(kwargs)
    with Store.open(settings.store_target) as store:
        rows = store.audit_rows(
            record_id=record_id,
            rule=rule,
            run_id=_one_run(store, run_id) if run_id else None,
            since=since,
            outcome=outcome,
            limit=limit or None,
            newest_first=True,
        )
    if fmt == "table":
        report.print_audit(rows, _console())
    else:
        click.echo(
            report.machine_text(fmt, report.audit_records(rows), report.AUDIT_COLUMNS), nl=False
        )


def _one_run(store: Store, prefix: str) -> str:
    """The run a full id or a prefix of one names; none or several is a usage error."""
    found = store.run_ids(prefix)
    if len(found) == 1:
        return found[0]
    if not found:
        raise click.BadParameter(f"no run id starts with {prefix!r} (see sop-worker runs)")
    raise click.BadParameter(
        f"{prefix!r} starts {len(found)} run ids ({', '.join(found[:5])}): give more of it"
    )


@cli.command()
@_settings_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@_format_option("table", "json", "jsonl")
def runs(limit: int, fmt: str, **kwargs: Any) -> None:
    """Recent runs, newest first: status (ok; ok, with errors; unknown; failed; stopped;
    running; killed; locked; error), actions by rule and outcome, record errors, API calls
    and seconds."""
    settings = _settings(kwargs)
    with Store.open(settings.store_target) as store:
        found = store.runs(limit=limit)
    if fmt == "table":
        report.print_runs(found, _console())
    else:
        click.echo(report.machine_text(fmt, report.run_records(found)), nl=False)


@cli.command()
@_settings_options
@_as_of_option
@click.argument("record_id", type=RECORD_ID)
@_no_pull_option
@_format_option("table", "json")
def explain(record_id: str, no_pull: bool, fmt: str, **kwargs: Any) -> None:
    """Why: each rule's verdict on a record, its past SOP actions and the next ones due.

    RECORD_ID may have 15 or 18 characters."""
    settings = _settings(kwargs)
    with open_app(settings, write=False, connect=not no_pull) as app:
        as_of = resolve_as_of(settings, app.mapping, app.clock)
        if not no_pull:
            run_id = new_run_id()
            with run_lock(app, run_id):
                app.pipeline.pull(RunReport(run_id, as_of, True), app.clock())
        found = app.pipeline.explain(record_id, as_of)
    if found.record is None:
        raise ConfigError(f"record {record_id} is not in the cache (is it in a mapped object?)")
    if fmt == "json":
        click.echo(report.machine_text("json", report.explanation_record(found, as_of)), nl=False)
    else:
        report.print_explanation(found, as_of, _console())


@cli.command("report")
@_settings_options
@_as_of_option
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    help="Days the report covers, ending on the as-of date (default: [report] period_days).",
)
@click.option(
    "--record", "record_id", type=RECORD_ID, help="Add this record's SOP timeline (15 or 18 chars)."
)
@click.option(
    "--simulate-days",
    type=click.IntRange(1, 366),
    help="Add the forward simulation of this many days (see sop-worker simulate).",
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write to this file.")
@_format_option("html", "json", "csv")
def report_command(
    days: int | None,
    record_id: str | None,
    simulate_days: int | None,
    out: Path | None,
    fmt: str,
    **kwargs: Any,
) -> None:
    """The report over a period, from the store alone (no API call, nothing written).

    Targets met or missed first (the [report] figures of SOP 004, each formula on the
    page), then per rule and SOP step the actions due, done, skipped (with the catch-up
    reason), failed (errorCode) and conflicts, a chart over days, the API calls per run,
    and the records overdue or at risk per rule. HTML (one self-contained file, default),
    JSON or CSV of the same figures. The as-of date defaults to the newest run's.
    --simulate-days adds the forward simulation's timeline (see sop-worker simulate).
    """
    from worker.reporting import build, gather, page  # charts: only needed here
    from worker.reporting.simulate import Assumptions

    settings = _settings(kwargs)
    with open_app(settings, write=False, connect=False) as app:
        today = org_today(settings, app.mapping, app.clock)
        as_of = settings.as_of or gather.default_as_of(app, today)
        if settings.as_of:
            check_as_of(as_of, today, settings, write=False, intended=False, what="--as-of")
        found = gather.make_report(
            app,
            as_of,
            days or app.mapping.report.period_days,
            record_id,
            (simulate_days, Assumptions()) if simulate_days else None,
        )
    if fmt == "json":
        text = report.machine_text("json", found)
    elif fmt == "csv":
        text = report.machine_text("csv", build.report_rows(found), build.CSV_COLUMNS)
    else:
        text = page.render(found)
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    head = found["headline"]
    click.echo(
        f"Report written to {out}: {head['targets_met']} target(s) met, "
        f"{head['targets_missed']} missed, {head['not_measured']} not measured; "
        f"{head['actions_done']} SOP action(s) done in {head['runs']} run(s)",
        err=True,
    )


@cli.command()
@_settings_options
@_as_of_option
@click.option(
    "--days", type=click.IntRange(1, 366), default=14, show_default=True, help="Days to simulate."
)
@click.option(
    "--every-hours",
    type=click.IntRange(1, 24),
    default=24,
    show_default=True,
    help="Hours between two simulated evaluations (fewer for minute-level SLAs).",
)
@click.option(
    "--tasks-done/--tasks-open",
    default=True,
    show_default=True,
    help="Assume every Task is done on its due date, or that none is.",
)
@_no_pull_option
@_format_option("table", "json")
def simulate(
    days: int, every_hours: int, tasks_done: bool, no_pull: bool, fmt: str, **kwargs: Any
) -> None:
    """What each rule would do over the next days if nobody answered (read-only).

    From the as-of date on, the cached records are stepped forward in memory: each day
    (or every --every-hours) the rules evaluate them and their plan is applied to the
    copy, as the local org applies it. Nothing is written anywhere (the dry-run sink); it
    costs no API call beyond the one pull (none with --no-pull).
    """
    from worker.reporting import gather
    from worker.reporting.simulate import Assumptions
    from worker.reporting.simulate import simulate as run_simulation

    settings = _settings(kwargs)
    with open_app(settings, write=False, connect=not no_pull) as app:
        as_of = resolve_as_of(settings, app.mapping, app.clock)
        if not no_pull:
            run_id = new_run_id()
            with run_lock(app, run_id):
                app.pipeline.pull(RunReport(run_id, as_of, True), app.clock())
        org = gather.cached_org(app) if no_pull else app.pipeline.org()
        found = run_simulation(app.pipeline, org, as_of, days, Assumptions(tasks_done, every_hours))
    if fmt == "json":
        click.echo(report.machine_text("json", found), nl=False)
    else:
        report.print_simulation(found, _console())


@cli.command()
@functools.partial(
    _settings_options,
    mapping_help="NEW.toml: the changed mapping, compared with the current one (required).",
)
@_as_of_option
@click.option(
    "--current",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The current mapping file (env WORKER_MAPPING, default mappings/default.toml).",
)
@_no_pull_option
@_format_option("table", "json")
def diff(current: Path | None, no_pull: bool, fmt: str, **kwargs: Any) -> None:
    """The impact of a mapping change: today's plan under the current mapping and under
    NEW (--mapping NEW.toml), compared action by action.

    Per rule and SOP step: actions added, removed and changed, and the records affected.
    Both mappings are validated first; nothing is written (the dry-run sink). The cache
    is filled under the current mapping: fields only NEW reads are listed, since the new
    plan sees them empty until a pull under NEW.
    """
    from worker.reporting.diff import diff_plans, plan_under, uncached_fields

    new_mapping = kwargs.pop("mapping")
    if new_mapping is None:
        raise click.UsageError("give the changed mapping: sop-worker diff --mapping NEW.toml")
    settings = _settings({**kwargs, "mapping": current})
    with open_app(settings, write=False, connect=True) as app:
        new = load_mapping(new_mapping, rule_models())
        as_of = resolve_as_of(settings, app.mapping, app.clock)
        if not no_pull:
            run_id = new_run_id()
            with run_lock(app, run_id):
                app.pipeline.pull(RunReport(run_id, as_of, True), app.clock())
        now = app.clock()
        found = diff_plans(
            plan_under(app.pipeline, app.mapping, app.rules, as_of, now),
            plan_under(app.pipeline, new, app.rules, as_of, now),
            current=app.mapping.path,
            new=str(new_mapping),
            uncached=uncached_fields(app.pipeline, new),
        )
    if fmt == "json":
        click.echo(report.machine_text("json", found), nl=False)
    else:
        report.print_mapping_diff(found, _console())


@cli.command()
@_settings_options
@click.argument("run_id")
@click.option(
    "--tasks",
    type=click.Choice(["close", "keep"]),
    default="close",
    show_default=True,
    help="What becomes of the open Tasks the run created.",
)
@click.option(
    "--task-status",
    help="The Status a closed Task is given (default: the first of [tasks] completed_statuses).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Write the undo plan to this file.")
@_no_pull_option
@_format_option("table", "json")
def undo(
    run_id: str,
    tasks: str,
    task_status: str | None,
    out: Path | None,
    no_pull: bool,
    fmt: str,
    **kwargs: Any,
) -> None:
    """A plan reversing run RUN_ID (its id, or its first characters) from the audit's
    before-values; apply it with `sop-worker apply`.

    Field updates and closes are set back where the record still holds what the run
    wrote (else a conflict, listed); the Tasks it created are closed (--tasks keep: left
    open); case comments, sent emails and lead conversions are listed as not reversible.
    Nothing is written by this command.
    """
    from worker.reporting import gather
    from worker.reporting.undo import not_undone_records, undo_plan

    settings = _settings(kwargs)
    with open_app(settings, write=False, connect=not no_pull) as app:
        run = _one_run(app.store, run_id)
        if not no_pull:
            pull_id = new_run_id()
            with run_lock(app, pull_id):
                app.pipeline.pull(
                    RunReport(pull_id, org_today(settings, app.mapping, app.clock), True),
                    app.clock(),
                )
        the_plan, left = undo_plan(
            app.store,
            app.mapping,
            run,
            org=gather.cached_org(app) if no_pull else app.pipeline.org(),
            as_of=org_today(settings, app.mapping, app.clock),
            now=app.clock(),
            tasks=tasks,
            task_status=task_status,
        )
    found = {**the_plan.to_dict(), "undoes_run": run, "not_undone": not_undone_records(left)}
    if out:
        out.write_text(report.machine_text("json", found), encoding="utf-8")
        click.echo(
            f"Undo plan with {len(the_plan.actions)} action(s) written to {out} "
            f"({len(left)} action(s) of run {run} not undone); apply it with "
            f"sop-worker apply {out}",
            err=True,
        )
        if fmt == "table":
            return
    if fmt == "json":
        click.echo(report.machine_text("json", found), nl=False)
        return
    console = _console()
    report.print_plan(the_plan, console)
    report.print_not_undone(found["not_undone"], console)


@cli.command("undo-merge")
@_settings_options
@click.argument("key")
@click.option("--dry-run", is_flag=True, help="Only show what undoing the merge would write.")
@_format_option("table", "json")
def undo_merge(key: str, dry_run: bool, fmt: str, **kwargs: Any) -> None:
    """Undo the merge KEY (its action key, as the audit and the merge's result show it) from
    its snapshot in the org (SOP_Merge_Snapshot__c): undelete the merged records, set the
    master's values back, point the moved Tasks, Events and campaign members back at them.

    Refused (exit 1, saying why) once the org's 15-day recycle window is past, when a merged
    record is not in the recycle bin as the merge left it, or when the master changed since
    the merge. A live org only; with --dry-run it only reads.
    """
    settings = _settings(kwargs)
    if settings.local_org:
        raise ConfigError("undo-merge works on a live org: unset WORKER_LOCAL_ORG / --local-org")
    from worker.salesforce.wiring import undo_merge as undo  # only needed for a live org

    with Store.open(settings.store_target) as store:
        found = undo(
            key,
            dry_run=dry_run,
            store=store,
            state_dir=settings.legacy_state_dir,
            run_id=new_run_id(),
            clock=utc_now,
        )
    if fmt == "json":
        click.echo(report.machine_text("json", found), nl=False)
        return
    for line in found["steps"]:
        click.echo(f"would {line}" if dry_run else line)


@cli.command()
@_settings_options
@_format_option("table", "json")
def doctor(fmt: str, **kwargs: Any) -> None:
    """Check the live org has everything the mapping needs, and say how to fix what it lacks.

    Checks the SF_* settings, signs in, then describes every mapped object: each field the
    rules read must exist and be visible to the integration user, each field they update
    must be updateable, the Task key field must be an External ID, and each picklist value
    the mapping uses must exist and be active. Exit 2 when anything is wrong. Reads only.
    """
    settings = _settings(kwargs)
    if settings.local_org:
        raise ConfigError("doctor checks a live org: unset WORKER_LOCAL_ORG / --local-org")
    mapping, _ = load_rules_and_mapping(settings)
    from worker.salesforce.wiring import check_org  # only needed for a live org

    with Store.open(settings.store_target) as store:
        findings, checked = check_org(mapping, store=store, state_dir=settings.legacy_state_dir)
    if fmt == "json":
        click.echo(report.machine_text("json", report.finding_records(findings)), nl=False)
    else:
        report.print_findings(findings, checked, _console())
    if any(f.severity is Severity.ERROR for f in findings):
        sys.exit(EXIT_CONFIG)


@cli.command()
@_settings_options
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@_format_option("table", "json")
def purge(dry_run: bool, fmt: str, **kwargs: Any) -> None:
    """Remove cached records the rules no longer need, and audit rows and ledger entries,
    older than the mapping's retention periods.

    A record stays while a kept record names it or it is an activity of a kept one. Each
    object purged from is read again in full on the next pull, so a record the org still
    holds comes back and plans after a purge equal plans without it.
    """
    settings = _settings(kwargs)
    mapping, _ = load_rules_and_mapping(settings)
    now = dt.datetime.now(dt.UTC)
    keep = mapping.retention
    with Store.open(settings.store_target) as store:
        removed = store.purge(
            lambda sobject: now - keep.kept_for(sobject),
            now - dt.timedelta(days=keep.audit_days),
            dry_run=dry_run,
        )
    if fmt == "json":
        found = {"dry_run": dry_run, "removed": dict(sorted(removed.items()))}
        click.echo(report.machine_text("json", found), nl=False)
        return
    verb = "would remove" if dry_run else "removed"
    for what, count in sorted(removed.items()):
        click.echo(f"{what}: {verb} {count}")


@cli.group()
def db() -> None:
    """The worker's database: migrate it, copy it between SQLite and PostgreSQL."""


@db.command()
@_settings_options
@_format_option("table", "json")
def migrate(fmt: str, **kwargs: Any) -> None:
    """Create or upgrade the database's tables (also done at every start; a Heroku release
    phase runs this). Two processes migrating at once migrate once."""
    settings = _settings(kwargs)
    with Store.open(settings.store_target) as store:
        if fmt == "json":
            found = {"database": str(store.url), "schema_version": store.version}
            click.echo(report.machine_text("json", found), nl=False)
        else:
            click.echo(f"{store.url}: schema version {store.version}, up to date")


@db.command()
@_settings_options
@_format_option("table", "json")
@click.argument("source")
@click.argument("target")
def copy(source: str, target: str, fmt: str, **kwargs: Any) -> None:
    """Copy the whole store (runs, ledger, audit, cache, watermarks, stored secrets) from
    SOURCE to TARGET: each a SQLite file path or a postgresql:// URL ("env:DATABASE_URL"
    reads the URL from the environment, keeping its password out of the shell history).
    TARGET must hold no runs or audit rows yet."""
    _settings(kwargs)
    with Store.open(resolve_store_arg(source)) as src, Store.open(resolve_store_arg(target)) as dst:
        counts = copy_store(src, dst)
        copied = {"source": str(src.url), "target": str(dst.url), "copied": dict(counts)}
    if fmt == "json":
        click.echo(report.machine_text("json", copied), nl=False)
        return
    click.echo(f"copied {copied['source']} -> {copied['target']}")
    for table, n in counts.items():
        click.echo(f"{table}: {n}")


def main() -> None:
    # Every output stream scrubs the configured secrets, whatever writes to it.
    sys.stdout = cast(TextIO, ScrubbedStream(sys.stdout))
    sys.stderr = cast(TextIO, ScrubbedStream(sys.stderr))
    cli(prog_name="sop-worker")
