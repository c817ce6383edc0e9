"""Our batched writes to Optuna's tables read back, through Optuna's own API, like Optuna's writes."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from studies import optuna_rows
from studies.spec import StudySpec
from studies.tracking import (
    abandon_closing,
    close_trials,
    create_optuna_study,
    objective_name,
    open_storage,
    report_values,
    result_closing,
    start_trials,
)

SPEC = StudySpec.model_validate(
    {
        "name": "rows",
        "task": {"name": "copying", "T": 5},
        "model": {"hidden_size": 8},
        "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
        "learning_rates": [1e-3, 1e-2],
        "seeds": [1, 2],
        "budget": {"steps": 10, "eval_every": 5, "batch_size": 4},
    }
)


@pytest.fixture
def far_timezone(monkeypatch):
    """Optuna stores naive UTC and reads back local time: a zone away from UTC tells them apart."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _write_a_pack(storage, study_name: str) -> list[int]:
    """Three attempts: one completes, one diverges, one is abandoned; then late writes to them all."""
    create_optuna_study(storage, study_name, SPEC, 7)
    cells = SPEC.cells()[:3]
    ids = start_trials(
        storage,
        study_name,
        SPEC,
        [(cell, {"attempt": 1, "device": "cpu", "job_id": 10 + i}) for i, cell in enumerate(cells)],
    )
    report_values(storage, [(ids[0], 5, 0.25), (ids[1], 5, 0.5), (ids[2], 5, float("nan"))])
    report_values(storage, [(ids[0], 10, 0.75), (ids[0], 5, 0.3)])  # a step again: the later value stands
    result = {
        "status": "completed",
        "final": {"accuracy": 0.8, "loss": 0.5},
        "best_val": {"accuracy": 0.85, "loss": 0.4},
        "best_val_step": 5,
        "transfer": {"10": {"accuracy": 0.7}},
        "best_val_transfer": {"10": {"accuracy": 0.75}},
        "diverged_at": None,
        "steps_to_threshold": None,
        "steps_run": 10,
        "wall_time_s": 1.5,
        "data": "copying T=5",
        "device": "cuda:1",
    }
    diverged = {"status": "diverged", "diverged_at": 3, "final": {}, "best_val": {}, "data": ""}
    closed = close_trials(
        storage,
        [
            result_closing(ids[0], "accuracy", result),
            result_closing(ids[1], "accuracy", diverged),
            abandon_closing(ids[2], "lease expired"),
        ],
    )
    assert closed == [True, True, True]
    # everything after the end changes nothing
    assert close_trials(storage, [abandon_closing(i, "late") for i in ids]) == [False] * 3
    report_values(storage, [(ids[0], 15, 1.0), (ids[2], 15, 1.0)])
    return ids


def _comparable(trial: optuna.trial.FrozenTrial) -> tuple:
    return (
        trial.number,
        trial.state,
        trial.values,
        trial.params,
        trial.distributions,
        trial.user_attrs,
        trial.intermediate_values,
    )


def test_batched_rows_read_back_as_optunas_own_writes(database_url, far_timezone):
    batched, through_api = open_storage(database_url), open_storage(database_url)
    optuna_rows.disable(through_api)
    assert optuna_rows.supported(batched) and not optuna_rows.supported(through_api)

    before = datetime.now() - timedelta(seconds=1)
    _write_a_pack(batched, "batched")
    _write_a_pack(through_api, "api")
    after = datetime.now() + timedelta(seconds=1)

    reader = optuna.storages.RDBStorage(database_url)
    ours = reader.get_all_trials(reader.get_study_id_from_name("batched"))
    optunas = reader.get_all_trials(reader.get_study_id_from_name("api"))
    assert [_comparable(t) for t in ours] == [_comparable(t) for t in optunas]
    assert [t.state for t in ours] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert ours[0].intermediate_values == {5: 0.3, 10: 0.75} and ours[0].value == 0.8
    assert ours[0].user_attrs["device"] == "cuda:1"  # the outcome's device overwrote the start's
    # both studies name their objective
    for name in ("batched", "api"):
        assert optuna.load_study(study_name=name, storage=reader).metric_names == ["test_accuracy"]
    for trial in ours:  # local time, as Optuna shows it (a UTC mix-up is 5.5 hours off)
        assert before <= trial.datetime_start <= trial.datetime_complete <= after
    # the study's best trial and its dashboard view come from these rows
    study = optuna.load_study(study_name="batched", storage=reader)
    assert study.best_trial.number == 0 and study.best_value == 0.8
    reader.engine.dispose()
    for storage in (batched, through_api):
        storage.engine.dispose()


