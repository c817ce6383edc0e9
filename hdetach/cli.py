"""`hdetach`: train trials, run the demo, submit studies and follow them (list, show, watch,
summary, export, requeue, cancel, delete), run workers (one device, or a supervisor over several),
check a worker's health, and serve the REST API.

Every error is one line on stderr (one per field for an invalid spec or settings) with an exit code
that says whose move it is (`hdetach.errors`).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from hdetach.errors import EXIT_CODES_HELP, api_errors, database_errors, fail, shown_url, validation_lines

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, epilog=EXIT_CODES_HELP)
console = Console(stderr=True)

DEFAULT_P = {"copying": 0.5, "adding": 0.5, "pixel_mnist": 0.25, "permuted_mnist": 0.25}


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"hdetach-studies {version('hdetach-studies')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Robustness studies of LSTM training with h-detach."""


@app.command()
def train(
    task: Annotated[str, typer.Option(help="copying, adding, pixel_mnist or permuted_mnist")] = "copying",
    T: Annotated[int | None, typer.Option("--T", help="copying delay / adding length")] = None,
    variant: Annotated[list[str] | None, typer.Option(help="vanilla or h-detach; repeat for several")] = None,
    p_detach: Annotated[float | None, typer.Option(help="p_detach of the h-detach variant")] = None,
    lr: Annotated[list[float], typer.Option(help="learning rate; repeat to pack several")] = [1e-3],  # noqa: B006
    seed: Annotated[list[int], typer.Option(help="trial seed; repeat to pack several")] = [0],  # noqa: B006
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 2000,
    hidden_size: Annotated[int, typer.Option(help="LSTM hidden size")] = 128,
    batch_size: Annotated[int, typer.Option()] = 100,
    eval_every: Annotated[int, typer.Option()] = 100,
    clip: Annotated[float | None, typer.Option(help="gradient-norm clip per trial")] = 1.0,
    no_clip: Annotated[bool, typer.Option("--no-clip", help="train without clipping")] = False,
    p_off_fraction: Annotated[float, typer.Option(help="switch p_detach off for this last fraction")] = 0.0,
    stop_on_success: Annotated[bool, typer.Option(help="end a trial once it meets the threshold")] = False,
    transfer_T: Annotated[list[int], typer.Option("--transfer-T", help="copying: also test at this T")] = [],  # noqa: B006
    mnist_root: Annotated[
        Path | None, typer.Option(help="directory of MNIST IDX files; without one, the 5,000-digit subset")
    ] = None,
    train_size: Annotated[
        int | None, typer.Option(help="copying: a fixed training set of this many sequences")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Train one trial, or a pack of trials (every variant x lr x seed) as one stacked computation."""
    from studies.tasks import MNISTNotFoundError, default_success
    from studies.training import PackTrainer, TaskConfig, TrainingConfig, TrialParams
    from studies.training.sections import BudgetSpec, ModelSpec, SuccessSpec, TrainingOptions

    if variant is None:
        variant = ["h-detach"]
    if task not in DEFAULT_P:
        fail(f"unknown task {task!r}; choose one of {', '.join(DEFAULT_P)}")
    try:
        if task in ("copying", "adding"):
            if mnist_root is not None:
                fail(f"--mnist-root applies to pixel_mnist and permuted_mnist, not to {task}")
            task_config = TaskConfig(name=task, T=T, train_size=train_size, transfer_T=list(transfer_T))
        elif T is not None or train_size is not None or transfer_T:
            fail(f"--T, --train-size and --transfer-T apply to copying and adding, not to {task}")
        else:  # a local run: the subset is allowed, and the output names the data it used
            root = str(mnist_root) if mnist_root else None
            task_config = TaskConfig(name=task, mnist_root=root, allow_subset=root is None)
        config = TrainingConfig(
            task=task_config,
            model=ModelSpec(hidden_size=hidden_size),
            budget=BudgetSpec(steps=steps, batch_size=batch_size, eval_every=eval_every),
            success=SuccessSpec(**default_success(task).model_dump(), stop_on_success=True)
            if stop_on_success
            else None,
            training=TrainingOptions(p_off_fraction=p_off_fraction),
        )
        p = DEFAULT_P[task] if p_detach is None else p_detach
        trials = [
            TrialParams(
                variant=v,
                p_detach=0.0 if v == "vanilla" else p,
                lr=rate,
                seed=s,
                clip_norm=None if no_clip else clip,
            )
            for v, rate, s in itertools.product(variant, lr, seed)
        ]
    except ValidationError as e:
        fail(validation_lines(e))
    for v in variant:
        if v not in ("vanilla", "h-detach"):
            fail(f"unknown variant {v!r}; choose vanilla or h-detach")
    try:
        trainer = PackTrainer(config, trials, device)
    except (MNISTNotFoundError, ValueError, RuntimeError, OSError) as e:
        fail(" ".join(str(e).split()))  # one line, even for multi-line messages

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=as_json or not sys.stderr.isatty(),
    ) as progress:
        bar = progress.add_task(f"{task} K={len(trials)}", total=config.budget.steps)
        records = trainer.run(on_step=lambda step: progress.update(bar, completed=step))

    if as_json:
        typer.echo(json.dumps({"task": trainer.task.description, "trials": [r.to_dict() for r in records]}))
        return
    Console().print(results_table(trainer.success.metric, records))


def results_table(metric: str, records) -> Table:
    table = Table(title="final test metrics")
    for column in (
        "variant",
        "p",
        "lr",
        "seed",
        "status",
        f"test {metric}",
        "test loss",
        "steps to threshold",
    ):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.params.variant,
            f"{r.params.p_detach:g}",
            f"{r.params.lr:g}",
            str(r.params.seed),
            r.status,
            _fmt(r.final.get(metric)),
            _fmt(r.final.get("loss")),
            "-" if r.steps_to_threshold is None else str(r.steps_to_threshold),
        )
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def demo(
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps per trial")] = 1500,
    seeds: Annotated[int, typer.Option(min=1, max=100, help="seeds 1..N per learning rate")] = 3,
    workers: Annotated[int, typer.Option(min=1, help="local worker processes")] = 2,
    out_dir: Annotated[Path, typer.Option(help="where the run folder (database, report, logs) goes")] = Path(
        "runs"
    ),
) -> None:
    """The whole product on a local SQLite file: API, two workers, a small adding study, its summary."""
    from hdetach.demo import run_demo

    try:
        run_demo(steps, workers, out_dir, Console(), seeds=seeds)
    except KeyboardInterrupt:
        console.print("interrupted: stopped the API and the workers")
        raise typer.Exit(130) from None
    except RuntimeError as e:
        fail(str(e))


db_app = typer.Typer(help="Database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DatabaseUrl = Annotated[
    str | None, typer.Option(help="database URL (default: HDETACH_DATABASE_URL or the SQLite file)")
]


ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="the REST service's URL (e.g. http://head:8000): go through it instead of the database; "
        "token from HDETACH_API_TOKEN",
    ),
]


def one_source(database_url: str | None, api: str | None) -> None:
    if database_url and api:
        fail("give --api URL or --database-url URL, not both")


def load_settings(database_url: str | None):
    """The settings (`--database-url` in place of HDETACH_DATABASE_URL if given); invalid ones end
    the command with one line per problem, naming the variable, and exit code 2."""
    from deployment.settings import Settings, check_database_url

    try:
        settings = Settings()
        if database_url:
            check_database_url(database_url)
    except ValidationError as e:
        lines = []
        for item in e.errors(include_url=False):
            message = item["msg"].removeprefix("Value error, ")
            name = "HDETACH_" + str(item["loc"][0]).upper() if item["loc"] else ""
            lines.append(message if not name or message.startswith(name) else f"{name}: {message}")
        fail("\n".join(f"settings: {line}" for line in lines))
    except ValueError as e:
        fail(f"--database-url: {str(e).removeprefix('HDETACH_DATABASE_URL: ')}")
    return settings.model_copy(update={"database_url": database_url}) if database_url else settings


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or migrate the database schema (Alembic, to the latest revision)."""
    from studies.db.engine import upgrade

    settings = load_settings(database_url)
    with database_errors(settings.database_url):
        upgrade(settings.database_url)
    typer.echo(f"database at head: {shown_url(settings.database_url)}")


@app.command()
def submit(
    spec_file: Annotated[Path | None, typer.Argument(help="study spec (JSON)")] = None,
    preset: Annotated[
        str | None, typer.Option(help="submit this preset instead (see `hdetach presets`)")
    ] = None,
    overrides: Annotated[
        str | None, typer.Option(help="JSON merged into the preset, e.g. '{\"seeds\": [1]}'")
    ] = None,
    database_url: DatabaseUrl = None,
    api: ApiUrl = None,
) -> None:
    """Queue a study (straight into the database, or through the REST service with --api); prints its id."""
    from deployment.backend import Backend
    from studies.presets import preset_spec

    if (spec_file is None) == (preset is None):
        fail("give a spec file or --preset NAME (one of them)")
    if spec_file is not None:
        if not spec_file.is_file():
            fail(f"{spec_file}: {'a directory, not a file' if spec_file.is_dir() else 'no such file'}")
        try:
            text = spec_file.read_text(encoding="utf-8")
            json.loads(text)  # checked here, so both ways of submitting say the same
        except UnicodeDecodeError as e:
            fail(f"{spec_file}: not UTF-8 text ({e.reason} at byte {e.start})")
        except OSError as e:
            fail(f"{spec_file}: {e.strerror}")
        except ValueError as e:
            fail(f"{spec_file}: not JSON: {e}")
    else:
        try:
            changes = json.loads(overrides or "{}")
        except ValueError as e:
            fail(f"--overrides is not JSON: {e}")
        if not isinstance(changes, dict):
            fail("--overrides must be a JSON object, e.g. '{\"seeds\": [1, 2]}'")
        try:
            text = json.dumps(preset_spec(str(preset), changes))
        except KeyError as e:
            fail(str(e.args[0]))
    if api is not None:
        from hdetach.sources import ApiSource

        one_source(database_url, api)
        with api_errors(api), ApiSource(api) as remote:
            typer.echo(remote.submit(text))
        return
    settings = load_settings(database_url)
    with database_errors(settings.database_url), Backend(settings) as backend:
        try:
            study_id = backend.submit(text)
        except ValidationError as e:
            fail(validation_lines(e, prefix="invalid spec: "))
        typer.echo(study_id)


@app.command()
def presets(as_json: Annotated[bool, typer.Option("--json", help="print the specs as JSON")] = False) -> None:
    """The paper's experiments as ready specs (each also in a -small size for CPUs)."""
    from studies.paper import paper_figures
    from studies.presets import PRESETS, validated_presets

    if as_json:
        typer.echo(json.dumps(PRESETS))
        return
    table = Table(title="presets")
    for column in ("name", "task", "variants", "learning rates", "seeds", "steps", "trials"):
        table.add_column(column, no_wrap=column == "name")
    reported: list[str] = []
    for name, spec in validated_presets().items():
        task = spec.task.name + (f" T={spec.task.T}" if spec.task.T else "")
        variants = ", ".join(f"{v.name} p={v.p_detach:g}" for v in spec.variants)
        lrs = ", ".join(f"{lr:g}" for lr in spec.lr_values())
        table.add_row(
            name, task, variants, lrs, str(len(spec.seeds)), str(spec.budget.steps), str(spec.grid_size)
        )
        reported += [
            f"{name}: {f.variant}: {f.reported}; {f.selection}; {f.steps:,} steps of batch {f.batch_size} "
            f"({f.source})"
            for f in paper_figures(spec.task)
        ]
    console = Console()
    console.print(table)
    console.print(
        "What the paper and its authors report for these tasks (reports show it beside a study's own):"
    )
    for line in reported:
        console.print("  " + escape(line), soft_wrap=True)


# the commands that run things (workers, Ray, the API server, health checks) and those on existing
# studies register on `app`
from hdetach import cli_run, cli_studies  # noqa: E402, F401


def main() -> None:
    app()
