"""FinetuneConfig (issue 13): one normalised config per training, so one run id; every
setting checked when a config is made; the rank limit of a model in one place; and the
migration of the shipped runs to the ids of their normalised configs."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_util import REPO_ROOT

from minituner.cli import main
from minituner.finetune.config import (
    MAX_ACTIVATION_BYTES,
    MAX_BATCH_SIZE,
    MAX_EVAL_LIMIT,
    FinetuneConfig,
    batch_activation_bytes,
    check_batch,
    check_before_training,
    check_eval_limit,
    check_rank,
    max_rank,
    normalize_targets,
)
from minituner.finetune.result import load_base
from minituner.lora.inject import add_lora
from minituner.minigpt.model import GPTConfig, MiniGPT, preset_config
from minituner.store.records import RunConfig
from minituner.store.runs import RunStore, run_id

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import migrate_run_ids  # noqa: E402

ALL = ("q", "k", "v", "o", "fc_in", "fc_out")


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("q,q,v", ("q", "v")),
        ("v,q", ("q", "v")),
        (("q", "v"), ("q", "v")),
        (["v", "q", "v"], ("q", "v")),
        ("attn", ("q", "k", "v", "o")),
        ("q,k,v,o", ("q", "k", "v", "o")),
        (["o", "attn"], ("q", "k", "v", "o")),
        ("mlp", ("fc_in", "fc_out")),
        ("fc_out,fc_in", ("fc_in", "fc_out")),
        ("all", ALL),
        (["attn", "mlp"], ALL),
        ("fc_out,v,all,q", ALL),
        (("q_proj", "v_proj"), ("q", "v")),
    ],
)
def test_the_same_targets_make_the_same_config_and_run_id(given, normal):
    cfg = FinetuneConfig(targets=given)
    ref = FinetuneConfig(targets=normal)
    assert cfg.targets == normal
    assert cfg == ref
    assert cfg.to_dict() == ref.to_dict() and cfg.to_dict()["targets"] == list(normal)
    assert run_id(cfg, "base", "corpus") == run_id(ref, "base", "corpus")


def test_a_stored_group_reads_back_normalised():
    d = FinetuneConfig(targets="all").to_dict()
    d["targets"] = ["all"]  # as runs stored before normalisation say it
    assert FinetuneConfig.from_dict(d).targets == ALL


def test_normalize_targets_keeps_foreign_names_for_the_error():
    assert normalize_targets("zz,v,q") == ("q", "v", "zz")
    with pytest.raises(ValueError, match="'zz'"):
        FinetuneConfig(targets="zz,v,q")
    with pytest.raises(ValueError, match="at least one target"):
        FinetuneConfig(targets=",")


def test_the_label_names_a_group():
    assert " all " in FinetuneConfig(targets=list(reversed(ALL))).label()
    assert " q,v " in FinetuneConfig(targets="v,q").label()


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("bad", [0, -64, 63, 1, 64.0, True, "64", None])
def test_nf4_block_size_must_be_a_positive_even_int(bad):
    with pytest.raises(ValueError, match="nf4_block_size"):
        FinetuneConfig(method="qlora", nf4_block_size=bad)


@pytest.mark.parametrize("good", [2, 64, 256])
def test_nf4_block_sizes_that_quantize_nf4_takes(good):
    from minituner.nf4.codec import quantize_nf4

    assert FinetuneConfig(method="qlora", nf4_block_size=good).nf4_block_size == good
    quantize_nf4(MiniGPT(preset_config("tiny", vocab_size=8)).blocks[0].attn.q_proj.weight, good)


@pytest.mark.parametrize("name", ["rslora", "nf4_double_quant"])
@pytest.mark.parametrize("bad", [1, 0, "yes", "false", None])
def test_switches_must_be_bool(name, bad):
    with pytest.raises(ValueError, match=name):
        FinetuneConfig(method="qlora", **{name: bad})


@pytest.mark.parametrize("bad", [-1, True, False, 1.0, "0", None, 2**64])
def test_seed_must_be_a_whole_number_from_zero(bad):
    with pytest.raises(ValueError, match="seed"):
        FinetuneConfig(seed=bad)


def test_good_seeds():
    assert FinetuneConfig(seed=0).seed == 0
    assert FinetuneConfig(seed=2**31).seed == 2**31


# ---------------------------------------------------------------- rank limits


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize("target", ALL)
def test_max_rank_is_what_add_lora_takes(preset, target):
    """Against the reference: the model's own Linear layers."""
    model = MiniGPT(preset_config(preset, vocab_size=8))
    limit = max_rank(model.config, [target])
    add_lora(copy.deepcopy(model), [target], r=limit, alpha=1.0)
    with pytest.raises(ValueError, match="between 1 and"):
        add_lora(copy.deepcopy(model), [target], r=limit + 1, alpha=1.0)