def _is_flat(value) -> bool:
    return isinstance(value, str | int | float) and value not in ("", "null")


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "api"])
def test_records_read_well_on_the_dashboard(tmp_path, batched):
    """lr on a log scale over the spec's range, p_detach a float, the seed an attribute (not a
    param the importance panel would rank), flat attributes (no dicts, no nulls), a named objective."""
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    if not batched:
        optuna_rows.disable(storage)
    _write_a_pack(storage, "records")
    study = optuna.load_study(study_name="records", storage=storage)
    assert study.metric_names == ["test_accuracy"]
    completed, diverged, abandoned = study.trials
    for trial, cell in zip(study.trials, SPEC.cells()[:3], strict=True):
        assert trial.distributions == {
            "variant": CategoricalDistribution(["vanilla", "h-detach"]),
            "p_detach": FloatDistribution(0.0, 1.0),
            "lr": FloatDistribution(1e-3, 1e-2, log=True),
        }
        assert trial.params == {"variant": cell.variant, "p_detach": cell.p_detach, "lr": cell.lr}
        assert trial.user_attrs["seed"] == cell.seed and trial.user_attrs["cell"] == cell.index
        assert all(_is_flat(v) for k, v in trial.user_attrs.items() if k != "recorded"), trial.user_attrs
    assert {
        k: v for k, v in completed.user_attrs.items() if k not in ("seed", "cell", "attempt", "job_id")
    } == {
        "status": "completed",
        "outcome": "completed",
        "recorded": True,
        "final_accuracy": 0.8,
        "final_loss": 0.5,
        "best_val_accuracy": 0.85,
        "best_val_loss": 0.4,
        "best_val_step": 5,
        "transfer_T10_accuracy": 0.7,
        "best_val_transfer_T10_accuracy": 0.75,
        "steps_run": 10,
        "wall_time_s": 1.5,
        "data": "copying T=5",
        "device": "cuda:1",
    }
    # a diverged trial: no metrics, no null steps-to-threshold, no empty data description
    assert diverged.state == TrialState.FAIL and diverged.user_attrs["diverged_at"] == 3
    assert not {"steps_to_threshold", "data"} & diverged.user_attrs.keys()
    assert not [k for k in diverged.user_attrs if k.startswith(("final_", "best_val_"))]
    assert abandoned.user_attrs["outcome"] == "lease expired"
    storage.engine.dispose()


@pytest.mark.parametrize(
    ("learning_rates", "low", "high", "selection", "objective"),
    [
        ([0.1], 0.1, 0.1, "final", "test_accuracy"),
        ({"low": 1e-4, "high": 1e-1, "num": 4}, 1e-4, 1e-1, "best_val", "test_accuracy at best validation"),
    ],
    ids=["one-lr", "range"],
)
def test_a_single_lr_or_a_range_is_a_valid_log_scale(
    tmp_path, learning_rates, low, high, selection, objective
):
    spec = StudySpec.model_validate(
        {**SPEC.model_dump(), "learning_rates": learning_rates, "selection": selection}
    )
    assert objective_name(spec) == objective
    for batched in (True, False):
        storage = open_storage(f"sqlite:///{tmp_path / f'{batched}.db'}")
        if not batched:
            optuna_rows.disable(storage)
        create_optuna_study(storage, "lrs", spec, 1)
        start_trials(storage, "lrs", spec, [(cell, {}) for cell in spec.cells()])
        study = optuna.load_study(study_name="lrs", storage=storage)
        assert study.metric_names == [objective]
        lr = study.trials[0].distributions["lr"]
        assert isinstance(lr, FloatDistribution) and lr.log
        assert lr.low == pytest.approx(low) and lr.high == pytest.approx(high)
        assert sorted({t.params["lr"] for t in study.trials}) == spec.lr_values()
        storage.engine.dispose()


