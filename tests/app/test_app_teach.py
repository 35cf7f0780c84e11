"""The Teach page and the per-verb curves, under streamlit.testing.v1.AppTest (no browser).

The Teach page shows the prompts minituner.minigpt.teach builds for a typed verb and the base
model's answers; a character outside the vocabulary is named (with a hint) and nothing
runs; a teach run with a tiny step budget trains through the server's Trainer (a child
process) to the end and shows before and after. The per-verb curves: the pure learning
order and the SVG/plotly drawings against hand-made series, the Compare page's chart on
stored runs (and its message for a run without per-verb figures). Runs are written only
into temporary MINITUNER_CACHE directories.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from app_util import live_components, live_panel  # noqa: E402
from page_util import open_page, texts  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import data, helpers  # noqa: E402
from app.charts import verbs  # noqa: E402
from minituner.finetune.config import FinetuneConfig  # noqa: E402
from minituner.finetune.loop import finetune  # noqa: E402
from minituner.finetune.result import load_base  # noqa: E402
from minituner.minigpt.teach import TeachVerb, teach_split  # noqa: E402
from minituner.minigpt.verbs import IRREGULAR_VERBS  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory) -> Path:
    """A store with one tiny LoRA run (three periodic evaluations)."""
    cache = tmp_path_factory.mktemp("runs")
    cfg = FinetuneConfig(method="lora", steps=2, eval_every=1, eval_sample=16, seed=11)
    RunStore([cache]).save(finetune(cfg, load_base(), device="cpu"))
    return cache


def frame(at: AppTest, column: str):
    """The table that has ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


# ---------------------------------------------------------------------- the Teach page
def test_teach_page_shows_the_prompts_and_the_base_models_answers(empty_cache, idle_trainer):
    at = open_page("teach")
    assert [t.value for t in at.title] == ["Teach your own verb"]
    assert not at.error, texts(at.error)
    split = teach_split(TeachVerb("swim", "swam"))
    train = at.dataframe[0].value
    held = frame(at, "base model")
    assert list(train["prompt"]) == [e.prompt for e in split.train]
    assert list(held["prompt"]) == [e.prompt for e in split.held_out]
    assert set(held["answer"]) == {"swam"} and len(held) == 30
    assert all(cell[0] in "✓✗" for cell in held["base model"])
    assert at.button(key="teach_start").label == "Teach it live"

    at.text_input(key="teach_lemma").set_value("drink").run()
    at.text_input(key="teach_past").set_value("drank").run()
    assert not at.exception and not at.error
    held = frame(at, "base model")
    assert set(held["answer"]) == {"drank"}
    assert all("__" in p for p in held["prompt"])


@pytest.mark.parametrize(
    ("lemma", "past", "named"),
    [("swåm", "swåm", "'å' (try 'a')"), ("blick", "bl¤ck", "'¤'"), ("go", "went", "already")],
)
def test_what_cannot_be_taught_is_named_before_anything_runs(
    empty_cache, idle_trainer, lemma, past, named
):
    at = open_page("teach")
    at.text_input(key="teach_lemma").set_value(lemma).run()
    at.text_input(key="teach_past").set_value(past).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = texts(at.error)
    assert errors.startswith("This verb cannot be taught:") and named in errors, errors
    assert not at.dataframe and not [b for b in at.button if b.key == "teach_start"]
    assert not idle_trainer.busy


def _lesson(at: AppTest) -> AppTest:
    """The lesson of the live test: blick / black, 2 steps, seed 5151."""
    at.text_input(key="teach_lemma").set_value("blick").run()
    at.text_input(key="teach_past").set_value("black").run()
    at.number_input(key="teach_steps").set_value(2).run()
    return at.number_input(key="teach_seed").set_value(5151).run()


