"""hdetach.client.Client against the real server (uvicorn in a subprocess) and a real worker."""

from __future__ import annotations

import re

import httpx
import pandas
import pytest

from hdetach.client import ApiError, BadClientSetting, Client, NotTheService
from service.schemas import StudyOut
from studies.results import TrialRow
from studies.robustness import RobustnessSummary
from tests.service.conftest import TOKEN, run_worker
from tests.service.test_studies_api import SPEC

# the client's tests run on SQLite only: the REST tests run every route on both databases
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_a_study_s_whole_life_through_the_client(server, tmp_path):
    with Client(server.url, TOKEN, page_size=3) as client:
        study = client.submit(SPEC)
        assert study.created is not None and study.created.cells == 8
        assert isinstance(study.get(), StudyOut) and study.get().status == "queued"
        with pytest.raises(TimeoutError, match="still queued"):
            study.wait(progress=False, interval=0.1, timeout=0.3)

        run_worker(server.database_url)
        finished = study.wait(progress=False, interval=0.1, timeout=60)
        assert finished.status == "done" and finished.jobs["done"] == 8

        summary = study.summary()
        assert isinstance(summary, RobustnessSummary)
        assert {v.name for v in summary.variants} == {"vanilla", "h-detach"}
        rows = study.trial_rows()  # read 3 at a time: three pages
        assert [type(r) for r in rows] == [TrialRow] * 8 and [r.cell for r in rows] == list(range(8))
        frame = study.trials()
        assert isinstance(frame, pandas.DataFrame) and len(frame) == 8
        assert {"variant", "p_detach", "lr", "seed", "state", "metric"} <= set(frame.columns)
        assert list(frame["metric"]) == [r.metric for r in rows]

        saved = study.report(tmp_path / "report.html")
        html = saved.read_text()
        assert html.startswith("<!DOCTYPE html>") and SPEC["name"] in html
        links = re.findall(r"""(?:src|href)="([^"]+)\"""", html)
        assert links and all(link.startswith(("data:", "#")) for link in links), links[:5]

        other = client.submit(preset="adding-T50-small", overrides={"seeds": [1]})
        assert [s.id for s in client.studies()] == [other.id, study.id]
        assert client.studies(status="done")[0].id == study.id
        assert other.cancel().status == "cancelled"
        other.delete()
        with pytest.raises(ApiError) as gone:
            other.get()
        assert gone.value.status == 404 and f"no study {other.id}" in str(gone.value)


@SQLITE_ONLY
def test_the_client_raises_the_api_s_problem_naming_each_field(server):
    with Client(server.url, TOKEN) as client:
        with pytest.raises(ApiError) as refused:
            client.submit({**SPEC, "seeds": [-1], "model": {"hidden_size": 0}})
        assert refused.value.status == 422
        named = {".".join(map(str, e.loc)) for e in refused.value.problem.errors or []}
        assert named == {"body.seeds.0", "body.model.hidden_size"}, named
        assert "body.seeds.0" in str(refused.value)
        with pytest.raises(ApiError) as unknown:
            client.submit(preset="no-such-preset")
        assert unknown.value.status == 404
        with pytest.raises(ValueError, match="one of them"):
            client.submit()
        with pytest.raises(ApiError) as not_finite:  # sent as it is: the service names the field
            client.submit({**SPEC, "success": {"metric": "accuracy", "threshold": float("nan")}})
        assert [e.loc for e in not_finite.value.problem.errors or []] == [["body", "success", "threshold"]]
        assert client.studies() == []
    with Client(server.url, token="") as anonymous, pytest.raises(ApiError) as refused:
        anonymous.submit(SPEC)
    assert refused.value.status == 401
    with pytest.raises(BadClientSetting, match="not printable ASCII") as bad_token:
        Client(server.url, token="s3cret\nvalue")
    assert "s3cret" not in str(bad_token.value)
    with Client(f"{server.url}/api", TOKEN) as wrong, pytest.raises(NotTheService):
        wrong.check()
    with Client(server.url, TOKEN) as right:
        right.check()


class LosesTheFirstAnswer(httpx.HTTPTransport):
    """Delivers the first POST to the server, then drops its answer, as a broken connection would."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and not self.dropped:
            self.dropped += 1
            response.read()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


@SQLITE_ONLY
def test_a_submission_whose_answer_is_lost_is_retried_without_a_second_study(server):
    transport = LosesTheFirstAnswer()
    with Client(server.url, TOKEN, transport=transport) as client:
        study = client.submit(SPEC)
        assert transport.dropped == 1
        assert [s.id for s in client.studies()] == [study.id]
