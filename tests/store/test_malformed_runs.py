"""Property: arbitrary JSON in one stored run's metrics.json, config.json or spectrum.json
never breaks the store, the CLI (`runs`, `complete`) or a page of the app, and every other
run is still listed.

The store is a small data folder (MINITUNER_DATA: the shipped base model, experiments and
scaling files linked, three shipped runs copied under new ids) and a cache
(MINITUNER_CACHE) holding the victim, a copy of a shipped LoRA run. Each example restores
the victim, then replaces one of its files by arbitrary JSON, by its own JSON with one
value replaced or deleted, or by text that is not JSON. Nothing is trained.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
from cli_util import run_minituner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from record_util import make_hostile

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import helpers  # noqa: E402
from minituner import cli  # noqa: E402
from minituner.paths import CHECKOUT_DATA  # noqa: E402
from minituner.schema import read_record  # noqa: E402
from minituner.store.base_record import BaseMetrics  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

BASE_METRICS = read_record(CHECKOUT_DATA / "base" / BaseMetrics.FILE, BaseMetrics)

SHIPPED = CHECKOUT_DATA / "runs"


def _pick_shipped() -> tuple[dict[str, str], str]:
    """New ids for a shipped full, LoRA and QLoRA run, and a second LoRA run (the victim)."""
    by_method: dict[str, list[str]] = {}
    for info in sorted(RunStore([SHIPPED]).list(), key=lambda i: i.run_id):
        by_method.setdefault(info.method, []).append(info.run_id)
    others = {
        "a0000000000f": by_method["full"][0],
        "a1111111111f": by_method["lora"][0],
        "a2222222222f": by_method["qlora"][0],
    }
    return others, by_method["lora"][1]


OTHERS, VICTIM_FROM = _pick_shipped()  # new id -> the shipped run it copies
VICTIM = "b0b0b0b0b0b0"
FILES = ("metrics.json", "config.json", "spectrum.json")
PROMPT = "He __ to school yesterday."
MAIN = str(REPO_ROOT / "app" / "main.py")
SLOW = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def copy_run(src: Path, dest: Path) -> None:
    """A cheap fake run: a shipped run's files under another id."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["run_id"] = dest.name
    (dest / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def store_dirs(tmp_path_factory):
    """(data folder, cache, pristine victim) with the environment pointing at them."""
    tmp = tmp_path_factory.mktemp("malformed")
    data = tmp / "data"
    (data / "runs").mkdir(parents=True)
    for entry in CHECKOUT_DATA.iterdir():
        if entry.name != "runs":
            (data / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for rid, src in OTHERS.items():
        copy_run(SHIPPED / src, data / "runs" / rid)
    pristine = tmp / "pristine" / VICTIM
    copy_run(SHIPPED / VICTIM_FROM, pristine)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINITUNER_DATA", str(data))
        mp.setenv("MINITUNER_CACHE", str(tmp / "cache"))
        yield data, tmp / "cache", pristine


# ------------------------------------------------------------------ what goes in the file
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every path into a JSON value (keys and list indexes)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):  # the first items stand for the rest
            yield from _paths(v, (*prefix, i))


@st.composite
def file_contents(draw, original: dict) -> str:
    """Text for a run file: arbitrary JSON, the original with one value replaced or
    deleted, or text that is not JSON."""
    kind = draw(st.sampled_from(["arbitrary", "replace", "delete", "not json"]))
    if kind == "arbitrary":
        return json.dumps(draw(json_values))
    if kind == "not json":
        return draw(st.text(max_size=20)) + "{"
    data = json.loads(json.dumps(original))
    paths = [p for p in _paths(data) if p]
    path = draw(st.sampled_from(paths))
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return json.dumps(data)


@st.composite
def victim_files(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(FILES))
    original = json.loads((SHIPPED / VICTIM_FROM / name).read_text())
    if name == "config.json":
        original["run_id"] = VICTIM
    return name, draw(file_contents(original))


def plant(cache: Path, pristine: Path, name: str, text: str) -> Path:
    victim = cache / VICTIM
    if victim.exists():
        shutil.rmtree(victim)
    shutil.copytree(pristine, victim)
    (victim / name).write_text(text, encoding="utf-8")
    return victim / name


def _labels() -> dict[str, str]:
    """Menu labels of the other runs (as the pages write them)."""
    store = RunStore([SHIPPED])
    return {rid: helpers.run_label(store.get(src)).replace(src[:6], rid[:6])
            for rid, src in OTHERS.items()}  # fmt: skip


# ------------------------------------------------------------------ the store, in process
@given(victim=victim_files())
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_store_lists_every_other_run_and_reads_the_victim_or_warns(store_dirs, victim):
    data, cache, pristine = store_dirs
    bad = plant(cache, pristine, *victim)
    store = RunStore()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = store.list()
    ids = {i.run_id for i in infos}
    assert set(OTHERS) <= ids
    messages = [str(w.message) for w in caught]
    if VICTIM in ids:  # still a valid run: everything a page or the CLI reads works
        assert messages == []
        info = next(i for i in infos if i.run_id == VICTIM)
        helpers.final_figures_rows([info], BASE_METRICS)
        helpers.memory_rows([info])
        helpers.run_label(info)
        assert all(math.isfinite(v) for v in info.metrics.curves.loss)
    else:
        assert len(messages) == 1 and str(bad) in messages[0], messages
        with pytest.raises(ValueError, match=str(bad)):
            store.get(VICTIM)
    for rid in OTHERS:
        assert store.get(rid).run_id == rid


# ------------------------------------------------------------------ the CLI
def _one_error_line(out, err) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err


@given(victim=victim_files())
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_cli_in_process_runs_and_complete(store_dirs, victim, capsys):
    data, cache, pristine = store_dirs
    plant(cache, pristine, *victim)
    capsys.readouterr()
    assert cli.main(["runs"]) == 0
    out, err = capsys.readouterr()
    for rid in OTHERS:
        assert f"\n{rid}  " in out
    listed = f"\n{VICTIM}  " in out
    assert listed != (VICTIM in err), (out, err)  # listed, or one warning naming it
    assert err.count("warning:") == (0 if listed else 1)
    code = cli.main(["complete", "--run", VICTIM, PROMPT])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        _one_error_line(out, err)
    else:
        assert "fine-tuned  -> " in out


@given(victim=victim_files())
@SLOW
def test_cli_subprocess_runs_and_complete(store_dirs, victim):
    data, cache, pristine = store_dirs
    plant(cache, pristine, *victim)
    env = {"MINITUNER_DATA": str(data), "MINITUNER_CACHE": str(cache)}
    r = run_minituner("runs", env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for rid in OTHERS:
        assert f"\n{rid}  " in r.stdout
    r = run_minituner("complete", "--run", VICTIM, PROMPT, env=env)
    assert r.returncode in (0, 2), r.stderr
    if r.returncode == 2:
        _one_error_line(r.stdout, r.stderr)


def test_complete_of_another_run_works_beside_a_broken_one(store_dirs):
    data, cache, pristine = store_dirs
    plant(cache, pristine, "metrics.json", '{"status": "completed"}')
    env = {"MINITUNER_DATA": str(data), "MINITUNER_CACHE": str(cache)}
    r = run_minituner("complete", "--run", "a1111111111f", PROMPT, env=env)
    assert r.returncode == 0, r.stderr
    assert "fine-tuned  -> 'went'" in r.stdout


# ------------------------------------------------------------------ every page
# page, the key of its run menu (None: no menu)
PAGES = [
    ("overview", None),
    ("compare", "compare_runs"),
    ("completions", "compl_runs"),
    ("spectrum", "spec_full"),
    ("forgetting", "forget_runs"),
    ("memory", "mem_runs"),
    ("train", None),
]


def _open(page: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    if page != "overview":
        assert not at.exception, [e.value for e in at.exception]
        at.switch_page(f"views/{page}.py")
        at.run()
    return at


@pytest.mark.parametrize(("page", "menu"), PAGES, ids=[p for p, _ in PAGES])
@given(victim=victim_files())
@SLOW
def test_every_page_still_works_and_lists_the_other_runs(store_dirs, page, menu, victim):
    data, cache, pristine = store_dirs
    bad = plant(cache, pristine, *victim)
    valid = _valid(VICTIM)
    at = _open(page)
    assert not at.exception, [e.value for e in at.exception]
    warnings_text = "\n".join(str(w.value) for w in at.warning)
    # the text a reader sees: warnings escape Markdown (backslashes, word joiners)
    warnings_text = re.sub(r"\\(.)", r"\1", warnings_text).replace("\u2060", "")
    if not valid and page not in ("train",):
        assert str(bad) in warnings_text, warnings_text
    if menu is not None:
        widget = next(w for w in at.get("multiselect") + at.get("selectbox") if w.key == menu)
        options = "\n".join(map(str, widget.options))
        want = _labels() if menu != "spec_full" else {"a0000000000f": _labels()["a0000000000f"]}
        for label in want.values():
            assert label in options, (label, options)


def _valid(rid: str) -> bool:
    try:
        return RunStore().find(rid) is not None
    except ValueError:
        return False


def plant_special(cache: Path, pristine: Path, kind: str) -> Path:
    """The victim with its metrics.json a 100,000-deep JSON file, a FIFO or a link to
    /dev/zero."""
    bad = plant(cache, pristine, "metrics.json", "{}")
    make_hostile(bad, kind)
    return bad


@pytest.mark.parametrize("kind", ["deep", "fifo", "devzero"])
@pytest.mark.parametrize("page", ["overview", "compare", "spectrum", "completions"])
def test_a_special_metrics_file_is_a_warning_on_the_pages(store_dirs, page, kind):
    """issue 23, items 3 and 4: a deep, FIFO or /dev/zero metrics.json in one run: the
    page runs (was: a traceback, a hang, memory until killed) and warns naming it."""
    data, cache, pristine = store_dirs
    bad = plant_special(cache, pristine, kind)
    try:
        at = _open(page)
        assert not at.exception, [e.value for e in at.exception]
        shown = "\n".join(str(w.value) for w in at.warning)
        shown = re.sub(r"\\(.)", r"\1", shown).replace("\u2060", "")
        assert str(bad) in shown, shown
    finally:
        shutil.rmtree(cache / VICTIM)
        shutil.copytree(pristine, cache / VICTIM)
