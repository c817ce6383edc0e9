"""The `hdetach` commands on existing studies: `studies list|show|watch|cancel|delete`, `status` (an
alias of `studies show`), `requeue`, `summary` and `export`. They register on `hdetach.cli.app`.

Each reads a `StudiesSource` (`hdetach.sources`) and only formats what it returns. None of them
creates a database: a missing SQLite file, or a database without our tables, is one line and exit 7.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import TypeAdapter
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from hdetach.cli import ApiUrl, DatabaseUrl, app, load_settings, one_source
from hdetach.errors import EXIT_CODES_HELP, EXIT_USAGE, api_errors, database_errors, fail, refuse
from hdetach.summary_text import summary_lines, summary_table

if TYPE_CHECKING:  # the sources load the database's and the API's libraries: only when used, so that
    # every command, `--help` and `--version` start quickly
    from hdetach.sources import StudiesSource, StudyInfo

studies_app = typer.Typer(
    help="List, show, watch, cancel and delete studies.", no_args_is_help=True, epilog=EXIT_CODES_HELP
)
app.add_typer(studies_app, name="studies")

StudyId = Annotated[int, typer.Argument(min=1, max=2**31 - 1, help="study id")]  # ids are 32-bit
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


@contextmanager
def studies_source(database_url: str | None, api: str | None = None) -> Iterator[StudiesSource]:
    """The source the commands read: the REST service with --api, else the database (opened
    without creating anything)."""
    from hdetach.sources import ApiSource, DatabaseSource

    one_source(database_url, api)
    if api is not None:
        with api_errors(api), ApiSource(api) as remote:
            yield remote
        return
    settings = load_settings(database_url)
    with database_errors(settings.database_url), DatabaseSource(settings) as source:
        yield source


@contextmanager
def on_study(study_id: int) -> Iterator[None]:
    """An unknown id or a state that refuses the command: one line, exit 1."""
    from studies.exceptions import Conflict, NotFound

    try:
        yield
    except NotFound:
        refuse(f"no study with id {study_id}")
    except Conflict as error:
        refuse(str(error))


def describe(info: StudyInfo) -> list[str]:
    """A study in two lines: its state and progress, then its cells by state."""
    return [
        f"study {info.id} ({info.name}): {info.status}, {info.cells_finished}/{info.cells} cells finished"
        + (" (cancel requested)" if info.cancel_requested and not info.finished else ""),
        "  " + ", ".join(f"{state} {n}" for state, n in info.jobs.items() if n),
    ]


@studies_app.command("list")
def list_studies(
    status: Annotated[str | None, typer.Option(help="only studies in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many, newest first")] = 50,
    as_json: AsJson = False,
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """Studies, newest first: id, name, state, cells finished of all, running and failed."""
    from studies.db.models import StudyStatus

    if status is not None and status not in set(StudyStatus):
        fail(f"--status: {status!r} is not one of {', '.join(StudyStatus)}")
    with studies_source(database_url, api) as source:
        infos = source.list_studies(status, limit)
    if as_json:
        from hdetach.sources import StudyInfo

        typer.echo(TypeAdapter(list[StudyInfo]).dump_json(infos).decode())  # as `show --json` writes one
        return
    table = Table(title="studies")
    for column in ("id", "name", "status", "finished", "running", "failed", "created"):
        table.add_column(column, no_wrap=column != "name")
    for info in infos:
        table.add_row(
            str(info.id),
            info.name,
            info.status,
            f"{info.cells_finished}/{info.cells}",
            str(info.jobs.get("running", 0)),
            str(info.jobs.get("failed", 0)),
            info.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
    Console().print(table)


@studies_app.command("show")
def show(
    study_id: StudyId, as_json: AsJson = False, database_url: DatabaseUrl = None, api: ApiUrl = None
) -> None:
    """A study's state and its cells counted by state."""
    with studies_source(database_url, api) as source, on_study(study_id):
        info = source.get(study_id)
    typer.echo(info.model_dump_json() if as_json else "\n".join(describe(info)))


@app.command("status")
def status(
    study_id: StudyId, as_json: AsJson = False, database_url: DatabaseUrl = None, api: ApiUrl = None
) -> None:
    """A study's state and its cells counted by state (the same as `hdetach studies show`)."""
    show(study_id, as_json, database_url, api)


