"""The Streamlit app under streamlit.testing.v1.AppTest (no browser).

Every page runs on a run store without an exception and shows its main elements; the
Train page trains a tiny run live to the end, a second session is told that training
is busy, Stop really stops; the URL holds the Train page's choices; broken runs and a
missing experiments file become warnings. Runs are written only into temporary
MINITUNER_CACHE directories, never into the user's cache or precomputed/.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from app_util import live_components, live_panel, shown  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import data, helpers  # noqa: E402
from minituner.finetune.config import FinetuneConfig  # noqa: E402
from minituner.finetune.loop import finetune  # noqa: E402
from minituner.finetune.result import load_base  # noqa: E402
from minituner.paths import experiments_file  # noqa: E402
from minituner.scale import scaling  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180  # seconds per script run: generous for a loaded 2-core machine

# page file, title, the least number of plotly charts it shows on a store with runs
PAGES = [
    ("overview", "LoRA and QLoRA, from scratch, on a tiny GPT", 2),
    ("train", "Train", 0),
    ("teach", "Teach your own verb", 0),
    ("compare", "Compare runs", 3),
    ("completions", "Completions: before and after", 1),
    ("spectrum", "Spectrum of the weight update ΔW", 3),
    ("forgetting", "Forgetting", 1),
    ("memory", "Memory", 3),
    ("rank_sweep", "Rank sweep", 0),
    ("nf4", "NF4: 4-bit NormalFloat", 4),
]


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory) -> Path:
    """A run store with a tiny LoRA and a tiny full fine-tuning run (trained once)."""
    cache = tmp_path_factory.mktemp("runs")
    store = RunStore([cache])
    base = load_base()
    for method in ("lora", "full"):
        cfg = FinetuneConfig(method=method, steps=2, eval_every=1, eval_sample=8, seed=7)
        store.save(finetune(cfg, base, device="cpu"))
    return cache


@pytest.fixture
def cache(seeded_cache, monkeypatch) -> Path:
    monkeypatch.setenv("MINITUNER_CACHE", str(seeded_cache))
    return seeded_cache


@pytest.fixture
def no_experiments(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "EXPERIMENTS_PATH", tmp_path / "missing" / "experiments.json")


def open_page(page: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page != "overview" or query:
        if query:
            at.query_params.update(query)
        at.switch_page(f"views/{page}.py")
        at.run()
    return at


def texts(elements) -> str:
    """What the elements show (the app's escapes of outside text taken out)."""
    return "\n".join(shown(str(e.value)) for e in elements)


def charts_of(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def wait_for(at: AppTest, trainer, seconds: float = TIMEOUT) -> AppTest:
    """Let the worker finish, then rerun the page as the fragment's poll would."""
    trainer.join(seconds)
    assert not trainer.busy, "training did not end in time"
    return at.run()


# ---------------------------------------------------------------------- every page
@pytest.mark.parametrize(("page", "title", "min_charts"), PAGES, ids=[p[0] for p in PAGES])
def test_every_page_runs_on_the_store(cache, page, title, min_charts):
    at = open_page(page)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, texts(at.error)
    assert [t.value for t in at.title] == [title]
    assert charts_of(at) >= min_charts


def test_overview_shows_base_figures_and_a_default_run(cache):
    at = open_page("overview")
    labels = {m.label: m.value for m in at.metric}
    assert labels["parameters"] == f"{load_base().metrics['num_params']:,}"
    assert "irregular verbs" in labels  # the default run's figures
    assert labels["base model answers"] and labels["fine-tuned answers"]


def test_device_is_shown(cache):
    at = open_page("overview")
    assert "Device for live training" in texts(at.sidebar.caption)


def test_pages_without_runs_or_experiments_still_work(empty_cache, no_experiments, monkeypatch):
    monkeypatch.setattr(data, "store", lambda: RunStore([empty_cache]))
    for page, title, _ in PAGES:
        at = open_page(page)
        assert not at.exception, (page, [e.value for e in at.exception])
        assert [t.value for t in at.title] == [title]
    at = open_page("rank_sweep")
    assert "python -m minituner precompute" in texts(at.warning)


def test_a_broken_run_is_a_warning_and_the_rest_works(tmp_path, monkeypatch, seeded_cache):
    cache = tmp_path / "cache"
    cache.mkdir()
    for run in RunStore([seeded_cache]).list():  # copies: a linked run is refused
        shutil.copytree(run.path, cache / run.path.name)  # (the cache also holds the queue)
    broken = cache / "abcdefabcdef"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "metrics.json").write_text("{}")
    monkeypatch.setenv("MINITUNER_CACHE", str(cache))
    for page in ("overview", "compare", "memory"):
        at = open_page(page)
        assert not at.exception, [e.value for e in at.exception]
        assert "abcdefabcdef" in texts(at.warning), page
    assert charts_of(open_page("compare")) >= 3


def _entry(run_ids: list[str], params: int) -> dict:
    """One setting's summary in experiments.json (mean and std of each figure over its
    runs), without regular-verb accuracy, as files written before it was measured."""
    figures = {"irregular_accuracy": (0.9, 0.02), "control_en_drift": (0.01, 0.002),
               "control_es_drift": (0.02, 0.0), "stable_rank_mean": (2.0, 0.1),
               "final_loss": (0.1, 0.0)}  # fmt: skip
    out: dict = {"run_ids": run_ids, "n": len(run_ids)}
    for k, (mean, std) in figures.items():
        out[f"{k}_mean"], out[f"{k}_std"] = mean, std
    return {**out, "trainable_params": params, "measured_state_bytes": 4096}


def test_experiment_pages_read_the_summaries(cache, tmp_path, monkeypatch):
    runs = RunStore([cache]).list()
    ids = {r.method: r.run_id for r in runs}
    ranks = [1, 2, 4, 8]
    shipped = json.loads(experiments_file().read_text(encoding="utf-8"))
    experiments = {
        "base": shipped["base"],
        "rank_sweep": {
            "ranks": ranks,
            "runs": {str(r): [ids["lora"]] for r in ranks},
            "full": [ids["full"]],
            "summary": {
                **{str(r): _entry([ids["lora"]], 2048 * r) for r in ranks},
                "full": _entry([ids["full"]], 816000),
            },
            "elbow": {
                "ranks": ranks,
                "mean": [0.9] * 4,
                "std": [0.02] * 4,
                "n": [1] * 4,
                "best_r": 8,
                "best_mean": 0.9,
                "best_std": 0.02,
                "tolerance": 0.02,
                "threshold": 0.88,
                "elbow_r": 4,
                "higher_is_better": True,
                "definition": "the smallest r within one std of the best",
                "elbow": 4,
            },
        },  # fmt: skip
        "full_lr_search": {"best_lr": None, "runs": []},
        "targets": {"q,v": _entry([ids["lora"]], 16384)},
        "forgetting": {m: _entry([ids[m]], 16384) for m in ("full", "lora")},
        "truncation": {
            "run_id": ids["full"],
            "k": [1, 2, 4, "full"],
            "irregular_accuracy": [0.3, 0.5, 0.8, 0.9],
            "control_en_drift": [0.0, 0.0, 0.01, 0.02],
            "control_es_drift": [0.0, 0.0, 0.01, 0.02],
        },
        "missing": [],
    }
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments))
    monkeypatch.setattr(data, "EXPERIMENTS_PATH", path)

    at = open_page("rank_sweep")
    assert not at.exception and not at.warning, texts(at.warning)
    assert charts_of(at) == 2  # the elbow chart and the targets chart
    assert "Elbow: r = 4" in texts(at.caption)
    at = open_page("forgetting")
    assert not at.exception and not at.warning, texts(at.warning)
    assert charts_of(at) == 2  # final drift bars and perplexity over steps
    at = open_page("spectrum")
    assert not at.exception and not at.warning, texts(at.warning)
    assert charts_of(at) == 5  # spectra, stable rank, energy, truncation, subspace heatmaps

    path.write_text("[1, 2")  # a corrupt file: a warning, the page still runs
    at = open_page("rank_sweep")
    assert not at.exception
    assert "cannot be read" in texts(at.warning)


