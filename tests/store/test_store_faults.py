"""Fault injection on the run store's save (minituner.store.runs + io.atomic_directory).

A forked child saves a run and is killed (``os._exit``) at its k-th rename or deletion,
for every k; after each kill the store must show the old run or the new one, every file
intact, and the next save must succeed and leave nothing else behind. Two processes
re-saving the same run at once must both succeed while a reader never misses the run.
The runs are cheap fakes: an untrained LoRA model with random B and a shipped run's
metrics, so no training happens here.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from minituner.finetune.config import FinetuneConfig
from minituner.finetune.result import FinetuneResult, load_base, prepare_model
from minituner.paths import runs_dir
from minituner.store.runs import RunStore, run_id

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and flock: Linux")

KILLED = 77
SHIPPED_LORA = "0e9eca154689"
CFG = FinetuneConfig(method="lora", r=2, targets=("q",), steps=40)
# every call that renames or deletes: shutil.rmtree and the os calls it makes itself
FAULT_POINTS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "rmdir"), (shutil, "rmtree")]
FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def fbase():
    return load_base()


def fake_result(base, marker: float) -> FinetuneResult:
    """A completed LoRA run whose adapter and wall time depend on ``marker``."""
    model = prepare_model(base, CFG, torch.device("cpu"))
    gen = torch.Generator().manual_seed(int(marker * 1000))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    metrics = json.loads((runs_dir() / SHIPPED_LORA / "metrics.json").read_text())
    metrics.pop("stable_rank_mean")
    metrics["wall_time_s"] = marker
    return FinetuneResult(
        config=CFG, status="completed", message="", model=model, metrics=metrics, base=base
    )


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def results(fbase):
    return {m: fake_result(fbase, m) for m in (1.0, 2.0, 3.0)}


@pytest.fixture(scope="module")
def references(results, tmp_path_factory):
    """The files of each marker's run, saved without faults."""
    out = {}
    for marker, res in results.items():
        root = tmp_path_factory.mktemp(f"ref{int(marker)}")
        info = RunStore([root], save_root=root).save(res)
        out[marker] = snapshot(info.path)
    assert out[1.0] != out[2.0]
    return out