@studies_app.command("watch")
def watch(
    study_id: StudyId,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between looks at the study")] = 2.0,
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """Follow a study live: a progress bar with the time left, and the robustness summary as cells
    finish. Ends when the study does (exit 0), or on Ctrl-C (exit 130; the study goes on)."""
    from hdetach.progress import add_study, cells_progress, show_jobs

    console = Console()
    with studies_source(database_url, api) as source, on_study(study_id):
        info = source.get(study_id)
        typer.echo(f"watching study {study_id} ({info.name}); Ctrl-C stops watching, not the study", err=True)
        progress = cells_progress(console)
        bar = add_study(progress, study_id, info.jobs)
        summary = source.summary(study_id)
        shown_finished = info.cells_finished
        try:
            with Live(Group(progress, summary_table(summary.model_dump())), console=console) as live:
                while True:
                    show_jobs(progress, bar, info.jobs)
                    if info.cells_finished != shown_finished or info.finished:
                        summary, shown_finished = source.summary(study_id), info.cells_finished
                        live.update(Group(progress, summary_table(summary.model_dump())))
                    if info.finished:
                        break
                    time.sleep(interval)
                    info = source.get(study_id)
        except KeyboardInterrupt:
            typer.echo(f"stopped watching study {study_id}; it goes on", err=True)
            raise typer.Exit(130) from None
    console.print()  # the live display's last line has no newline of its own off a terminal
    console.print(describe(info)[0], markup=False)
    for line in summary_lines(summary.model_dump()):
        console.print(line, markup=False)


@studies_app.command("cancel")
def cancel(study_id: StudyId, database_url: DatabaseUrl = None, api: ApiUrl = None) -> None:
    """Cancel a study: its queued cells now, its running ones at their next evaluation."""
    with studies_source(database_url, api) as source, on_study(study_id):
        info = source.cancel(study_id)
    typer.echo("\n".join(describe(info)))


@studies_app.command("delete")
def delete(
    study_id: StudyId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="delete without asking")] = False,
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """Delete a study, its cells' results and its Optuna study (refused while cells run: cancel it
    first). Asks first unless --yes; without a terminal to ask on, --yes is required."""
    with studies_source(database_url, api) as source, on_study(study_id):
        info = source.get(study_id)
        if not yes:
            what = f"study {study_id} ({info.name})"
            if not sys.stdin.isatty():
                fail(f"deleting {what} needs --yes when there is no terminal to ask")
            if not typer.confirm(f"delete {what} and the results of its {info.cells} cells?"):
                refuse("nothing deleted")
        source.delete(study_id)
    typer.echo(f"deleted study {study_id} ({info.name})")


@app.command("requeue", epilog=EXIT_CODES_HELP)
def requeue(
    study_id: StudyId,
    failed: Annotated[
        bool, typer.Option("--failed", help="queue the failed cells again (required: the only kind requeued)")
    ] = False,
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """Queue a study's failed cells again, each with HDETACH_MAX_ATTEMPTS more attempts; every claim
    of one is a new attempt with a new Optuna trial. Done cells (diverged ones included) keep their
    results, so --failed is required. A finished study goes back to running; a cancelled one is
    refused (exit 1)."""
    if not failed:
        fail("give --failed: only failed cells are queued again (done cells keep their results)")
    with studies_source(database_url, api) as source, on_study(study_id):
        result = source.requeue_failed(study_id)
    if result.requeued:
        typer.echo(f"study {study_id}: {result.requeued} failed cells queued again; study {result.status}")
    else:
        typer.echo(f"study {study_id}: no failed cells; nothing queued (study {result.status})")


@app.command("summary", epilog=EXIT_CODES_HELP)
def summary(
    study_id: StudyId,
    robust_level: Annotated[float, typer.Option(help="success rate a robust lr needs, in (0, 1]")] = 0.8,
    as_json: Annotated[bool, typer.Option("--json", help="the JSON of GET /studies/{id}/summary")] = False,
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """How robust each variant is to learning rate and seed, and how it compares with the baseline:
    the table and lines `hdetach demo` prints, from the cells as they stand."""
    if not 0 < robust_level <= 1:
        fail(f"--robust-level: {robust_level:g} is not in (0, 1]")
    with studies_source(database_url, api) as source, on_study(study_id):
        result = source.summary(study_id, robust_level)
    if as_json:
        typer.echo(result.model_dump_json())
        return
    console = Console()
    console.print(summary_table(result.model_dump()))
    for line in summary_lines(result.model_dump()):
        console.print(line, markup=False)  # "[95% CI ...]" is text, not a style


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command("export", epilog=EXIT_CODES_HELP)
def export(
    study_id: StudyId,
    format: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.csv,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file (default: stdout)")] = None,
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """One row per grid cell: its variant, p_detach, lr, seed, state, attempts, metric and how it
    ended, then each model's test metrics as columns (the columns of GET /studies/{id}/trials.csv).
    Parquet needs pyarrow and --output."""
    from studies.results import flat_trial_rows, to_csv

    if format is ExportFormat.parquet:
        if output is None:
            fail("--format parquet writes a file: give --output FILE")
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            fail("--format parquet needs pyarrow, which is not installed (pip install pyarrow)")
    with studies_source(database_url, api) as source, on_study(study_id):
        records = flat_trial_rows(source.trials(study_id))
    if format is ExportFormat.parquet:
        assert output is not None
        try:
            pq.write_table(pa.Table.from_pylist(records), output)
        except OSError as error:
            fail(f"{output}: {error}")
        return
    text = to_csv(records) if format is ExportFormat.csv else json.dumps(records) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, newline="")  # the CSV's own CRLF line ends, untranslated
    except OSError as error:
        fail(f"{output}: {error.strerror}", EXIT_USAGE)


@app.command("report", epilog=EXIT_CODES_HELP)
def report(
    study_id: StudyId,
    output: Annotated[Path, typer.Option("--output", "-o", help="the HTML file to write")],
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """The study's report as one self-contained HTML file: tables, plots (SVG), the trials' CSV and
    the summary's JSON all inlined, so it opens anywhere and can be mailed or archived."""
    with studies_source(database_url, api) as source, on_study(study_id):
        html = source.report_html(study_id)
    try:
        output.write_text(html, encoding="utf-8")
    except OSError as error:
        fail(f"{output}: {error.strerror}", EXIT_USAGE)
    typer.echo(f"wrote {output} ({len(html.encode()) / 1024:.0f} kB)")