def test_trial_numbers_stay_unique_with_concurrent_creators(database_url):
    """Batched creators and Optuna's own, at once: numbers 0..n-1, each once (counted under a lock)."""
    storages = [open_storage(database_url) for _ in range(4)]
    optuna_rows.disable(storages[3])
    create_optuna_study(storages[0], "busy", SPEC, 1)
    cells = SPEC.cells()
    errors: list[BaseException] = []

    def create(storage) -> None:
        try:
            for _ in range(5):
                start_trials(storage, "busy", SPEC, [(cell, {}) for cell in cells[:3]])
        except BaseException as error:  # reported below, with the thread's own traceback lost
            errors.append(error)

    threads = [threading.Thread(target=create, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    study_id = storages[0].get_study_id_from_name("busy")
    numbers = sorted(t.number for t in storages[0].get_all_trials(study_id))
    assert numbers == list(range(4 * 5 * 3))
    for storage in storages:
        storage.engine.dispose()


def test_a_closing_must_be_final():
    with pytest.raises(ValueError, match="not a final state"):
        optuna_rows.close_trials(open_storage("sqlite://"), [optuna_rows.Closing(1, TrialState.RUNNING)])


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "api"])
def test_a_missing_optuna_study_is_created_given_our_study_id(tmp_path, batched):
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    if not batched:
        optuna_rows.disable(storage)
    cell = SPEC.cells()[0]
    with pytest.raises(KeyError):
        start_trials(storage, "not-yet", SPEC, [(cell, {})])
    (trial_id,) = start_trials(storage, "not-yet", SPEC, [(cell, {})], study_id=42)
    study = optuna.load_study(study_name="not-yet", storage=storage)
    assert study.user_attrs["hdetach_study_id"] == 42
    assert [t._trial_id for t in study.trials] == [trial_id]
    storage.engine.dispose()


@pytest.mark.postgres
def test_batched_writes_survive_the_server_dropping_their_connections():
    """A worker's learning-curve write used to fail its whole pack after a dropped connection."""
    import psycopg

    from tests.conftest import POSTGRES_ADMIN, _drop_postgres_database, _fresh_postgres_database

    name, url = _fresh_postgres_database()
    storage = open_storage(url)
    try:
        assert optuna_rows.supported(storage)
        create_optuna_study(storage, "drops", SPEC, 1)
        ids = start_trials(storage, "drops", SPEC, [(cell, {}) for cell in SPEC.cells()[:2]])
        report_values(storage, [(ids[0], 5, 0.25)])  # pools a connection of each engine

        def drop_every_connection() -> None:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
                dropped = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                ).fetchone()
            assert dropped is not None and dropped[0] > 0

        drop_every_connection()
        report_values(storage, [(ids[0], 10, 0.5), (ids[1], 10, 0.75)])
        drop_every_connection()
        more = start_trials(storage, "drops", SPEC, [(SPEC.cells()[2], {})])
        drop_every_connection()
        assert close_trials(storage, [abandon_closing(i, "test") for i in [*ids, *more]]) == [True] * 3
        trials = storage.get_all_trials(storage.get_study_id_from_name("drops"))
        assert [t.intermediate_values for t in trials] == [{5: 0.25, 10: 0.5}, {10: 0.75}, {}]
        assert {t.state for t in trials} == {TrialState.FAIL}
    finally:
        storage.engine.dispose()
        _drop_postgres_database(name)