def test_a_teach_run_trains_live_and_shows_before_and_after(empty_cache, idle_trainer):
    at = _lesson(open_page("teach"))
    assert live_components(at) == []  # no run of its own: nothing polls
    at.button(key="teach_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Teaching live" in texts(at.subheader)
    snap = idle_trainer.snapshot(at.session_state["live_job"])
    assert snap.config["teach"] == "blick:black" and snap.pid and snap.pid != os.getpid()
    panel = live_panel(at)
    assert 'class="live-progress"' in panel
    assert 'class="verb"' in panel or verbs.NOT_YET in panel

    idle_trainer.join(TIMEOUT)
    assert not idle_trainer.busy, "training did not end in time"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Teaching finished" in texts(at.success), texts(at.warning) + texts(at.error)
    table = frame(at, "after (fine-tuned)")
    assert len(table) == 30 and set(table["correct"]) == {"black"}
    assert all(c[0] in "✓✗" for c in table["after (fine-tuned)"])
    labels = {m.label for m in at.metric}
    assert "taught “blick”" in labels and "English drift" in labels
    (run,) = [r for r in RunStore().list() if r.config.finetune.seed == 5151]
    assert run.config.finetune.teach == "blick:black" and run.config.finetune.steps == 2
    assert "blick" in run.final.taught_accuracy
    assert " · teach blick:black · 2 steps" in helpers.run_label(run)  # menus name the lesson
    assert "Learned" in texts(at.markdown) or "Not learned" in texts(at.markdown)
    assert at.button(key="teach_start").label == "Teach it live anyway"
    held = next(m for m in at.metric if m.label == "taught “blick”")
    assert held.proto.help.startswith("held-out accuracy of the taught verb; the change is against")
    # issue 24, the honest headline: what the lesson cost the regular verbs, with its change
    regular = next(m for m in at.metric if m.label == "regular verbs")
    assert regular.proto.delta.endswith(" pts") and regular.proto.delta[0] in "+-"
    assert regular.proto.help.endswith(f"base model {helpers.pct(base_regular())}")

    other = _lesson(open_page("teach"))  # another session: the lesson loads from the store
    assert not other.exception and "This lesson is in the store" in texts(other.info)
    assert len(frame(other, "after (fine-tuned)")) == 30


def base_regular() -> float:
    return load_base().metrics["regular_accuracy"]


# ---------------------------------------------------------------------- per-verb curves
POINTS = [
    (0, {"go": 0.0, "be": 0.9, "see": 0.2, "eat": 0.0}),
    (10, {"go": 1.0, "be": 0.8, "see": 0.6, "eat": 0.9}),
    (20, {"go": 0.9, "be": 1.0, "see": 0.8, "eat": 0.5}),
    (30, {"go": 1.0, "be": 1.0, "see": 1.0, "eat": 0.6}),
]


def test_learning_order_keeps_a_verb_learned_only_once_it_stays():
    order = {x.verb: x for x in verbs.learning_order(POINTS)}
    assert (order["be"].known, order["be"].step) == (True, 0)
    assert order["go"].step == 10 and not order["go"].known
    assert order["see"].step == 20
    assert order["eat"].step is None and order["eat"].final == pytest.approx(0.6)  # fell back
    assert [x.verb for x in verbs.learning_order(POINTS)] == ["be", "go", "see", "eat"]
    text = verbs.order_sentence(POINTS, 30)
    assert "Learned first: **go** (step 10); learned last: **see** (step 20)." in text
    assert "Already at 80% before training: **be**." in text
    assert "Not learned within 30 steps: **eat** (last: eat 60%)." in text
    assert "no per-verb accuracy" in verbs.order_sentence([], 30)


def test_per_verb_points_read_records_and_skip_empty_evaluations(seeded_cache):
    (run,) = RunStore([seeded_cache]).list()
    points = verbs.per_verb_points(run.metrics.evals)
    assert [s for s, _ in points] == [e.step for e in run.metrics.evals] == [0, 1, 2]
    assert set(points[0][1]) <= set(IRREGULAR_VERBS) and points[0][1]
    empty = SimpleNamespace(step=3, verb_accuracy={})
    assert verbs.per_verb_points([*run.metrics.evals, empty]) == points


def test_live_verbs_svg_one_line_per_verb_and_the_taught_one_first():
    svg = verbs.live_verbs([(s, {**acc, "swim": s / 30}) for s, acc in POINTS], 40, "swim")
    root = ElementTree.fromstring(svg)
    lines = [e for e in root.iter() if e.get("class") == "verb"]
    assert [e.get("data-name") for e in lines] == ["swim", "be", "go", "see", "eat"]
    assert all(e.get("data-points") == "4" for e in lines)
    assert lines[0].get("stroke-width") == "6" and lines[1].get("stroke-width") == "3"
    legend = [e.text for e in root.iter() if e.tag.endswith("text") and e.text]
    assert "swim 100%" in legend and "eat 60%" in legend
    for message in (verbs.NOT_YET, verbs.NO_DATA):
        empty = ElementTree.fromstring(verbs.live_verbs([], 40, empty=message))
        assert not [e for e in empty.iter() if e.get("class") == "verb"]
        assert any(message in (e.text or "") for e in empty.iter())


def test_live_verbs_are_small_multiples_that_cannot_hide_each_other():
    """Issue 24, item 5: in one chart, verbs at the same accuracy hid each other. Each
    verb has its own panel (its own SVG, the same axes, each axis titled), in a row that
    wraps to the column; no panel has a fixed width."""
    same = [(s, {v: acc for v in ("be", "go", "see")}) for s, acc in ((0, 0.5), (10, 1.0))]
    root = ElementTree.fromstring(verbs.live_verbs(same, 10))
    panels = [e for e in root.iter() if e.tag.endswith("svg")]
    assert [p.get("data-chart") for p in panels] == ["verb-be", "verb-go", "verb-see"]
    for p in panels:
        lines = [e for e in p.iter() if e.get("class") == "verb"]
        assert len(lines) == 1 and lines[0].get("data-points") == "2"
        assert p.get("width") == "100%" and p.get("viewBox")
        axes = {a.get("data-axis"): a for a in p.iter() if a.get("data-axis")}
        assert set(axes) == {"x", "y"}
        for a in axes.values():
            assert any(t.get("class") == "axis-title" and t.text for t in a.iter())
    # the same points on every panel: same axes (0-100 %, the whole run)
    assert len({lines.get("points") for p in panels for lines in p.iter()
                if lines.get("class") == "verb"}) == 1  # fmt: skip


def test_verb_curves_plotly_one_trace_per_verb_in_percent():
    fig = verbs.verb_curves(POINTS, "t", highlight="see")
    assert [t.name for t in fig.data] == ["see", "be", "go", "eat"]
    assert list(fig.data[0].y) == pytest.approx([20.0, 60.0, 80.0, 100.0])
    assert fig.data[0].line.width > fig.data[1].line.width


def test_compare_page_draws_the_per_verb_curves_of_a_stored_run(seeded_cache, monkeypatch):
    monkeypatch.setenv("MINITUNER_CACHE", str(seeded_cache))
    at = open_page("compare")
    assert not at.error, texts(at.error)
    assert "Accuracy per irregular verb" in texts(at.subheader)
    chart = next(c for c in at.get("plotly_chart") if "compare_verbs" in c.proto.id)
    names = [t["name"] for t in json.loads(chart.proto.spec)["data"]]
    assert names and set(names) <= set(IRREGULAR_VERBS)
    assert "(learned: at least 80%" in texts(at.markdown)


def test_compare_page_says_when_a_run_has_no_per_verb_figures(seeded_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (info,) = RunStore([seeded_cache]).list()  # the run (the cache also holds the queue)
    run = info.path
    shutil.copytree(run, cache / run.name)
    metrics = json.loads((cache / run.name / "metrics.json").read_text())
    for e in metrics["evals"]:
        e["irregular_accuracy_per_verb"] = {}
    (cache / run.name / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setenv("MINITUNER_CACHE", str(cache))
    monkeypatch.setattr(data, "store", lambda: RunStore([cache]))
    at = open_page("compare")
    assert not [c for c in at.get("plotly_chart") if "compare_verbs" in c.proto.id]
    assert "no per-verb accuracy" in texts(at.info)


def test_train_page_live_panel_draws_the_per_verb_chart(empty_cache, idle_trainer):
    """Under the Train page's live chart: one line per verb once the base model's
    evaluation (step 0) has arrived; the Teach page shows that run too; then Stop."""
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.run()
    at.query_params.update({"method": "lora", "r": "2", "steps": "2000", "seed": "5252"})
    at.switch_page("views/train.py")
    at.run()
    at.button(key="train_start").click().run()
    job = at.session_state["live_job"]
    drawn = live_panel(at)
    assert verbs.NOT_YET in drawn or 'class="verb"' in drawn
    deadline = time.time() + TIMEOUT
    while not idle_trainer.snapshot(job).evals and time.time() < deadline:
        time.sleep(0.2)
    evals = idle_trainer.snapshot(job).evals
    assert evals and idle_trainer.busy
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    svg = live_panel(at)
    assert 'class="verb"' in svg
    want = verbs.verb_order(verbs.per_verb_points(evals[:1]))
    start = svg.index('<div class="verb-grid">')  # after the loss/evaluation charts
    root = ElementTree.fromstring(svg[start:])
    drawn = [e.get("data-name") for e in root.iter() if e.get("class") == "verb"]
    assert drawn == want and want

    other = open_page("teach")  # another learner's Teach page: their own lesson, not this run
    assert "Training live" not in texts(other.subheader) and not live_components(other)
    assert [b for b in other.button if b.key == "teach_start"]
    at.switch_page("views/teach.py").run()  # this tab's Teach page follows its run
    assert "Training live" in texts(at.subheader) and "seed 5252" not in texts(at.error)
    assert not [b for b in at.button if b.key == "teach_start"]
    shown = live_panel(at)
    assert 'class="verb"' in shown
    assert "held-out accuracy" not in shown and "irregular verbs" in shown
    assert [b.label for b in at.button if b.key == "teach_stop"] == ["Stop"]  # its owner's
    at.button(key="teach_stop").click().run()
    idle_trainer.join(TIMEOUT)
    assert idle_trainer.snapshot(job).status == "stopped"


def test_a_lesson_waits_in_line_behind_another_learners_run(empty_cache, idle_trainer):
    """Issue 25 on the Teach page: with one slot taken by another learner's run, Teach
    it live queues the lesson; the tab shows its place in line (not the other run) and
    its own Stop, which takes the lesson out of the line and leaves the other run be."""
    idle_trainer.max_runs = 1
    other = open_page("train")
    other.number_input(key="train_steps").set_value(2000).run()
    other.number_input(key="train_seed").set_value(5353).run()
    other.button(key="train_start").click().run()
    running = other.session_state["live_job"]
    at = _lesson(open_page("teach"))
    at.button(key="teach_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    lesson = at.session_state["live_job"]
    assert lesson != running and idle_trainer.snapshot(lesson).status == "waiting"
    assert "Waiting to start" in texts(at.subheader) and "blick" in texts(at.subheader)
    assert "seed=5353" not in texts(at.subheader)  # the other learner's run is not shown
    assert "next in line" in live_panel(at)
    at.button(key="teach_stop").click().run()
    assert idle_trainer.snapshot(lesson).status == "stopped"
    assert idle_trainer.snapshot(running).running  # the other run goes on
    assert [b for b in at.button if b.key == "teach_start"]  # the lesson can be queued again
    other.run()
    other.button(key="train_stop").click().run()
    idle_trainer.join(TIMEOUT)
    assert idle_trainer.snapshot(running).status == "stopped"
