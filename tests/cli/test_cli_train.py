"""``pretrain`` and ``finetune`` (minituner.cli.train) under hostile input and bad
moments: every refusal (output folder, seed, device, run cache) is one ``error:`` line
and comes before any training; nothing the user did not ask to replace is deleted; a
tiny pretrain writes a loadable base model."""

from __future__ import annotations

import json

import pytest
import torch
from cli_checks import assert_user_error, run_main, snapshot
from cli_util import run_minituner

from minituner.minigpt import pretrain as pretrain_mod
from minituner.minigpt.checkpoint import load_model
from minituner.paths import base_dir

SHIPPED_BASE = base_dir()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_pretrain_cuda_without_gpu(base_copy, capsys):
    before = snapshot(base_copy.parent)
    r = run_main(capsys, "pretrain", "--out", str(base_copy), "--steps", "1", "--device", "cuda")
    assert_user_error(r, "cuda")
    assert snapshot(base_copy.parent) == before


def test_pretrain_tiny_writes_a_loadable_base(tmp_path):
    out = tmp_path / "base"
    r = run_minituner(
        "pretrain",
        *("--preset", "tiny", "--steps", "3", "--batch-size", "8", "--device", "cpu"),
        *("--out", str(out)),
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "irregular_accuracy" in r.stdout and str(out) in r.stdout
    model, tok, cfg = load_model(out)
    assert model.config.n_embd == 32
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["pretrain"]["steps"] == 3
    assert metrics["corpus_version"] == cfg["corpus_version"]


# ---------------------------------------------------------------- pretrain --out


def test_plain_pretrain_refuses_to_replace_the_shipped_base(capsys, no_training):
    before = snapshot(SHIPPED_BASE)
    r = run_main(capsys, "pretrain", "--preset", "tiny", "--steps", "1")
    assert_user_error(r, "shipped base", "--force", "--out")
    assert snapshot(SHIPPED_BASE) == before
    assert r.stdout == ""


def test_pretrain_refuses_a_non_empty_out(tmp_path, capsys, no_training):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("months of work", encoding="utf-8")
    r = run_main(capsys, "pretrain", "--preset", "tiny", "--steps", "1", "--out", str(out))
    assert_user_error(r, str(out), "not empty", "--force")
    assert (out / "thesis.txt").read_text(encoding="utf-8") == "months of work"


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_pretrain_out_that_is_a_file(tmp_path, capsys, no_training, where):
    f = tmp_path / "notes.txt"
    f.write_text("keep", encoding="utf-8")
    out = f if where == "file" else f / "base"
    r = run_main(capsys, "pretrain", "--steps", "1", "--out", str(out), "--force")
    assert_user_error(r, "is a file")
    assert f.read_text(encoding="utf-8") == "keep"


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_pretrain_seed_out_of_range(tmp_path, capsys, no_training, seed):
    r = run_main(capsys, "pretrain", "--seed", seed, "--out", str(tmp_path / "b"))
    assert_user_error(r, "seed", seed)


def test_write_base_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="not empty"):
        pretrain_mod.write_base(tmp_path, None, None, pretrain_mod.PretrainConfig(), {})
    assert (tmp_path / "keep.txt").exists()


def test_pretrain_force_replaces_a_non_empty_out(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "stale.txt").write_text("x", encoding="utf-8")
    r = run_minituner(
        "pretrain",
        *("--preset", "tiny", "--steps", "2", "--batch-size", "8", "--device", "cpu"),
        *("--out", str(out), "--force"),
    )
    assert r.returncode == 0, r.stderr
    assert not (out / "stale.txt").exists()
    model, _, _ = load_model(out)
    assert model.config.n_embd == 32


def test_pretrain_into_an_empty_folder_needs_no_force(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert pretrain_mod.check_out_dir(out) == out
    assert pretrain_mod.check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cuda:99", "cpu:3", "tpu9", ""])
def test_devices_torch_knows_but_cannot_train_on_are_one_line(
    tmp_path, capsys, no_training, device
):
    out = tmp_path / "b"
    r = run_main(capsys, "pretrain", "--steps", "1", "--out", str(out), "--device", device)
    assert_user_error(r, repr(device))
    assert not out.exists()


def test_finetune_refuses_an_unknown_device_before_loading_anything(capsys, no_finetune):
    assert_user_error(run_main(capsys, "finetune", "--device", "mps", "--no-save"), "'mps'")


# ---------------------------------------------------------------- the run cache


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_a_cache_that_cannot_hold_runs_is_reported_before_training(
    tmp_path, capsys, monkeypatch, no_finetune, where
):
    f = tmp_path / "cache"
    f.write_text("not a folder", encoding="utf-8")
    cache = f if where == "file" else f / "runs"
    monkeypatch.setenv("MINITUNER_CACHE", str(cache))
    r = run_main(capsys, "finetune", "--steps", "1", "--force", "--device", "cpu")
    assert_user_error(r, str(cache), "cannot store runs")
    assert r.stdout == ""
    assert f.read_text(encoding="utf-8") == "not a folder"


# ---------------------------------------------------------------- bounds (issue 23, item 9)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--alpha", "1e308"], ["alpha", "1024"]),  # was: unexpected RuntimeError mid-run
        (["--alpha", "1e30"], ["alpha", "1024"]),  # was: exit 0, nothing learned
        (["--alpha", "1e309"], ["--alpha", "finite"]),
        (["--rank", "2", "--alpha", "4096"], ["alpha", "r=2"]),
        (["--batch-size", "100000000"], ["--batch-size", "1024"]),  # was: an allocation error
        (["--batch-size", "1025"], ["--batch-size", "1024"]),
    ],
)
def test_a_setting_that_breaks_a_run_is_one_line_before_training(
    capsys, no_finetune, tmp_path, monkeypatch, flags, needles
):
    """issue 23, item 9: refused with one ``error:`` line naming the flag, exit 2, before
    any training (no_finetune fails the test if training starts; nothing printed)."""
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    r = run_main(capsys, "finetune", "--steps", "1", "--device", "cpu", "--force", *flags)
    assert_user_error(r, *needles)
    assert r.stdout == ""
    assert not (tmp_path / "cache").exists()


def test_a_batch_the_base_model_cannot_hold_is_one_line_before_training(
    capsys, no_finetune, tmp_path, monkeypatch
):
    """The model-aware bound (finetune.config.check_batch), run by the CLI's pre-flight."""
    from minituner.finetune import config

    monkeypatch.setattr(config, "MAX_ACTIVATION_BYTES", 2**20)  # 1 MiB: batch 32 is over
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    r = run_main(capsys, "finetune", "--steps", "1", "--device", "cpu", "--force")
    assert_user_error(r, "batch_size=32", "predicted", "at most")
    assert r.stdout == ""