# ---------------------------------------------------------------------- issue 23, items 6 and 8
EXPERIMENT_PAGES = ("spectrum", "forgetting", "rank_sweep", "memory", "compare")
DEEP = "[" * 100_000 + "]" * 100_000


def _shipped_experiments() -> dict:
    return json.loads(experiments_file().read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "text",
    [DEEP, '{"rank_sweep": ' * 100_000 + "1" + "}" * 100_000, "[1, 2]", "5", "[1, 2"],
    ids=["deep-list", "deep-object", "list", "number", "truncated"],
)
def test_an_unreadable_experiments_file_is_a_warning_on_every_page_that_reads_it(
    cache, tmp_path, monkeypatch, text
):
    """Issue 23, item 6: a malformed experiments.json (deep nesting, a list or a number
    where the object belongs) is one warning on Spectrum, Forgetting, Rank sweep, Memory
    and Compare, never an exception; the rest of each page still works."""
    path = tmp_path / "experiments.json"
    path.write_text(text)
    monkeypatch.setattr(data, "EXPERIMENTS_PATH", path)
    for page in EXPERIMENT_PAGES:
        at = open_page(page)
        assert not at.exception, (page, [e.value[:300] for e in at.exception])
        assert "experiments.json cannot be read" in texts(at.warning), page
        assert [t.value for t in at.title] == [dict((p, t) for p, t, _ in PAGES)[page]]


