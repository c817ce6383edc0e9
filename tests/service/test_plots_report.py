"""The study plots (SVG and PNG) and the HTML report, on small synthetic studies."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from functools import cache
from io import BytesIO

import numpy as np
import pytest
from matplotlib.image import imread

from service.plots import PLOT_NAMES, PlotFormat, render_plot
from service.report import render_report
from studies.results import CurvePoint, TrialRow, study_summary
from studies.robustness import RobustnessSummary
from studies.spec import StudySpec
from tests.service import test_hostile_input

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL_NAME = "<script>alert(1)</script>"

Study = tuple[StudySpec, list[TrialRow], Mapping[int, Sequence[CurvePoint]], RobustnessSummary]


def make_spec(lrs: Sequence[float] = (1e-3, 1e-2, 1e-1), seeds: Sequence[int] = (0, 1, 2)) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "robustness-test",
            "task": {"name": "copying", "T": 20},
            "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
            "learning_rates": list(lrs),
            "seeds": list(seeds),
            "budget": {"steps": 400, "eval_every": 100},
            "success": {"metric": "accuracy", "threshold": 0.9},
        }
    )


def make_rows(spec: StudySpec, shift: float = 0.0, done: int | None = None) -> list[TrialRow]:
    """A finished grid (the first `done` cells if given, the rest queued): h-detach does better,
    the largest lr diverges for vanilla."""
    rows = []
    lrs = spec.lr_values()
    for cell in spec.cells():
        finished = done is None or cell.index < done
        diverged = cell.variant == "vanilla" and cell.lr == max(lrs) and len(lrs) > 1
        quality = 0.8 + 0.05 * lrs.index(cell.lr) + (0.1 if cell.variant == "h-detach" else 0.0)
        metric = min(1.0, quality + 0.01 * cell.seed + shift)
        rows.append(
            TrialRow(
                cell=cell.index,
                variant=cell.variant,
                p_detach=cell.p_detach,
                lr=cell.lr,
                seed=cell.seed,
                state="done" if finished else "queued",
                attempts=1 if finished else 0,
                metric=None if (diverged or not finished) else metric,
                steps_to_threshold=100 + 50 * cell.seed
                if finished and not diverged and metric >= 0.9
                else None,
                diverged=finished and diverged,
            )
        )
    return rows


def make_curves(rows: Sequence[TrialRow]) -> dict[int, list[CurvePoint]]:
    """Learning curves rising towards each finished row's metric."""
    return {
        r.cell: [
            CurvePoint(step=step, values={"train_loss": 1.0 / step, "val_accuracy": r.metric * step / 400})
            for step in (100, 200, 300, 400)
        ]
        for r in rows
        if r.metric is not None
    }


def study(shift: float = 0.0, done: int | None = None, **spec_kw) -> Study:
    spec = make_spec(**spec_kw)
    rows = make_rows(spec, shift=shift, done=done)
    return spec, rows, make_curves(rows), study_summary(spec, rows)


CASES: dict[str, dict] = {
    "complete": {},
    "partial": {"done": 7},  # most cells queued, no curves for them
    "nothing-done": {"done": 0},
    "single-lr-and-seed": {"lrs": (1e-2,), "seeds": (3,)},
    "lower-metrics": {"shift": -0.2},
}


@cache
def rendered(case: str, name: str, fmt: PlotFormat) -> bytes:
    """A plot of one of CASES, rendered once for the whole module (rendering is the slow part)."""
    return render_plot(name, fmt, *study(**CASES[case]))


def assert_svg(data: bytes) -> None:
    assert ET.fromstring(data).tag.endswith("svg")


def assert_png(data: bytes) -> None:
    assert data.startswith(PNG_SIGNATURE)
    image = imread(BytesIO(data))
    assert image.shape[0] > 100 and image.shape[1] > 100


# -- plots ---------------------------------------------------------------------------------------


def svg_texts(data: bytes) -> list[str]:
    """The text elements of an SVG: its text is kept as text (svg.fonttype none), not glyph paths."""
    return [
        "".join(e.itertext()).strip() for e in ET.fromstring(data).iter("{http://www.w3.org/2000/svg}text")
    ]


