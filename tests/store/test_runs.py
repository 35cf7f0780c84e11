"""The run store (minituner.store.runs): save/load round trips, run ids, path safety, corrupt
entries, atomic saves, and the shipped store in precomputed/."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch
from record_util import HOSTILE, make_hostile
from safetensors.torch import load_file, save_file

from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import load_base
from minituner.minigpt.data import encode_lines
from minituner.paths import data_dir, runs_dir
from minituner.store import runs
from minituner.store.runs import RunStore, check_run_id, run_id

EVAL_CAP = 4
SMALL = dict(steps=3, batch_size=8, eval_every=100, eval_sample=4)
SHIPPED_LORA = "0e9eca154689"  # lora r=8 q,v seed 0


def _cheap_finetune(base, **kw):
    """finetune() with every evaluation cut to a small sample (training is unaffected)."""
    res = finetune(FinetuneConfig(**{**SMALL, **kw}), base, device="cpu", eval_limit=EVAL_CAP)
    assert res.ok(), res.message
    return res


@pytest.fixture(scope="module")
def fbase():
    return load_base()


@pytest.fixture(scope="module")
def lora_result(fbase):
    return _cheap_finetune(fbase, method="lora")


@pytest.fixture(scope="module")
def full_result(fbase):
    return _cheap_finetune(fbase, method="full", lr=1e-3, warmup=0)


@pytest.fixture(scope="module")
def x(fbase):
    lines = fbase.corpus.control_en[:4] + fbase.corpus.control_es[:4]
    return encode_lines(fbase.tok, lines).batch(torch.arange(len(lines)))[0]


def _store(tmp_path: Path) -> RunStore:
    return RunStore([tmp_path], save_root=tmp_path)


# ------------------------------------------------------------------ round trips


@torch.no_grad()
def test_lora_run_round_trip_is_exact(lora_result, fbase, x, tmp_path):
    store = _store(tmp_path)
    info = store.save(lora_result)
    assert info.path == tmp_path / info.run_id
    assert info.run_id == run_id(
        lora_result.config, fbase.model_id, fbase.metrics["corpus_version"]
    )
    assert not info.shipped
    for f in ("config.json", "metrics.json", "spectrum.json", "adapter.safetensors"):
        assert (info.path / f).is_file(), f
    want = runs.as_metrics_record(lora_result.metrics).final
    assert info.final.irregular_accuracy == want.irregular_accuracy
    assert info.finetune_config() == lora_result.config
    loaded = store.load_model(info, fbase)
    assert not loaded.training
    want = lora_result.model.eval()(x)
    assert torch.equal(loaded(x), want)
    assert not torch.equal(fbase.model(x), want)  # the adapter changed something
    assert [i.run_id for i in store.list()] == [info.run_id]
    assert store.find(info.run_id).run_id == info.run_id
    assert store.lookup(lora_result.config, fbase).run_id == info.run_id


@torch.no_grad()
def test_full_run_round_trip_within_fp16(full_result, fbase, x, tmp_path):
    store = _store(tmp_path)
    info = store.save(full_result)
    assert (info.path / "delta.safetensors").is_file()
    assert not (info.path / "adapter.safetensors").exists()
    loaded = store.load_model(info, fbase)
    want = full_result.model.eval()(x)
    got = loaded(x)
    err = (got - want).abs().max().item()
    moved = (fbase.model(x) - want).abs().max().item()
    # deltas are stored in fp16 (relative rounding 2^-11 of a small update)
    assert err < 2e-3, err
    assert moved > 50 * err, (moved, err)  # the delta was applied, not dropped
    sd, tuned = loaded.state_dict(), full_result.model.state_dict()
    for k in sd:
        torch.testing.assert_close(sd[k], tuned[k], rtol=0, atol=1e-5)


def test_load_model_refuses_another_base(lora_result, fbase, tmp_path):
    store = _store(tmp_path)
    info = store.save(lora_result)
    other = dataclasses.replace(fbase, model_id="000000000000")
    with pytest.raises(ValueError, match="base model"):
        store.load_model(info, other)


def test_saving_twice_replaces_the_run(lora_result, tmp_path):
    store = _store(tmp_path)
    a = store.save(lora_result)
    b = store.save(lora_result)
    assert a.run_id == b.run_id
    assert [p.name for p in tmp_path.iterdir()] == [a.run_id]


# ------------------------------------------------------------------ run ids

VARIANTS = {
    "method": "full",
    "r": 4,
    "alpha": 8.0,
    "targets": ("q", "k"),
    "dropout": 0.1,
    "rslora": True,
    "lr": 1e-3,
    "steps": 41,
    "batch_size": 16,
    "warmup": 0,
    "weight_decay": 0.01,
    "grad_clip": 0.5,
    "seed": 1,
    "eval_every": 5,
    "eval_sample": 24,
    "replay": 0.1,
    "teach": "swim:swam",
}


def test_run_id_is_12_hex_and_stable():
    a = run_id(FinetuneConfig(), "c8adcefc58ba", "c1-v")
    assert re.fullmatch(r"[0-9a-f]{12}", a)
    assert run_id(FinetuneConfig(), "c8adcefc58ba", "c1-v") == a
    assert run_id(FinetuneConfig(targets="q,v"), "c8adcefc58ba", "c1-v") == a
    assert run_id(FinetuneConfig(lr=5e-3), "c8adcefc58ba", "c1-v") == a  # lora's default lr


@pytest.mark.parametrize("field", sorted(VARIANTS))
def test_run_id_changes_with_every_field(field):
    a = run_id(FinetuneConfig(), "m", "c")
    b = run_id(FinetuneConfig(**{field: VARIANTS[field]}), "m", "c")
    assert a != b, field


def test_run_id_changes_with_base_corpus_and_nf4_settings():
    cfg = FinetuneConfig()
    a = run_id(cfg, "m", "c")
    assert run_id(cfg, "m2", "c") != a
    assert run_id(cfg, "m", "c2") != a
    q = FinetuneConfig(method="qlora")
    assert run_id(q, "m", "c") != a
    assert run_id(FinetuneConfig(method="qlora", nf4_block_size=128), "m", "c") != run_id(
        q, "m", "c"
    )
    assert run_id(FinetuneConfig(method="qlora", nf4_double_quant=False), "m", "c") != run_id(
        q, "m", "c"
    )
    # settings that do not apply stay out of the id: full fine-tuning has no rank
    assert run_id(FinetuneConfig(method="full", r=4), "m", "c") == run_id(
        FinetuneConfig(method="full"), "m", "c"
    )


def test_shipped_run_ids_are_the_hash_of_their_config():
    store = RunStore([runs_dir()], save_root=runs_dir())
    infos = store.list()
    assert infos
    for info in infos:
        cfg = info.finetune_config()
        assert run_id(cfg, info.config.base_model_id, info.config.corpus_version) == (info.run_id)
        assert info.config.run_id == info.run_id


# ------------------------------------------------------------------ path safety


@pytest.mark.parametrize(
    "bad",
    ["../x", "/etc/passwd", "abc", "0e9eca154689/..", "", "0E9ECA154689", "0e9eca15468g",
     "0e9eca154689\n", " 0e9eca154689", "0e9eca1546890"],
)  # fmt: skip
def test_check_run_id_rejects(bad, tmp_path):
    with pytest.raises(ValueError, match="not a run id"):
        check_run_id(bad)
    with pytest.raises(ValueError, match="not a run id"):
        _store(tmp_path).find(bad)


def test_check_run_id_accepts_a_run_id():
    assert check_run_id("0e9eca154689") == "0e9eca154689"


# ------------------------------------------------------------------ corrupt entries


def _copy_shipped(root: Path, name: str) -> Path:
    dest = root / name
    shutil.copytree(runs_dir() / SHIPPED_LORA, dest)
    return dest


def _set_finetune(path: Path, value) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["finetune"] = value
    (path / "config.json").write_text(json.dumps(cfg))


CORRUPTIONS = {
    "garbage metrics": lambda p: (p / "metrics.json").write_text("{not json"),
    "metrics not an object": lambda p: (p / "metrics.json").write_text("[1, 2]"),
    "missing adapter": lambda p: (p / "adapter.safetensors").unlink(),
    "missing config": lambda p: (p / "config.json").unlink(),
    "diverged status": lambda p: (p / "metrics.json").write_text('{"status": "diverged"}'),
    "bad rank": lambda p: _set_finetune(p, {"method": "lora", "r": 0}),
    "unknown setting": lambda p: _set_finetune(p, {"method": "lora", "colour": "red"}),
    "finetune a list": lambda p: _set_finetune(p, []),
    "finetune null": lambda p: _set_finetune(p, None),
    "alpha a string": lambda p: _set_finetune(p, {"method": "lora", "alpha": "x"}),
    "config a directory": lambda p: ((p / "config.json").unlink(), (p / "config.json").mkdir()),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_run_is_skipped_with_a_warning(kind, tmp_path):
    good = _copy_shipped(tmp_path, SHIPPED_LORA)
    bad = _copy_shipped(tmp_path, "aaaaaaaaaaaa")
    CORRUPTIONS[kind](bad)
    store = _store(tmp_path)
    with pytest.warns(UserWarning, match="aaaaaaaaaaaa"):
        infos = store.list()
    assert [i.run_id for i in infos] == [good.name]
    with pytest.raises(ValueError):
        store.find("aaaaaaaaaaaa")
    with pytest.raises(ValueError):
        store.get("aaaaaaaaaaaa")


def test_foreign_entries_are_skipped(tmp_path):
    _copy_shipped(tmp_path, SHIPPED_LORA)
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "bbbbbbbbbbbb").mkdir()  # a run id, but empty
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = _store(tmp_path).list()
    assert [i.run_id for i in infos] == [SHIPPED_LORA]
    text = " ".join(str(w.message) for w in caught)
    assert "notarun" in text and "bbbbbbbbbbbb" in text
    assert "notes.txt" not in text and ".hidden" not in text


def test_a_broken_copy_does_not_hide_a_valid_one_in_a_later_root(tmp_path):
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    broken = _copy_shipped(shipped, SHIPPED_LORA)
    (broken / "metrics.json").write_text('{"status": "completed"}')
    good = _copy_shipped(cache, SHIPPED_LORA)
    store = RunStore([shipped, cache], save_root=cache)
    with pytest.warns(UserWarning) as caught:
        infos = store.list()
    assert [i.path for i in infos] == [good]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and str(broken / "metrics.json") in messages[0], messages
    assert store.find(SHIPPED_LORA).path == good
    assert store.get(SHIPPED_LORA).path == good


def test_a_run_under_another_id_is_refused(tmp_path):
    _copy_shipped(tmp_path, "aaaaaaaaaaaa")  # config.json still says 0e9eca154689
    with pytest.raises(ValueError, match="does not match its directory"):
        _store(tmp_path).get("aaaaaaaaaaaa")


def test_missing_roots_and_unknown_ids(tmp_path):
    store = RunStore([tmp_path / "nope"], save_root=tmp_path / "nope")
    assert store.list() == []
    assert store.find("000000000000") is None
    with pytest.raises(ValueError, match="no run 000000000000"):
        store.get("000000000000")


def test_corrupt_adapter_is_refused_when_the_run_is_read(fbase, tmp_path):
    """The weights are checked with the run's records: a damaged adapter is a warning
    in the listing and a ValueError naming the file from get, never a model."""
    path = _copy_shipped(tmp_path, SHIPPED_LORA)
    (path / "adapter.safetensors").write_bytes(b"\x00garbage" * 10)
    store = _store(tmp_path)
    with pytest.raises(ValueError, match="adapter.safetensors"):
        store.get(SHIPPED_LORA)
    with pytest.warns(UserWarning, match="adapter.safetensors"):
        assert SHIPPED_LORA not in [i.run_id for i in store.list()]


# ------------------------------------------------------------------ atomic save


def test_interrupted_save_leaves_nothing(lora_result, monkeypatch, tmp_path):
    real = runs.write_json
    written = []

    def crashing(path, obj):
        if Path(path).name == "metrics.json":
            raise OSError("disk full (simulated)")
        written.append(Path(path).name)
        return real(path, obj)

    monkeypatch.setattr(runs, "write_json", crashing)
    store = _store(tmp_path)
    with pytest.raises(OSError, match="simulated"):
        store.save(lora_result)
    assert written == ["spectrum.json"]  # the crash came midway
    rid = run_id(lora_result.config, lora_result.base.model_id, "c1-725b89676a08")
    assert not (tmp_path / rid).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either
    assert store.list() == []
    assert store.find(rid) is None
    monkeypatch.setattr(runs, "write_json", real)
    assert store.save(lora_result).run_id == rid  # a later save works


def test_unfinished_result_is_refused(lora_result, tmp_path):
    stopped = dataclasses.replace(lora_result, status="stopped", message="stopped", model=None)
    with pytest.raises(ValueError, match="stopped"):
        _store(tmp_path).save(stopped)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the shipped store


def test_every_shipped_run_lists_and_loads(fbase):
    store = RunStore([runs_dir()], save_root=runs_dir())
    dirs = sorted(p.name for p in runs_dir().iterdir() if not p.name.startswith("."))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        infos = store.list()
        every = store.list(metrics_only=True)  # with the frontier/replay grids' runs
    assert sorted(i.run_id for i in every) == dirs
    assert sorted(i.run_id for i in infos) == [i.run_id for i in every if i.has_weights]
    assert len(infos) >= 30
    assert all((runs_dir() / i.run_id / "spectrum.json").is_file() for i in infos)
    assert all(i.shipped and i.metrics.status == "completed" for i in infos)
    methods = {i.method for i in infos}
    assert methods == {"full", "lora", "qlora"}
    for info in infos:
        model = store.load_model(info, fbase)
        assert not model.training


def test_shipped_lookup_finds_the_lora_run(fbase):
    store = RunStore([runs_dir()], save_root=runs_dir())
    info = store.lookup(FinetuneConfig(method="lora", r=8, seed=0), fbase)
    assert info is not None and info.run_id == SHIPPED_LORA


def test_precomputed_is_small():
    root = data_dir()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert 0 < size < 50 * 1024 * 1024, size


# ------------------------------------------------------------------ hostile files (issue 23)
SHIPPED_FULL = next(
    i.run_id for i in sorted(RunStore([runs_dir()]).list(), key=lambda i: i.run_id)
    if i.method == "full"
)  # fmt: skip


def _two_runs(tmp_path: Path) -> tuple[RunStore, Path]:
    """A store with a full and a LoRA run; returns it and the LoRA run (the victim)."""
    shutil.copytree(runs_dir() / SHIPPED_FULL, tmp_path / SHIPPED_FULL)
    return _store(tmp_path), _copy_shipped(tmp_path, SHIPPED_LORA)


def _only_warning(store: RunStore, *needles: str) -> list[str]:
    """The ids ``store.list()`` returns; asserts it warned exactly once, naming needles."""

    def hung(signum, frame):
        raise TimeoutError("listing the store blocked for 30 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)  # a FIFO that blocks fails the test instead of hanging it
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids = [i.run_id for i in store.list()]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert len(caught) == 1, [str(w.message) for w in caught]
    for n in needles:
        assert n in str(caught[0].message), (n, str(caught[0].message))
    return ids


@pytest.mark.parametrize("kind", ["deep", "fifo", "devzero", "outside", "huge"])
def test_a_hostile_metrics_file_is_one_warning(tmp_path, kind):
    """issue 23, items 3 and 4: a 100,000-deep metrics.json, a FIFO, a link to /dev/zero,
    a link to a file outside the store, a 20 MB file: the run is skipped with one
    warning naming the file; the other run is listed."""
    root = tmp_path / "store"
    root.mkdir()
    store, victim = _two_runs(root)
    target = victim / "metrics.json"
    good = target.read_text()
    if kind in HOSTILE:
        make_hostile(target, kind)
    elif kind == "outside":
        target.unlink()
        (tmp_path / "metrics.json").write_text(good)
        target.symlink_to(tmp_path / "metrics.json")
    else:
        target.write_text(good[:-2] + " " * 20_000_000 + "}\n")
    assert _only_warning(store, SHIPPED_LORA, "metrics.json") == [SHIPPED_FULL]
    with pytest.raises(ValueError, match="metrics.json"):
        store.get(SHIPPED_LORA)


def test_a_run_directory_linked_from_outside_the_store_is_refused(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    store, victim = _two_runs(root)
    victim.rename(tmp_path / SHIPPED_LORA)
    victim.symlink_to(tmp_path / SHIPPED_LORA)
    assert _only_warning(store, SHIPPED_LORA, "outside") == [SHIPPED_FULL]


def _delta(path: Path) -> Path:
    return path / "delta.safetensors"


@pytest.mark.parametrize("bad", ["nan", "inf", "no tensors", "empty tensor", "integers"])
def test_a_full_delta_broken_in_itself_is_refused_when_listed(tmp_path, bad):
    """issue 23, item 5: NaN/inf, no tensor at all, an empty or an integer tensor."""
    store, _ = _two_runs(tmp_path)
    d = load_file(_delta(tmp_path / SHIPPED_FULL))
    key = sorted(d)[0]
    if bad == "nan":
        d[key][0] = float("nan")
    elif bad == "inf":
        d[key] = torch.full_like(d[key], float("-inf"))
    elif bad == "no tensors":
        d = {}
    elif bad == "empty tensor":
        d[key] = d[key][:0]
    else:
        d[key] = d[key].to(torch.int32)
    save_file(d, _delta(tmp_path / SHIPPED_FULL))
    assert _only_warning(store, SHIPPED_FULL, "delta.safetensors") == [SHIPPED_LORA]
    with pytest.raises(ValueError, match="delta.safetensors"):
        store.get(SHIPPED_FULL)


@pytest.mark.parametrize("bad", ["missing layer", "wrong shape", "unknown key"])
def test_a_full_delta_that_does_not_fit_the_base_is_refused_when_loaded(fbase, tmp_path, bad):
    """issue 23, item 5: the delta must change every parameter of the base model, each
    with its shape (an empty delta used to load as the base model itself)."""
    store, _ = _two_runs(tmp_path)
    d = load_file(_delta(tmp_path / SHIPPED_FULL))
    if bad == "missing layer":
        d = {k: v for k, v in d.items() if not k.startswith("blocks.1.")}
    elif bad == "wrong shape":
        d["blocks.0.mlp.fc_in.weight"] = d["blocks.0.mlp.fc_in.weight"].T.contiguous()
    else:
        d["blocks.9.extra"] = torch.zeros(3)
    save_file(d, _delta(tmp_path / SHIPPED_FULL))
    info = store.get(SHIPPED_FULL)
    with pytest.raises(ValueError, match=r"delta.safetensors.*(lacks|does not fit)"):
        store.load_model(info, fbase)