def _with(section: str, value, *inside: str) -> dict:
    """The shipped experiments.json with ``value`` at ``section`` (or deeper, ``inside``)."""
    exp = _shipped_experiments()
    if not inside:
        exp[section] = value
        return exp
    target = exp[section]
    for key in inside[:-1]:
        target = target[key]
    target[inside[-1]] = value
    return exp


@pytest.mark.parametrize(
    ("page", "exp", "what"),
    [
        ("rank_sweep", lambda: _with("rank_sweep", [1]), "rank sweep"),
        ("rank_sweep", lambda: _with("rank_sweep", 5, "ranks"), "rank sweep"),
        ("rank_sweep", lambda: _with("rank_sweep", [1], "summary"), "rank sweep"),
        ("rank_sweep", lambda: _with("targets", {"q": json.loads("[" * 40 + "]" * 40)}),
         "targets summary"),
        ("forgetting", lambda: _with("forgetting", 5), "forgetting summary"),
        ("forgetting", lambda: _with("forgetting", [1, 2], "lora"), "forgetting summary"),
        ("forgetting", lambda: _with("frontier", [1]), "frontier summary"),
        ("forgetting", lambda: _with("replay", {"lora": 5}), "replay summary"),
        ("spectrum", lambda: _with("truncation", 5, "k"), "truncation summary"),
        ("spectrum", lambda: _with("truncation", {"a": 1}), "truncation summary"),
    ],
    ids=["sweep-list", "ranks-number", "summary-list", "targets-deep", "forgetting-number",
         "forgetting-entry-list", "frontier-list", "replay-number", "k-number", "truncation"],
)  # fmt: skip
def test_a_malformed_section_is_a_warning_on_its_page(
    cache, tmp_path, monkeypatch, page, exp, what
):
    """Issue 23, item 6: a section of experiments.json with a list where a mapping
    belongs, a number where a list belongs, or nested too deep is a warning naming it on
    the page that shows it; Memory and Compare (which read the file for their menus'
    defaults) still run."""
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(exp()))
    monkeypatch.setattr(data, "EXPERIMENTS_PATH", path)
    at = open_page(page)
    assert not at.exception, [e.value[:300] for e in at.exception]
    warned = texts(at.warning)
    assert f"The {what} in experiments.json is malformed" in warned or "cannot be read" in warned
    for other in ("memory", "compare"):
        at = open_page(other)
        assert not at.exception, (other, [e.value[:300] for e in at.exception])
        assert charts_of(at) >= 3


@pytest.mark.parametrize(
    "text",
    [DEEP, '{"pairs": ' * 100_000 + "1" + "}" * 100_000, "[1]", '{"pairs": 5}',
     '{"pairs": [{"layers": [1]}]}'],
    ids=["deep-list", "deep-object", "list", "pairs-number", "layers-list"],
)  # fmt: skip
def test_a_malformed_subspace_file_is_a_warning_on_spectrum(cache, tmp_path, monkeypatch, text):
    """Issue 23, item 6: a malformed subspace.json is a warning on Spectrum, never an
    exception; the page's other charts still show."""
    from minituner.analysis import subspace_record

    path = tmp_path / "subspace.json"
    path.write_text(text)
    monkeypatch.setattr(subspace_record, "subspace_file", lambda: path)
    at = open_page("spectrum")
    assert not at.exception, [e.value[:300] for e in at.exception]
    assert "subspace.json cannot be read" in texts(at.warning)
    assert charts_of(at) >= 3


