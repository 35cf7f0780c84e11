"""`python -m minituner runs | complete | finetune` as a user runs them (subprocesses with
MINITUNER_CACHE in a temporary directory): listing, completions, one-line errors, storing
a run, and the shipped store left untouched by all of it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from cli_util import run_minituner
from record_util import make_hostile
from safetensors.torch import load_file, save_file

from minituner.paths import data_dir, runs_dir
from minituner.store.runs import RunStore

PRECOMPUTED = data_dir()
PROMPT = "He __ to school yesterday."
ERROR_CASES = {
    "path as run id": (["complete", "--run", "../x", PROMPT], ["'../x'", "not a run id"]),
    "unknown run id": (["complete", "--run", "000000000000", PROMPT], ["no run 000000000000"]),
    "outside vocabulary": (
        ["complete", "--run", "0e9eca154689", "He __ to school?"],
        ["'?'", "vocabulary"],
    ),
    "rank 0": (["finetune", "--rank", "0"], ["--rank", "at least 1"]),
    "unknown target": (["finetune", "--targets", "zz"], ["'zz'", "q_proj", "v_proj"]),
    "negative lr": (["finetune", "--lr", "-1"], ["--lr", "positive"]),
    "unknown method": (["finetune", "--method", "foo"], ["'foo'", "full", "lora", "qlora"]),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of everything under ``root``."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def before():
    """The shipped store and the default user cache, before any command of this module."""
    home_cache = Path.home() / ".cache" / "minituner"
    return {"precomputed": snapshot(PRECOMPUTED), "home": snapshot(home_cache)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory, before):
    return tmp_path_factory.mktemp("cache")


def run_cli(cache: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_minituner(*args, env={"MINITUNER_CACHE": str(cache)}, timeout=timeout)


@pytest.fixture(scope="module")
def error_runs(cache):
    """Every error case, run concurrently (each is a fresh interpreter)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {k: pool.submit(run_cli, cache, *args) for k, (args, _) in ERROR_CASES.items()}
        return {k: f.result() for k, f in futures.items()}


def test_runs_lists_the_shipped_runs(cache):
    r = run_cli(cache, "runs")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "Traceback" not in r.stderr
    shipped = sorted(p.name for p in runs_dir().iterdir() if not p.name.startswith("."))
    listed = re.findall(r"^([0-9a-f]{12})\s+shipped\s", r.stdout, flags=re.M)
    assert sorted(listed) == shipped
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("0e9eca154689"))
    assert "lora r=8 a=16 q,v lr=0.005 steps=40 seed=0" in line
    f = RunStore([runs_dir()], save_root=runs_dir()).get("0e9eca154689").final
    assert f"{f.irregular_accuracy:.3f}" in line
    assert f"{f.control_en_drift:+.2%}" in line


def test_complete_shows_base_and_finetuned_answers(cache):
    r = run_cli(cache, "complete", "--run", "0e9eca154689", PROMPT)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"prompt: {PROMPT}" in out
    base = re.search(r"^\s*base\s+-> '(\w+)'\s+P\(went\)=([\d.]+)\s+P\(goed\)=([\d.]+)", out, re.M)
    tuned = re.search(
        r"^\s*fine-tuned\s+-> '(\w+)'\s+P\(went\)=([\d.]+)\s+P\(goed\)=([\d.]+)", out, re.M
    )
    assert base and tuned, out
    assert base.group(1) == "goed"
    assert tuned.group(1) == "went"
    b_went, b_goed = float(base.group(2)), float(base.group(3))
    t_went, t_goed = float(tuned.group(2)), float(tuned.group(3))
    assert b_goed > b_went and t_went > 0.9 > t_goed
    assert b_went + b_goed == pytest.approx(1.0, abs=2e-3)
    assert t_went + t_goed == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_are_one_line(case, error_runs):
    r = error_runs[case]
    needles = ERROR_CASES[case][1]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_finetune_stores_a_run_once(cache):
    args = ["finetune", "--steps", "2", "--batch-size", "4", "--device", "cpu"]
    r = run_cli(cache, *args)
    assert r.returncode == 0, r.stderr
    m = re.search(r"stored run ([0-9a-f]{12}) in (\S+)", r.stdout)
    assert m, r.stdout
    rid = m.group(1)
    assert Path(m.group(2)) == cache / rid
    assert sorted(p.name for p in cache.iterdir()) == [rid]  # no temporary leftovers
    info = RunStore([cache], save_root=cache).get(rid)
    assert info.metrics.curves.step == [1, 2]
    assert info.finetune_config().steps == 2 and info.finetune_config().batch_size == 4
    assert "irregular_accuracy" in r.stdout
    again = run_cli(cache, *args)
    assert again.returncode == 0, again.stderr
    assert f"already stored: run {rid}" in again.stdout
    assert "stored run" not in again.stdout.replace("already stored", "")
    assert sorted(p.name for p in cache.iterdir()) == [rid]


