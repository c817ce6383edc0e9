"""The `hdetach` commands that run things: a worker (or a supervisor over several devices), a
worker's health check, the Ray driver, and the REST API server. They register on `hdetach.cli.app`."""

from __future__ import annotations

import logging
import signal
from typing import Annotated

import typer
from pydantic import ValidationError

from hdetach.cli import DatabaseUrl, app, load_settings
from hdetach.errors import database_errors, fail, shown_url, validation_lines


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

    settings = load_settings(database_url)
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
            f"error: database {shown_url(settings.database_url)} unreachable: {one_line(error)}", err=True
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
    from deployment.settings import Settings, check_database_url
    from workers.health import check_worker_health

    try:  # not load_settings: a healthcheck answers 1 for anything that is not healthy
        settings = Settings()
        if database_url:
            settings = settings.model_copy(update={"database_url": check_database_url(database_url)})
    except ValueError as e:
        reason = validation_lines(e).replace("\n", "; ") if isinstance(e, ValidationError) else str(e)
        typer.echo(f"unhealthy: settings: {reason}")
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

    if watch and study_id is not None:
        fail("give a study id or --watch, not both")
    if gpus_per_pack == 0 and cpus_per_pack == 0:
        fail("a pack must ask for some CPUs or GPUs")
    settings = load_settings(database_url)
    from workers.ray_executor import check_address

    try:
        check_address(address or settings.ray_address)
    except ValueError as e:
        fail(str(e))
    if study_id is not None:
        from hdetach.cli_studies import on_study, studies_source

        with studies_source(database_url) as source, on_study(study_id):
            source.get(study_id)
    from hdetach.ray_progress import ProgressView
    from workers.ray_executor import RayDriver, RayOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = RayOptions.from_settings(
        settings,
        address=address,
        pack=pack,
        resources={"cpu": cpus_per_pack, "gpu": gpus_per_pack},
        num_cpus=num_cpus,
    )
    view = ProgressView()
    try:
        with database_errors(settings.database_url), RayDriver(options, on_progress=view) as driver:
            signal.signal(signal.SIGTERM, lambda *_: driver.stop_requested.set())
            if watch:
                driver.watch()
            else:
                report = driver.run_study(study_id) if study_id is not None else driver.drain()
                view.close()
                studies = list(report.study_ids)
                typer.echo(f"ran {report.jobs} cells in {report.packs} packs on Ray (studies {studies})")
    finally:
        view.close()


@app.command()
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str | None, typer.Option(help="bind address (default HDETACH_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default HDETACH_PORT)")] = None,
    root_path: Annotated[
        str,
        typer.Option(
            help="the path prefix a reverse proxy serves the API under (e.g. /hdetach), which it "
            "strips before passing requests on: Location headers and /docs then carry it"
        ),
    ] = "",
) -> None:
    """Serve the REST API with uvicorn. Refuses (exit 2) API tokens that are not printable ASCII and,
    with HDETACH_ENVIRONMENT=production, the placeholder token or none; creates or migrates the
    database first (exit 6 if it is unreachable)."""
    import uvicorn

    from service.app import create_app
    from studies.db.engine import upgrade

    settings = load_settings(database_url)
    try:
        settings = settings.for_serving()
    except ValueError as e:
        fail(f"settings: {e}")
    with database_errors(settings.database_url):
        upgrade(settings.database_url)  # as the app's start-up would, but failing in one line
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level="info",
        access_log=True,
        root_path=root_path.rstrip("/"),
    )