@pytest.mark.parametrize("case", ["complete", "partial", "nothing-done", "single-lr-and-seed"])
@pytest.mark.parametrize("name", PLOT_NAMES)
def test_every_plot_renders_valid_svg(case, name):
    assert_svg(rendered(case, name, "svg"))


@pytest.mark.parametrize(
    ("case", "name"),
    [("partial", name) for name in PLOT_NAMES]
    + [("nothing-done", "steps_to_threshold")],  # a figure of text only
)
def test_plots_render_pngs_of_useful_size(case, name):
    assert_png(rendered(case, name, "png"))


def test_unknown_plot_or_format_is_refused():
    spec, rows, curves, summary = study()
    with pytest.raises(ValueError, match="unknown plot"):
        render_plot("histogram", "svg", spec, rows, curves, summary)
    with pytest.raises(ValueError, match="unknown format"):
        render_plot("metric_vs_lr", "pdf", spec, rows, curves, summary)  # type: ignore[arg-type]


def test_plots_of_a_study_with_nothing_done_carry_a_note():
    assert "no finished trials yet (18 pending)" in rendered("nothing-done", "metric_vs_lr", "svg").decode()
    assert "no learning curves recorded yet" in rendered("nothing-done", "learning_curves", "svg").decode()


def test_svg_output_is_reproducible_and_follows_the_data():
    first = rendered("complete", "metric_vs_lr", "svg")
    assert render_plot("metric_vs_lr", "svg", *study()) == first
    assert rendered("lower-metrics", "metric_vs_lr", "svg") != first


def test_diverged_runs_get_a_legend_entry_only_when_some_diverged():
    assert "diverged" in svg_texts(rendered("complete", "metric_vs_lr", "svg"))
    assert "diverged" not in svg_texts(rendered("single-lr-and-seed", "metric_vs_lr", "svg"))


@pytest.mark.parametrize("name", PLOT_NAMES)
def test_svg_text_is_text_and_legends_name_p_detach(name):
    import matplotlib

    texts = svg_texts(rendered("complete", name, "svg"))
    assert "<path" not in "".join(texts) and texts  # real <text> elements
    assert any("h-detach (p_detach 0.5)" in t for t in texts), texts
    assert matplotlib.rcParams["svg.fonttype"] == "path"  # set while saving only, then given back


def test_learning_curves_show_a_mean_and_band_per_variant_and_tell_the_seeds_apart():
    texts = svg_texts(rendered("complete", "learning_curves", "svg"))
    assert {"vanilla (p_detach 0): mean", "h-detach (p_detach 0.5): mean", "range over seeds"} <= set(texts)
    assert {"seed 0", "seed 1", "seed 2"} <= set(texts)
    assert "styles repeat" not in " ".join(texts)
    spec, rows, curves, summary = study(seeds=tuple(range(17)), lrs=(1e-2,))
    many = svg_texts(render_plot("learning_curves", "svg", spec, rows, curves, summary))
    assert "seed 15" in many and "seed 16" not in many and "(styles repeat after 16 seeds)" in many


def test_steps_plot_says_how_many_seeds_reached_the_threshold_of_those_that_ran():
    texts = svg_texts(rendered("complete", "steps_to_threshold", "svg"))
    # make_rows: vanilla never reaches 0.9 below the top lr and diverges there; h-detach always does
    assert texts.count("0/3") == 3 and texts.count("3/3") == 3
    spec, rows, curves, _ = study()
    rows[-1] = rows[-1].model_copy(update={"state": "failed", "metric": None, "steps_to_threshold": None})
    summary = study_summary(spec, rows)
    failed = svg_texts(render_plot("steps_to_threshold", "svg", spec, rows, curves, summary))
    assert {"2/2", "+1 failed"} <= set(failed) and failed.count("3/3") == 2  # one element per line


def test_paired_difference_plot_draws_the_summarys_pairs_and_marks_unreliable_intervals():
    texts = svg_texts(rendered("complete", "paired_difference", "svg"))
    assert "paired difference with vanilla (p_detach 0)" in " ".join(texts)
    assert "interval from 2–3 pairs: unreliable" in texts  # 3 seeds per lr
    assert "baseline diverged (win)" in texts  # vanilla diverges at the top lr
    spec, rows, curves, summary = study(seeds=(0, 1, 2, 3))
    four = svg_texts(render_plot("paired_difference", "svg", spec, rows, curves, summary))
    assert "interval from 2–3 pairs: unreliable" not in four
    single = study()
    spec = single[0].model_copy(update={"variants": single[0].variants[:1]})
    rows = [r for r in single[1] if r.variant == "vanilla"]
    alone = render_plot("paired_difference", "svg", spec, rows, single[2], study_summary(spec, rows))
    assert "only one variant: nothing to compare" in svg_texts(alone)