def test_an_invalid_data_folder_is_an_error_box_on_every_page(empty_cache, tmp_path, monkeypatch):
    """Issue 23, item 8: MINITUNER_DATA naming no folder is a clean error box on every
    page, Rank sweep included (it raised), never an exception: on a fresh server, and on
    one whose base model was loaded before the folder went away."""
    import streamlit

    open_page("overview")  # the base model is loaded and cached
    monkeypatch.setenv("MINITUNER_DATA", str(tmp_path / "no such folder"))
    for fresh in (False, True):
        if fresh:
            streamlit.cache_resource.clear()
        for page, title, _ in PAGES:
            at = open_page(page)
            assert not at.exception, (page, fresh, [e.value[:300] for e in at.exception])
            assert [t.value for t in at.title] == [title]
            if fresh or page == "rank_sweep":  # a page that needs only the model may run
                assert "MINITUNER_DATA" in texts(at.error), (page, fresh)
    streamlit.cache_resource.clear()


# ---------------------------------------------------------------------- Memory page
SCALING_HEADER = "7B QLoRA, measured on an H200"


def test_memory_page_shows_the_7b_measurements(cache, tmp_path, monkeypatch):
    at = open_page("memory")
    assert not at.exception and not at.warning, texts(at.warning)
    assert SCALING_HEADER in [h.value for h in at.header]
    result = scaling.load_scaling_result()
    assert [c.value for c in at.code] == [result["command"]]
    table = next(d.value for d in at.dataframe if "ours / PEFT peak" in d.value.columns)
    assert list(table["configuration"]) == [r["label"] for r in scaling.scaling_rows(result)]
    assert "straight into NF4" in texts(at.markdown)
    assert f"Measured on {result['device_name']}" in texts(at.caption)

    missing = tmp_path / "missing" / "qlora_7b_h200.json"
    monkeypatch.setattr(scaling, "qlora_7b_h200", lambda: missing)
    at = open_page("memory")
    assert not at.exception, [e.value for e in at.exception]
    assert "bench_7b_qlora.py" in texts(at.info)
    assert not at.code and charts_of(at) == 2  # the MiniGPT and the calculator charts

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**result, "runs": {"r8_qv": {"peak_bytes": float("nan")}}}))
    monkeypatch.setattr(scaling, "qlora_7b_h200", lambda: broken)
    at = open_page("memory")
    assert not at.exception, [e.value for e in at.exception]
    assert "not a finite number" in texts(at.warning) and str(broken) in texts(at.warning)
    assert [t.value for t in at.title] == ["Memory"] and charts_of(at) == 2


# ---------------------------------------------------------------------- Train page
def test_train_page_trains_a_tiny_run_live(empty_cache, idle_trainer):
    query = {"method": "lora", "r": "2", "steps": "3", "seed": "4242"}
    at = open_page("train", query)
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="train_steps").value == 3
    assert at.number_input(key="train_r").value == 2
    labels = {m.label: m.value for m in at.metric}
    assert labels["trainable parameters"] == "4,096"  # r (in + out) for q, v in 4 layers
    assert "predicted: model + state" in labels and "predicted: activations" in labels
    start = at.button(key="train_start")
    assert start.label == "Train live"

    start.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Training live" in texts(at.subheader)
    # the live panel updates itself from its run's own feed file, drawn at the run's version
    job = at.session_state["live_job"]
    (comp,) = live_components(at)
    assert comp["running"] and 0 < comp["version"] <= idle_trainer.snapshot(job).version
    assert comp["url"].endswith(f"-{job}.json")
    panel = live_panel(at)
    assert 'class="live-progress"' in panel and "step " in panel and "<svg" in panel
    pid = idle_trainer.snapshot(job).pid
    assert pid and pid != os.getpid()  # the run trains in a child process, not the server

    wait_for(at, idle_trainer)
    assert not at.exception, [e.value for e in at.exception]
    assert "Training finished" in texts(at.success), texts(at.warning) + texts(at.error)
    assert live_components(at) == []  # ended: nothing polls (other learners' runs never show)
    runs = RunStore().list()
    assert [r.config.finetune.steps for r in runs if r.config.finetune.seed == 4242] == [3]
    assert all(not str(r.path).startswith(str(REPO_ROOT)) for r in runs if not r.shipped)
    # the stored run loads at once from now on
    at.run()
    assert "This configuration is in the store" in texts(at.info)
    assert at.button(key="train_start").label == "Train it live anyway"