def test_check_rank():
    cfg = preset_config("default", vocab_size=8)
    assert max_rank(cfg) == 128
    check_rank(FinetuneConfig(r=128, targets="all"), cfg)
    check_rank(FinetuneConfig(method="full"), cfg)
    with pytest.raises(ValueError, match="between 1 and 128"):
        check_rank(FinetuneConfig(r=129, targets="mlp"), cfg)


def test_the_cli_refuses_a_rank_the_model_cannot_take_before_training(
    capsys, monkeypatch, tmp_path
):
    from minituner.finetune import loop as train

    def boom(*a, **k):
        raise AssertionError("fine-tuning started")

    for name in ("finetune", "Training"):
        monkeypatch.setattr(train, name, boom, raising=False)
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path))
    limit = max_rank(load_base().model.config)
    code = main(["finetune", "--rank", str(limit + 1), "--device", "cpu", "--force"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"between 1 and {limit}" in err


# ---------------------------------------------------------------- shipped runs


def test_every_shipped_run_has_the_id_of_its_normalised_config():
    runs = RunStore([REPO_ROOT / "precomputed" / "runs"]).list(metrics_only=True)
    assert len(runs) == len(list((REPO_ROOT / "precomputed" / "runs").iterdir()))
    for info in runs:
        c = info.config
        assert run_id(info.finetune_config(), c.base_model_id, c.corpus_version) == info.run_id


def old_run_id(finetune: dict, base: str, corpus: str) -> str:
    """runs.run_id's formula, written out: the id a run got before normalisation."""
    key = json.dumps({"config": finetune, "base": base, "corpus": corpus}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture
def old_data(tmp_path) -> tuple[Path, str, str]:
    """A data folder holding one shipped "all" run as stored before normalisation (its
    old id, targets ["all"]) and files that name it; returns (folder, old id, new id)."""
    shipped = REPO_ROOT / "precomputed" / "runs"
    new = next(
        p.name
        for p in sorted(shipped.iterdir())
        if json.loads((p / "config.json").read_text())["finetune"].get("targets") == list(ALL)
    )
    cfg = json.loads((shipped / new / "config.json").read_text())
    cfg["finetune"]["targets"] = ["all"]
    old = old_run_id(cfg["finetune"], cfg["base_model_id"], cfg["corpus_version"])
    cfg["run_id"] = old
    data = tmp_path / "data"
    shutil.copytree(shipped / new, data / "runs" / old)
    (data / "runs" / old / "config.json").write_text(json.dumps(cfg, indent=1))
    meta = json.loads((data / "runs" / old / "adapter_config.json").read_text())
    meta["config"]["run_id"] = old
    (data / "runs" / old / "adapter_config.json").write_text(json.dumps(meta, indent=2))
    (data / "experiments.json").write_text(json.dumps({"run_ids": [old, "0123456789ab"]}))
    (data / "README.md").write_text(f"| {old} | all |\n")
    return data, old, new


def migrate(data: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "migrate_run_ids.py"), "--data", str(data),
         *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_migration_renames_the_run_and_every_reference(old_data):
    data, old, new = old_data
    assert migrate(data, "--check").returncode == 1
    r = migrate(data)
    assert r.returncode == 0, r.stderr
    assert not (data / "runs" / old).exists()
    cfg = json.loads((data / "runs" / new / "config.json").read_text())
    assert cfg["run_id"] == new and cfg["finetune"]["targets"] == list(ALL)
    meta = json.loads((data / "runs" / new / "adapter_config.json").read_text())
    assert meta["config"]["run_id"] == new
    assert json.loads((data / "experiments.json").read_text()) == {"run_ids": [new, "0123456789ab"]}
    assert (data / "README.md").read_text() == f"| {new} | all |\n"
    (info,) = RunStore([data / "runs"]).list()
    assert info.run_id == new
    # rerunnable: nothing left to do
    again = migrate(data)
    assert again.returncode == 0 and "already" in again.stdout
    assert migrate(data, "--check").returncode == 0


def test_an_interrupted_migration_is_finished_by_the_next(old_data):
    data, old, new = old_data
    moves = migrate_run_ids.planned_moves(data / "runs")
    migrate_run_ids.replace_ids(data / "experiments.json", moves)
    migrate_run_ids.rewrite_run(moves[0])  # killed before the rename
    assert migrate(data).returncode == 0
    assert sorted(p.name for p in (data / "runs").iterdir()) == [new]
    assert new in (data / "experiments.json").read_text()


# ---------------------------------------------------------------- replay and teach (issue 15)
def test_replay_and_teach_are_normalised_and_kept_out_of_old_ids():
    cfg = FinetuneConfig.from_dict({"method": "lora", "teach": " Swim/Swam ", "replay": 0})
    assert cfg.teach == "swim:swam" and cfg.replay == 0.0 and isinstance(cfg.replay, float)
    assert cfg.to_dict()["teach"] == "swim:swam" and "replay" not in cfg.to_dict()
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    for rid, info in {i.run_id: i for i in RunStore().list() if i.shipped}.items():
        assert info.config.finetune.replay == 0.0 and info.config.finetune.teach == ""
        assert "replay" not in info.config.finetune.to_dict(), rid


# ---------------------------------------------------------------- bounds (issue 23, item 9)


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        (dict(alpha=1e308), ["LoRA alpha", "1024"]),
        (dict(alpha=1e30), ["LoRA alpha", "1024"]),
        (dict(alpha=float("inf")), ["LoRA alpha", "finite"]),
        (dict(method="qlora", r=2, alpha=4096.0), ["LoRA alpha", "r=2"]),
        (dict(batch_size=100_000_000), ["batch_size", f"{MAX_BATCH_SIZE}", "memory"]),
        (dict(batch_size=MAX_BATCH_SIZE + 1), ["batch_size", f"{MAX_BATCH_SIZE}"]),
    ],
)
def test_a_setting_that_breaks_a_run_is_refused_when_the_config_is_made(settings, needles):
    """issue 23, item 9: the values that failed mid-run (alpha 1e308), learned nothing
    (alpha 1e30) or ran out of memory (batch 1e8) are refused by FinetuneConfig itself."""
    with pytest.raises(ValueError) as e:
        FinetuneConfig(**settings)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_the_largest_batch_is_what_the_memory_prediction_allows_the_default_model():
    """MAX_BATCH_SIZE is the largest power of two whose predicted activations for the
    default MiniGPT at its full context stay within MAX_ACTIVATION_BYTES."""
    cfg = FinetuneConfig(method="full", batch_size=MAX_BATCH_SIZE)
    assert batch_activation_bytes(cfg, GPTConfig()) <= MAX_ACTIVATION_BYTES
    twice = FinetuneConfig(method="full", batch_size=MAX_BATCH_SIZE)
    twice.batch_size *= 2  # past the config's own check, for the prediction alone
    assert batch_activation_bytes(twice, GPTConfig()) > MAX_ACTIVATION_BYTES
    FinetuneConfig(batch_size=MAX_BATCH_SIZE)  # the bound itself is allowed


def test_check_batch_refuses_a_batch_a_larger_model_cannot_hold():
    large = preset_config("large", 64)
    cfg = FinetuneConfig(method="full", batch_size=MAX_BATCH_SIZE)
    with pytest.raises(ValueError, match=r"batch_size=1024 .* predicted") as e:
        check_batch(cfg, large)
    most = int(str(e.value).split("at most ")[-1].split()[0])
    check_batch(FinetuneConfig(method="full", batch_size=most), large)
    check_batch(FinetuneConfig(batch_size=MAX_BATCH_SIZE), GPTConfig())  # the default fits


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10", MAX_EVAL_LIMIT + 1, 2**62 + 1, 10**30])
def test_check_eval_limit_refuses_what_a_run_record_could_not_store(bad):
    """issue 23, items 9/10: the eval limit's one rule, for the CLI, the loop and the app's
    pre-flight (a huge MINITUNER_EVAL_LIMIT used to fail only when the run was stored)."""
    with pytest.raises(ValueError, match=rf"eval_limit must be a whole number from 1 to "
                                         rf"{MAX_EVAL_LIMIT:,}") as e:  # fmt: skip
        check_eval_limit(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("good", [None, 1, 48, MAX_EVAL_LIMIT])
def test_good_eval_limits(good):
    assert check_eval_limit(good) == good


def test_the_training_loop_uses_the_same_eval_limit_rule():
    from minituner.finetune.loop import Training

    with pytest.raises(ValueError, match="eval_limit must be a whole number from 1 to"):
        Training(FinetuneConfig(), None, eval_limit=MAX_EVAL_LIMIT + 1)


def test_check_before_training_runs_every_model_check(tmp_path):
    base = load_base()
    check_before_training(FinetuneConfig(), base, eval_limit=8)
    with pytest.raises(ValueError, match="rank r=4096"):
        check_before_training(FinetuneConfig(r=4096), base)
    with pytest.raises(ValueError, match="eval_limit"):
        check_before_training(FinetuneConfig(), base, eval_limit=0)
    with pytest.raises(ValueError, match="'æ' not in the model's vocabulary"):
        check_before_training(FinetuneConfig(teach="swim:swÆm"), base)


def test_every_shipped_config_reads_back_valid():
    """The bounds leave every shipped run valid: each config.json through the record reader."""
    paths = sorted((REPO_ROOT / "precomputed" / "runs").glob("*/config.json"))
    assert paths
    for p in paths:
        rec = RunConfig.from_json(json.loads(p.read_text(encoding="utf-8")), str(p))
        assert rec.finetune.batch_size <= MAX_BATCH_SIZE