def test_steps_plot_says_so_when_no_trial_reached_the_threshold():
    spec, rows, curves, _ = study()
    failing = [r.model_copy(update={"metric": 0.5, "steps_to_threshold": None}) for r in rows]
    svg = render_plot("steps_to_threshold", "svg", spec, failing, curves, study_summary(spec, failing))
    assert_svg(svg)
    assert "no trial reached the threshold" in svg.decode()
    assert "0/3" in svg_texts(svg)
    assert "no trial reached the threshold" not in rendered("complete", "steps_to_threshold", "svg").decode()


def test_learning_curves_caps_the_number_of_panels():
    spec, rows, curves, summary = study(lrs=tuple(np.geomspace(1e-4, 1e-1, 15)), seeds=(0,))
    svg = render_plot("learning_curves", "svg", spec, rows, curves, summary).decode()
    assert "12 of 15 learning rates" in svg
    assert len(re.findall(r"lr = ", svg)) == 12


# -- report --------------------------------------------------------------------------------------


def plot_url(name: str, fmt: str) -> str:
    return f"/studies/7/plots/{name}.{fmt}"


def report(name: str = EVIL_NAME, **study_kw) -> str:
    spec, rows, _, summary = study(**study_kw)
    return render_report(7, name, "running", spec, rows, summary, plot_url)


def test_report_escapes_the_study_name():
    page = report()
    assert EVIL_NAME not in page
    assert html.escape(EVIL_NAME) in page
    assert "<script" not in page.lower()


def links(page: str) -> list[str]:
    """Every href and src of a page, unescaped."""
    return [html.unescape(m) for m in re.findall(r'(?:href|src)="([^"]*)"', page)]


def test_report_links_are_relative_to_the_report_so_a_prefix_or_a_saved_copy_keeps_them():
    from urllib.parse import urljoin

    spec, rows, _, summary = study()
    page = render_report(7, "x", "done", spec, rows, summary)
    found = links(page)
    assert set(found) == {f"plots/{n}.{f}" for n in PLOT_NAMES for f in ("svg", "png")} | {
        "trials.csv",
        "summary",
    }
    for link in found:  # no scheme, host or leading slash: each resolves under the report's own path
        assert urljoin("https://lab.example/hdetach/studies/7/report", link).startswith(
            "https://lab.example/hdetach/studies/7/"
        )


def test_the_inlined_report_needs_no_server():
    import base64
    import csv
    import io
    import json

    spec, rows, curves, summary = study()
    plots = {name: render_plot(name, "svg", spec, rows, curves, summary) for name in PLOT_NAMES}
    page = render_report(7, "x", "done", spec, rows, summary, inline_plots=plots)
    found = links(page)
    assert len(found) == len(PLOT_NAMES) + 2 and all(link.startswith("data:") for link in found)
    decoded = {link.split(";")[0]: base64.b64decode(link.split(",", 1)[1]) for link in found}
    svgs = [base64.b64decode(link.split(",", 1)[1]) for link in found if link.startswith("data:image/svg")]
    assert svgs == [plots[name] for name in PLOT_NAMES]
    assert len(list(csv.DictReader(io.StringIO(decoded["data:text/csv"].decode())))) == len(rows)
    assert json.loads(decoded["data:application/json"])["baseline"] == "vanilla"


def test_report_shows_the_comparison_per_learning_rate_and_says_when_it_is_unreliable():
    page = report()
    assert "h-detach vs vanilla per learning rate" in page
    assert page.count("unreliable: too few pairs") == 2  # 3 seeds per lr; vanilla diverged at the top one
    assert "2 to 3 pairs per learning rate" in page  # the summary's caveat, in the limits list
    assert "unreliable: too few pairs" not in report(seeds=(0, 1, 2, 3))