def test_without_static_serving_the_live_panel_is_drawn_by_streamlit(
    empty_cache, idle_trainer, monkeypatch
):
    """Started from another folder (no .streamlit/config.toml), the app has no static
    serving and so no live feed: the live panel is drawn by Streamlit and redrawn on news."""
    from app import live

    monkeypatch.setattr(live, "feed", lambda: None)
    at = open_page("train", {"method": "lora", "r": "2", "steps": "3", "seed": "4646"})
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not live_components(at)
    panel = live_panel(at)
    assert 'class="live-progress"' in panel and "step " in panel and "<svg" in panel
    wait_for(at, idle_trainer)
    assert "Training finished" in texts(at.success), texts(at.warning) + texts(at.error)


def test_a_training_child_that_fails_shows_its_one_line_error(
    empty_cache, idle_trainer, tmp_path, monkeypatch
):
    """The child cannot find the base model (its data folder is empty): the page shows
    the child's error in one line, in an error box, and the server lives on. (The
    trainer's pre-flight would refuse this run before any child: it is left out here,
    so that the child itself fails; tests/app/test_trainer.py tests the pre-flight.)"""
    from app import trainer

    monkeypatch.setattr(trainer, "preflight", lambda *a, **kw: None)
    query = {"method": "lora", "r": "2", "steps": "3", "seed": "4545"}
    at = open_page("train", query)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MINITUNER_DATA", str(tmp_path / "empty"))  # the child reads this
    at.button(key="train_start").click().run()
    wait_for(at, idle_trainer)
    assert not at.exception, [e.value for e in at.exception]
    errors = texts(at.error)
    assert errors.startswith("Training failed: ValueError:"), errors
    assert "\n" not in errors and "Traceback" not in errors
    assert idle_trainer.snapshot(at.session_state["live_job"]).status == "error"


def test_a_second_session_queues_its_own_run_and_each_stop_stops_its_own(empty_cache, idle_trainer):
    """Issue 25: with one slot, a second learner's Train live waits in line (its place
    shown, its own Stop) instead of being told the server is busy; the first learner's
    tab never shows the second's run; each Stop stops only its owner's run; a third
    waiting run of one browser is refused with one clear line."""
    idle_trainer.max_runs = 1
    a = open_page("train", {"method": "lora", "r": "2", "steps": "2000", "seed": "4343"})
    a.button(key="train_start").click().run()
    ja = a.session_state["live_job"]
    assert idle_trainer.snapshot(ja).running

    b = open_page("train", {"method": "lora", "r": "2", "steps": "2000", "seed": "4344"})
    assert not b.exception, [e.value for e in b.exception]
    assert "Training is busy" not in texts(b.info) and "Training live" not in texts(b.subheader)
    b.button(key="train_start").click().run()
    jb = b.session_state["live_job"]
    assert jb != ja and idle_trainer.snapshot(jb).position == 1
    (header,) = [h for h in texts(b.subheader).splitlines() if "Waiting to train" in h]
    assert "LoRA r=2" in header and "seed 4344" in header
    assert "next in line" in live_panel(b)
    b.number_input(key="train_seed").set_value(4345).run()  # another configuration...
    b.button(key="train_start").click().run()  # ...waits too: b's second waiting run
    jb2 = b.session_state["live_job"]
    assert idle_trainer.snapshot(jb2).position == 2
    b.number_input(key="train_seed").set_value(4346).run()
    b.button(key="train_start").click().run()  # a third: refused, in one line
    assert "waiting" in texts(b.error) and "\n" not in texts(b.error)
    assert b.session_state["live_job"] == jb2  # nothing queued; the tab still follows jb2
    b.button(key="train_stop").click().run()
    assert idle_trainer.snapshot(jb2).status == "stopped"
    b.session_state["live_job"] = jb
    b.number_input(key="train_seed").set_value(4344).run()
    b.button(key="train_stop").click().run()  # b takes its waiting run out of the line
    assert idle_trainer.snapshot(jb).status == "stopped"
    assert idle_trainer.snapshot(ja).running  # a's run goes on
    a.run()
    assert "Training live" in texts(a.subheader) and "4344" not in texts(a.subheader)
    a.button(key="train_stop").click().run()
    wait_for(a, idle_trainer)
    assert not a.exception, [e.value for e in a.exception]
    assert "Training stopped" in texts(a.warning)
    snap = idle_trainer.snapshot(ja)
    assert snap.status == "stopped" and snap.step < 2000
    assert not [r for r in RunStore().list() if r.config.finetune.seed in (4343, 4344)]