def test_runs_lists_the_cached_run_too(cache):
    cached = [p.name for p in cache.iterdir()]
    if not cached:
        pytest.skip("needs the run stored by test_finetune_stores_a_run_once")
    r = run_cli(cache, "runs")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^{cached[0]}\s+cache\s", r.stdout, flags=re.M), r.stdout


# ------------------------------------------------ hostile files in one run (issue 23)
SHIPPED_IDS = sorted(p.name for p in runs_dir().iterdir() if not p.name.startswith("."))
VICTIM = "b0b0b0b0b0b0"


def shipped_run(method: str) -> Path:
    return next(i.path for i in sorted(RunStore([runs_dir()]).list(), key=lambda i: i.run_id)
                if i.method == method)  # fmt: skip


def victim_cache(tmp_path: Path, method: str = "lora") -> Path:
    """A cache holding one copy of a shipped run under the id VICTIM; returns the copy."""
    dest = tmp_path / "cache" / VICTIM
    shutil.copytree(shipped_run(method), dest)
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, "run_id": VICTIM}))
    return dest


def hostile_metrics(run: Path, kind: str) -> None:
    make_hostile(run / "metrics.json", kind)


def one_warning(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: "), stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("kind", ["deep", "fifo", "devzero"])
def test_a_hostile_metrics_file_is_one_warning_and_every_other_run_is_listed(tmp_path, kind):
    """issue 23, items 3 and 4: a 100,000-deep metrics.json (was: `error: unexpected
    RecursionError`, nothing listed), a FIFO (was: a hang) or a link to /dev/zero (was:
    memory until killed) in one run: `runs` lists every other run, warns once, exit 0."""
    run = victim_cache(tmp_path)
    hostile_metrics(run, kind)
    r = run_cli(run.parent, "runs", timeout=90)
    assert r.returncode == 0, r.stderr
    one_warning(r.stderr, VICTIM, "metrics.json")
    listed = re.findall(r"^([0-9a-f]{12})\s+shipped\s", r.stdout, flags=re.M)
    assert sorted(listed) == SHIPPED_IDS
    assert VICTIM not in r.stdout


@pytest.mark.parametrize("kind", ["deep", "fifo", "devzero"])
def test_complete_refuses_a_hostile_metrics_file_in_one_line(tmp_path, kind):
    """issue 23, items 3 and 4: `complete` on that run is one error line, at once."""
    run = victim_cache(tmp_path)
    hostile_metrics(run, kind)
    r = run_cli(run.parent, "complete", "--run", VICTIM, PROMPT, timeout=90)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "metrics.json" in lines[0]


def nan_delta(d: dict) -> dict:
    key = sorted(d)[0]
    d[key] = d[key].clone()
    d[key].view(-1)[0] = float("nan")
    return d


def inf_delta(d: dict) -> dict:
    key = sorted(d)[-1]
    d[key] = torch.full_like(d[key], float("inf"))
    return d


def empty_delta(d: dict) -> dict:
    return {}


def missing_layer(d: dict) -> dict:
    return {k: v for k, v in d.items() if "blocks.0.attn.q_proj" not in k}


def wrong_shape(d: dict) -> dict:
    key = "blocks.0.mlp.fc_in.weight"
    d[key] = d[key].T.contiguous()
    return d


def empty_tensor(d: dict) -> dict:
    d["blocks.0.attn.q_proj.weight"] = torch.zeros(0, 128, dtype=torch.float16)
    return d


BROKEN_DELTAS = {f.__name__: f for f in (nan_delta, inf_delta, empty_delta, missing_layer,
                                          wrong_shape, empty_tensor)}  # fmt: skip
# broken in itself (the listing sees it) vs. not fitting the base model (seen on loading)
LISTING_SEES = {"nan_delta", "inf_delta", "empty_delta", "empty_tensor"}


@pytest.mark.parametrize("case", sorted(BROKEN_DELTAS))
def test_a_broken_full_delta_is_refused(tmp_path, case):
    """issue 23, item 5: a full fine-tune's delta.safetensors with NaN/inf (was: loaded,
    `P(went)=nan`), with no tensors (was: loaded as the base model), missing a layer or
    of the wrong shape: `complete` is one error line naming the file, exit 2; a delta
    broken in itself is a warning in `runs` too."""
    run = victim_cache(tmp_path, "full")
    tensors = load_file(run / "delta.safetensors")
    save_file(BROKEN_DELTAS[case](tensors), run / "delta.safetensors")
    r = run_cli(run.parent, "complete", "--run", VICTIM, PROMPT, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "delta.safetensors" in lines[0] and "nan" not in r.stdout.lower()
    if case in LISTING_SEES:
        listing = run_cli(run.parent, "runs", timeout=90)
        assert listing.returncode == 0, listing.stderr
        one_warning(listing.stderr, VICTIM, "delta.safetensors")


def test_shipped_store_is_untouched(before, cache, error_runs):
    """Last in this module: nothing above wrote into precomputed/ or ~/.cache/minituner."""
    assert snapshot(PRECOMPUTED) == before["precomputed"]
    assert snapshot(Path.home() / ".cache" / "minituner") == before["home"]