def _save_child(root: Path, result, kill_at: int, count_file: Path) -> None:
    """In a forked child: save ``result``, exiting abruptly at fault point ``kill_at``."""
    calls = [0]

    def wrap(fn):
        def faulty(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os._exit(KILLED)
            return fn(*args, **kwargs)

        return faulty

    try:
        for mod, name in FAULT_POINTS:
            setattr(mod, name, wrap(getattr(mod, name)))
        RunStore([root], save_root=root).save(result)
        count_file.write_text(str(calls[0]))
    except BaseException:
        os._exit(1)
    os._exit(0)


def _run_child(root: Path, result, kill_at: int, tmp_path: Path) -> tuple[int, int]:
    count_file = tmp_path / f"count-{kill_at}"
    p = FORK.Process(target=_save_child, args=(root, result, kill_at, count_file))
    p.start()
    p.join(120)
    assert p.exitcode is not None, "the saving child hung"
    return p.exitcode, int(count_file.read_text()) if count_file.exists() else -1


def _shown(root: Path) -> dict[str, bytes] | None:
    """The one run the store shows (checked complete), or None."""
    store = RunStore([root], save_root=root)
    infos = store.list()
    assert len(infos) <= 1, [i.path for i in infos]
    if not infos:
        return None
    rid = run_id(CFG, infos[0].config.base_model_id, infos[0].config.corpus_version)
    assert infos[0].run_id == rid and store.find(rid).path == root / rid
    return snapshot(infos[0].path)


@pytest.mark.parametrize("with_old", [True, False], ids=["re-save", "first save"])
def test_a_save_killed_at_any_point_leaves_old_or_new_intact(
    with_old, results, references, tmp_path
):
    if with_old:
        RunStore([tmp_path / "count"], save_root=tmp_path / "count").save(results[1.0])
    code, n_points = _run_child(tmp_path / "count", results[2.0], 0, tmp_path)
    assert code == 0 and n_points >= 8, (code, n_points)  # build, renames, deletions
    states = set()
    for k in range(1, n_points + 1):
        root = tmp_path / f"k{k}"
        if with_old:
            RunStore([root], save_root=root).save(results[1.0])
        code, _ = _run_child(root, results[2.0], k, tmp_path)
        assert code == KILLED, (k, code)
        shown = _shown(root)
        if shown is None:
            assert not with_old, f"killed at point {k}: the old run is hidden"
            states.add("none")
        else:
            assert shown in (references[1.0], references[2.0]), f"point {k}: a mixed run"
            if not with_old:
                assert shown == references[2.0], k
            states.add("old" if shown == references[1.0] else "new")
        info = RunStore([root], save_root=root).save(results[3.0])  # the next save works
        assert snapshot(info.path) == references[3.0]
        assert sorted(p.name for p in root.iterdir()) == [info.run_id], f"leftovers at {k}"
    # the kill points cover the whole save (a first save has nothing after its last rename)
    assert states == ({"old", "new"} if with_old else {"none"})


def _resave_loop(root: Path, result, times: int) -> None:
    """Re-save ``result`` ``times`` times, on a slow disk: each rename takes 5 ms more, so
    the moments between renames are long enough for the other processes to meet them."""
    real = os.replace

    def slow_replace(src, dst):
        real(src, dst)
        time.sleep(0.005)

    os.replace = slow_replace
    try:
        for _ in range(times):
            RunStore([root], save_root=root).save(result)
    except BaseException as e:
        print(f"save failed: {e!r}", file=sys.stderr)
        os._exit(1)
    os._exit(0)


def _read_loop(root: Path, rid: str, stop, misses) -> None:
    store = RunStore([root], save_root=root)
    try:
        while not stop.is_set():
            try:
                if store.find(rid) is None:
                    misses.value += 1
            except ValueError:
                misses.value += 1
    finally:
        os._exit(0)


def test_concurrent_saves_of_one_run_both_succeed_and_readers_always_see_it(
    results, references, tmp_path
):
    root = tmp_path / "store"
    info = RunStore([root], save_root=root).save(results[1.0])
    stop, misses = FORK.Event(), FORK.Value("i", 0)
    reader = FORK.Process(target=_read_loop, args=(root, info.run_id, stop, misses))
    reader.start()
    writers = [FORK.Process(target=_resave_loop, args=(root, results[m], 6)) for m in (2.0, 3.0)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(300)
    stop.set()
    reader.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    assert misses.value == 0, f"a reader missed the run {misses.value} times"
    assert _shown(root) in (references[2.0], references[3.0])
    assert sorted(p.name for p in root.iterdir()) == [info.run_id]


def test_leftovers_of_dead_saves_are_cleaned_and_live_ones_kept(results, references, tmp_path):
    root = tmp_path / "store"
    info = RunStore([root], save_root=root).save(results[1.0])
    dead = FORK.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    rid = info.run_id
    for name in (f".{rid}.tmp-{dead.pid}-abc", f".{rid}.trash-{dead.pid}"):
        (root / name).mkdir()
        (root / name / "metrics.json").write_text("{}")
    live = root / f".{rid}.tmp-{os.getppid()}-xyz"  # a save still running elsewhere
    live.mkdir()
    RunStore([root], save_root=root).save(results[2.0])
    assert sorted(p.name for p in root.iterdir()) == sorted([rid, live.name])
    assert snapshot(root / rid) == references[2.0]


def test_a_run_left_under_old_is_put_back_on_read(results, references, tmp_path):
    root = tmp_path / "store"
    info = RunStore([root], save_root=root).save(results[1.0])
    os.replace(info.path, root / f".{info.run_id}.old-999999999")  # killed between renames
    assert [i.run_id for i in RunStore([root], save_root=root).list()] == [info.run_id]
    assert snapshot(info.path) == references[1.0]
    os.replace(info.path, root / f".{info.run_id}.old-999999999")
    assert RunStore([root], save_root=root).find(info.run_id).path == info.path