def test_train_choices_live_in_the_url(empty_cache):
    at = open_page("train", {"method": "full", "lr": "0.001", "steps": "7", "r": "abc"})
    assert not at.exception
    assert "`r='abc'` ignored" in texts(at.warning)  # the URL's value quoted as code
    assert at.radio(key="train_method").value == "full"
    assert at.number_input(key="train_lr").value == pytest.approx(0.001)
    assert at.number_input(key="train_r").disabled
    assert at.query_params["method"] == "full" and at.query_params["steps"] == "7"
    assert "r" not in at.query_params  # LoRA settings do not apply to full fine-tuning

    at.radio(key="train_method").set_value("qlora").run()
    assert at.query_params["method"] == "qlora"
    assert at.query_params["lr"] == "0.005"  # the method's default learning rate
    assert at.query_params["targets"] == "q,v"
    at.checkbox(key="train_target_fc_in").check().run()
    assert at.query_params["targets"] == "q,v,fc_in"


def test_train_page_with_no_targets_explains(empty_cache):
    at = open_page("train", {"method": "lora", "targets": "q"})
    at.checkbox(key="train_target_q").uncheck().run()
    assert not at.exception
    assert "at least one target" in texts(at.warning)


# ---------------------------------------------------------------------- Completions
def test_completions_before_and_after_and_unknown_characters(cache):
    at = open_page("completions")
    labels = {m.label for m in at.metric}
    assert "base model's greedy answer" in labels
    assert charts_of(at) == 1
    at.text_input(key="compl_prompt").set_value("She __ a letter yesterday.").run()
    at.text_input(key="compl_cands").set_value("wrote, writed, write").run()
    assert not at.exception
    bars = at.get("plotly_chart")[0]
    assert "writed" in bars.proto.spec

    at.text_input(key="compl_prompt").set_value("He __ to school ¤ yesterday.").run()
    assert not at.exception
    assert "not in the model's vocabulary" in texts(at.error)  # bad input: an error box
    assert "'¤'" in texts(at.error)


# ---------------------------------------------------------------------- caching
def test_a_rerun_does_not_reload_models_or_the_store(cache, monkeypatch):
    at = open_page("completions")

    def boom(*a, **k):
        raise AssertionError("reloaded")

    monkeypatch.setattr(data, "load_base", boom)
    monkeypatch.setattr(RunStore, "list", boom)
    monkeypatch.setattr(RunStore, "load_model", boom)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert charts_of(at) == 1


# ---------------------------------------------------------------------- pure helpers
def test_url_parameters_round_trip():
    choices = {"method": "lora", "r": 4, "alpha": 8.0, "targets": ["q", "fc_in"], "lr": 0.002,
               "steps": 12, "seed": 3}  # fmt: skip
    params = helpers.choices_to_params(choices)
    parsed, problems = helpers.parse_train_params(params)
    assert problems == []
    assert parsed == choices
    cfg = helpers.config_from_choices(parsed)
    assert (cfg.r, cfg.targets, cfg.steps) == (4, ("q", "fc_in"), 12)


@pytest.mark.parametrize(
    "query",
    [{"method": "sgd"}, {"r": "0"}, {"steps": "x"}, {"lr": "-1"}, {"alpha": "nan"},
     {"targets": "q,zz"}, {"seed": "-3"}],
)  # fmt: skip
def test_bad_url_parameters_are_reported_not_raised(query):
    parsed, problems = helpers.parse_train_params(query)
    assert parsed == {} and len(problems) == 1


def test_default_run_prefers_the_default_config(seeded_cache):
    runs = RunStore([seeded_cache]).list()
    assert data.default_run(runs).method == "lora"
    assert data.default_run([]) is None


def test_nf4_size_table_reads_in_one_unit(cache):
    """The size column of the NF4 page (fp32, bf16, NF4, NF4 + double quantization) is in
    one unit, so the rows compare at a glance."""
    at = open_page("nf4")
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "stored as" in d.value.columns)
    units = {v.split(" ")[-1] for v in table["bytes"]}
    assert len(units) == 1 and units <= {"KiB", "MiB"}, list(table["bytes"])
    fp32, bf16 = (float(v.split(" ")[0]) for v in table["bytes"][:2])
    assert fp32 == pytest.approx(2 * bf16, rel=0.01)
