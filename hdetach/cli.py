"""`hdetach`: train trials, run the demo, submit studies, run workers (one device, or a supervisor
over several), check a worker's health, and serve the REST API.

Bad arguments end with a one-line message and exit code 2.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

DEFAULT_P = {"copying": 0.5, "adding": 0.5, "pixel_mnist": 0.25, "permuted_mnist": 0.25}


@app.callback()
def _root() -> None:
    """Robustness studies of LSTM training with h-detach."""


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2 (the convention for bad arguments)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    return f"{where}: {first['msg']}"


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
        fail(validation_message(e))
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


def _settings(database_url: str | None):
    """The settings, or one line and exit code 2 if they are invalid (a bad secret file, say)."""
    from deployment.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        fail(f"settings: {validation_message(e)}")
    return settings.model_copy(update={"database_url": database_url}) if database_url else settings


def _shown(url: str) -> str:
    """A database URL fit for a log: the password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or migrate the database schema (Alembic, to the latest revision)."""
    from studies.db.engine import upgrade

    settings = _settings(database_url)
    upgrade(settings.database_url)
    typer.echo(f"database at head: {_shown(settings.database_url)}")


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
) -> None:
    """Queue a study straight into the database (no API needed); prints its id."""
    from deployment.backend import Backend
    from studies.presets import preset_spec

    if (spec_file is None) == (preset is None):
        fail("give a spec file or --preset NAME (one of them)")
    if spec_file is not None and not spec_file.is_file():
        fail(f"{spec_file}: no such file")
    try:
        if spec_file is not None:
            text = spec_file.read_text()
        else:
            text = json.dumps(preset_spec(str(preset), json.loads(overrides or "{}")))
    except KeyError as e:
        fail(str(e.args[0]))
    except json.JSONDecodeError as e:
        fail(f"--overrides is not JSON: {e}")
    with Backend(_settings(database_url)) as backend:
        try:
            spec = backend.parse_spec(text)
        except ValidationError as e:
            fail(f"invalid spec: {validation_message(e)}")
        typer.echo(backend.submit(spec))


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


@app.command()
def status(
    study_id: Annotated[int, typer.Argument(help="study id")],
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A study's state and its jobs counted by state."""
    from deployment.backend import Backend
    from studies import queue
    from studies.exceptions import NotFound

    with Backend(_settings(database_url)) as backend:
        try:
            study = queue.get_study(backend.factory, study_id)
        except NotFound:
            fail(f"no study with id {study_id}")
        counts = queue.job_counts(backend.factory, study_id)
    info = {"id": study_id, "name": study.name, "status": study.status, "jobs": counts}
    if as_json:
        typer.echo(json.dumps(info))
        return
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in ("done", "failed", "cancelled"))
    typer.echo(f"study {study_id} ({study.name}): {study.status}, {done}/{total} cells finished")
    typer.echo("  " + ", ".join(f"{state} {n}" for state, n in counts.items() if n))


