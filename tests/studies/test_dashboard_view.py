"""optuna-dashboard's own app, on the storage our writes went to, shows the records as meant: the
learning rate on a log scale, the objective's name, sortable attributes, no seed among the params."""

from __future__ import annotations

import httpx
import optuna_dashboard
import pytest

from studies import optuna_rows
from studies.spec import StudySpec
from studies.tracking import close_trials, create_optuna_study, open_storage, result_closing, start_trials

SPEC = StudySpec.model_validate(
    {
        "name": "dashboard",
        "task": {"name": "adding", "T": 5},
        "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
        "learning_rates": [1e-3, 1e-2, 1e-1],
        "seeds": [1, 2],
        "success": {"metric": "mse", "threshold": 0.01},
    }
)


def _finished_study(storage) -> None:
    """Every cell recorded; its test MSE grows with the learning rate, whatever the seed."""
    create_optuna_study(storage, "view", SPEC, 1)
    cells = SPEC.cells()
    ids = start_trials(storage, "view", SPEC, [(cell, {"pack_size": len(cells)}) for cell in cells])
    results = [
        {
            "status": "completed",
            "final": {"mse": cell.lr + cell.seed * 1e-4},
            "steps_run": 100,
            "steps_to_threshold": None if cell.lr > 0.01 else 50,
            "wall_time_s": 2.0,
        }
        for cell in cells
    ]
    closings = [result_closing(i, "mse", r) for i, r in zip(ids, results, strict=True)]
    assert close_trials(storage, closings) == [True] * len(cells)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "api"])
def test_the_dashboard_shows_a_log_lr_the_metric_name_and_sortable_attrs(database_url, batched):
    storage = open_storage(database_url)
    if not batched:
        optuna_rows.disable(storage)
    _finished_study(storage)
    app = optuna_dashboard.wsgi(storage)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://dashboard") as client:
        (summary,) = client.get("/api/studies").json()["study_summaries"]
        detail = client.get(f"/api/studies/{summary['study_id']}").json()
        importances = client.get(f"/api/studies/{summary['study_id']}/param_importances")
    assert detail["objective_names"] == ["test_mse"]
    for space in ("intersection_search_space", "union_search_space"):
        by_name = {p["name"]: p["distribution"] for p in detail[space]}
        assert by_name.keys() == {"variant", "p_detach", "lr"}  # the seed is no hyperparameter
        assert by_name["lr"] == {
            "type": "FloatDistribution",
            "low": 1e-3,
            "high": 0.1,
            "step": None,
            "log": True,
        }
        assert by_name["p_detach"]["type"] == "FloatDistribution"
    trials = detail["trials"]
    assert len(trials) == SPEC.grid_size and {t["state"] for t in trials} == {"Complete"}
    lr = next(p for p in trials[0]["params"] if p["name"] == "lr")
    assert lr["distribution"]["log"] is True and float(lr["param_external_value"]) == 1e-3
    # numbers the trials table can sort by; none turned into text by a null in one trial
    sortable = {a["key"]: a["sortable"] for a in detail["union_user_attrs"]}
    for key in ("seed", "final_mse", "wall_time_s", "steps_run", "pack_size", "cell"):
        assert sortable[key] is True, key
    assert sortable["steps_to_threshold"] is True  # absent where missing, never "null"
    # the importance panel ranks the learning rate, and has no seed to rank
    assert importances.status_code == 200
    (ranked,) = importances.json()["param_importances"]
    assert {p["name"] for p in ranked} == {"variant", "p_detach", "lr"}
    assert max(ranked, key=lambda p: p["importance"])["name"] == "lr"
    storage.engine.dispose()