def test_report_is_one_html_page_with_every_variant_and_plot():
    page = report()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for variant in ("vanilla", "h-detach"):
        assert variant in page
    for name in PLOT_NAMES:
        assert f'src="{plot_url(name, "svg")}"' in page
        assert f'href="{plot_url(name, "png")}"' in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "A diverged run is the worst outcome" in page
    assert "What these numbers can support" in page  # 3 seeds per lr: the caveats are listed
    for caveat in study()[3].caveats:
        assert html.escape(caveat) in page


def test_report_lists_one_row_per_trial_and_the_completeness():
    spec, rows, _, summary = study(done=7)
    page = render_report(7, "partial", "running", spec, rows, summary, plot_url)
    assert page.count('<tr class="trial">') == len(rows) == 18
    assert "7 of 18 cells done, 0 failed, 11 pending" in page


def test_report_escapes_trial_errors_and_shows_missing_numbers_as_dashes():
    spec, rows, _, summary = study(done=0)
    rows[0] = rows[0].model_copy(update={"state": "failed", "error": "boom <b>&</b>"})
    summary = study_summary(spec, rows)
    page = render_report(7, "x", "running", spec, rows, summary, plot_url)
    assert "boom &lt;b&gt;&amp;&lt;/b&gt;" in page and "<b>&</b>" not in page
    assert "–" in page


# -- over HTTP and from the database -------------------------------------------------------------

locked_server = test_hostile_input.locked_server  # the fixture: a server whose reads need a token


def finished_study(server) -> int:
    """A study submitted over HTTP whose 8 cells are recorded straight through the queue."""
    from studies import queue
    from studies.db.engine import make_engine, session_factory
    from tests.service.test_cache import claim_all, record
    from tests.service.test_studies_api import SPEC

    study_id = server.client().post("/studies", json=SPEC).json()["id"]
    engine = make_engine(server.database_url)
    try:
        factory = session_factory(engine)
        for job in claim_all(factory):
            record(factory, job)
        assert queue.get_study(factory, study_id).status == "done"
    finally:
        engine.dispose()
    return study_id


def fetch_every_link(api, report_url: str) -> dict[str, object]:
    """Each of the report's links, resolved against the report's URL and fetched with `api`."""
    from urllib.parse import urljoin

    page = api.get(report_url)
    assert page.status_code == 200
    return {link: api.get(urljoin(report_url, link)) for link in links(page.text)}


def test_every_link_of_the_served_report_resolves_against_its_url(server):
    api = server.client()
    study_id = finished_study(server)
    replies = fetch_every_link(api, f"{server.url}/studies/{study_id}/report")
    assert len(replies) == 2 * len(PLOT_NAMES) + 2
    for link, reply in replies.items():
        assert reply.status_code == 200, link
    assert replies["plots/paired_difference.svg"].headers["content-type"].startswith("image/svg+xml")
    assert replies["summary"].json()["complete"] is True
    table = replies["trials.csv"]
    assert table.headers["content-type"].startswith("text/csv")
    assert table.headers["content-disposition"] == f'attachment; filename="study-{study_id}-trials.csv"'
    lines = table.text.splitlines()
    assert len(lines) == 9 and lines[0].startswith("cell,variant,p_detach,lr,seed,state")
    assert api.get("/studies/999/trials.csv").status_code == 404


def test_with_reads_behind_a_token_the_reports_links_work_with_it_and_not_without(locked_server):
    study_id = finished_study(locked_server)
    report_url = f"{locked_server.url}/studies/{study_id}/report"
    replies = fetch_every_link(locked_server.client(), report_url)
    assert replies and all(reply.status_code == 200 for reply in replies.values())
    anonymous = locked_server.client(token=None)
    assert anonymous.get(f"{locked_server.url}/studies/{study_id}/trials.csv").status_code == 401


def test_the_standalone_report_reads_the_database_and_inlines_everything(server):
    from deployment.backend import Backend
    from deployment.settings import Settings
    from service.report import standalone_report
    from studies.exceptions import NotFound

    study_id = finished_study(server)
    with Backend(Settings(database_url=server.database_url)) as backend:
        page = standalone_report(backend, study_id)
        with pytest.raises(NotFound):
            standalone_report(backend, 999)
    found = links(page)
    assert len(found) == len(PLOT_NAMES) + 2 and all(link.startswith("data:") for link in found)
    assert "api-tiny" in page and "h-detach vs vanilla per learning rate" in page