@app.command()
def worker(
    database_url: DatabaseUrl = None,
    device: Annotated[
        str,
        typer.Option(
            help="cpu, cuda, cuda:1, ...; `all` (every visible CUDA device) or a comma-separated list "
            "(cuda:0,cuda:2) runs one worker process per entry under a supervisor"
        ),
    ] = "cpu",
    per_device: Annotated[
        int, typer.Option(min=1, help="worker processes per device (more than 1: under a supervisor)")
    ] = 1,
    pack: Annotated[int, typer.Option(min=1, help="most jobs trained together in one packed run")] = 8,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (per worker process)")] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="stop when the queue is empty")] = False,
    max_packs: Annotated[
        int | None, typer.Option(min=1, help="stop after this many packs (per worker process)")
    ] = None,
    max_infra_failures: Annotated[
        int, typer.Option(min=1, help="infrastructure failures in a row before the worker halts")
    ] = 5,
    wait_for_database: Annotated[
        float, typer.Option(min=0, help="seconds start-up waits for an unreachable database (then exit 6)")
    ] = 120.0,
) -> None:
    """Claim queued trials and train them until stopped (SIGTERM: graceful; a second one: at once).

    One device (`--device cuda:1`, per-device 1): one worker in this process. Exit codes: 3 when
    the device fails the start-up check (nothing claimed); 4 when the worker halted after repeated
    infrastructure failures; 5 after a CUDA error (the device wants a fresh process); 6 when the
    database stayed unreachable at start-up (`--wait-for-database`, 120 s).

    `--device all`, a list (`--device cuda:0,cuda:2`) or `--per-device N` > 1: a supervisor runs one
    `hdetach worker` process per device entry (N per device), passing the other options on. A child
    that exits 0, 3 (device unusable) or 2 (bad arguments) is not restarted; any other exit (4, 5,
    a crash, a signal) is restarted after a back-off of 1 s doubling to 60 s (reset once a child
    ran 120 s). SIGTERM/SIGINT is forwarded to every child; a second one forwards a second SIGTERM.
    Exit code: 0 when every child ended 0 or was stopped by the forwarded signal; 3 when every
    child's device was unusable, or at once with one line when `--device all` sees no CUDA device;
    otherwise the last abnormal child exit code not recovered by a restart (signal N: 128 + N)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from workers.supervisor import NoDevicesError, needs_supervisor

    if needs_supervisor(device, per_device):
        from workers.supervisor import Supervisor, child_command, expand_devices

        try:
            devices = expand_devices(device, per_device)
        except NoDevicesError as e:
            typer.echo(f"error: {e}; no worker started", err=True)
            raise typer.Exit(3) from None
        except ValueError as e:
            fail(str(e))
        commands = [
            (
                one,
                child_command(
                    one,
                    database_url=database_url,
                    pack=pack,
                    threads=threads,
                    exit_when_idle=exit_when_idle,
                    max_packs=max_packs,
                    max_infra_failures=max_infra_failures,
                    wait_for_database=wait_for_database,
                ),
            )
            for one in devices
        ]
        code = Supervisor(commands).run()
        if code:
            raise typer.Exit(code)
        return

    from workers.worker import Worker, WorkerOptions

    settings = _settings(database_url)
    options = WorkerOptions.from_settings(
        settings,
        device=device,
        pack=pack,
        threads=threads,
        max_packs=max_packs,
        exit_when_idle=exit_when_idle,
        max_infra_failures=max_infra_failures,
        database_patience_seconds=wait_for_database,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the migration check, not its chatter
    from workers.failures import FailureKind, classify, one_line
    from workers.worker import EXIT_DATABASE_UNREACHABLE

    try:
        executor = Worker(options)  # waits out a database that is restarting (--wait-for-database)
    except Exception as error:
        if classify(error) is not FailureKind.INFRASTRUCTURE:
            raise
        typer.echo(
            f"error: database {_shown(settings.database_url)} unreachable: {one_line(error)}", err=True
        )
        raise typer.Exit(EXIT_DATABASE_UNREACHABLE) from None
    code = executor.run()  # 3: device unusable; 4: halted; 5: device lost after a CUDA error
    if code:
        raise typer.Exit(code)


health_app = typer.Typer(
    help="Health checks for container healthchecks: exit 0 healthy, 1 not (with one line saying why).",
    no_args_is_help=True,
)
app.add_typer(health_app, name="health")


@health_app.command("worker")
def health_worker(
    database_url: DatabaseUrl = None,
    max_age: Annotated[
        float | None,
        typer.Option(min=0, help="seconds a heartbeat may be old (default 3 x HDETACH_HEARTBEAT_SECONDS)"),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the database, at most")] = 5.0,
) -> None:
    """Exit 0 if a worker registered from this host (socket.gethostname()) is running with a recent
    heartbeat; else exit 1 with one line: no worker from this host, halted (and why), stopped, or
    its heartbeat N s old. The database is given `--timeout` seconds to connect and answer; the
    whole check ends within about twice that."""
    from workers.health import check_worker_health

    try:
        settings = _settings(database_url)
    except ValidationError as e:
        typer.echo(f"unhealthy: settings: {validation_message(e)}")
        raise typer.Exit(1) from None
    healthy, message = check_worker_health(
        settings.database_url,
        max_age if max_age is not None else 3 * settings.heartbeat_seconds,
        timeout,
    )
    typer.echo(message)
    if not healthy:
        raise typer.Exit(1)


@app.command("ray-run")
def ray_run(
    study_id: Annotated[
        int | None, typer.Argument(help="run this study's queued cells (default: every Ray study's)")
    ] = None,
    database_url: DatabaseUrl = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster (default: HDETACH_RAY_ADDRESS, RAY_ADDRESS, else local)")
    ] = None,
    pack: Annotated[int, typer.Option(min=1, help="most cells per Tune trial (one packed run)")] = 8,
    gpus_per_pack: Annotated[float, typer.Option(min=0, help="GPUs each pack asks for; 0.5 shares")] = 0,
    cpus_per_pack: Annotated[float, typer.Option(min=0, help="CPUs each pack asks for")] = 1,
    num_cpus: Annotated[int | None, typer.Option(min=1, help="CPUs of a local Ray (no address)")] = None,
    watch: Annotated[bool, typer.Option(help="keep running Ray studies as they are submitted")] = False,
) -> None:
    """Run studies on a Ray cluster as Ray Tune experiments; results land in the same database."""
    import logging
    import signal

    if watch and study_id is not None:
        fail("give a study id or --watch, not both")
    if gpus_per_pack == 0 and cpus_per_pack == 0:
        fail("a pack must ask for some CPUs or GPUs")
    settings = _settings(database_url)
    from workers.ray_executor import check_address

    try:
        check_address(address or settings.ray_address)
    except ValueError as e:
        fail(str(e))
    if study_id is not None:
        from deployment.backend import Backend
        from studies import queue
        from studies.exceptions import NotFound

        with Backend(settings) as backend:
            try:
                queue.get_study(backend.factory, study_id)
            except NotFound:
                fail(f"no study with id {study_id}")
    from workers.ray_executor import RayDriver, RayOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = RayOptions.from_settings(
        settings,
        address=address,
        pack=pack,
        resources={"cpu": cpus_per_pack, "gpu": gpus_per_pack},
        num_cpus=num_cpus,
    )
    with RayDriver(options) as driver:
        signal.signal(signal.SIGTERM, lambda *_: driver.stop_requested.set())
        if watch:
            driver.watch()
        else:
            report = driver.run_study(study_id) if study_id is not None else driver.drain()
            typer.echo(
                f"ran {report.jobs} cells in {report.packs} packs on Ray (studies {list(report.study_ids)})"
            )


@app.command()
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str | None, typer.Option(help="bind address (default HDETACH_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default HDETACH_PORT)")] = None,
) -> None:
    """Serve the REST API with uvicorn."""
    import uvicorn

    from deployment.settings import Settings
    from service.app import create_app

    try:
        settings = _settings(database_url) if database_url else Settings()
    except ValidationError as e:
        fail(f"settings: {validation_message(e)}")
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level="info",
        access_log=True,
    )


def main() -> None:
    app()
