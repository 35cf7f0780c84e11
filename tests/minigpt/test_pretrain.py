"""Pretraining: determinism on the CPU, the written base directory, and the README's table
of the shipped base model (whose figures are recomputed in tests/minigpt/test_evaluate.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minituner.minigpt.checkpoint import load_model
from minituner.minigpt.corpus import CorpusConfig, build_corpus
from minituner.minigpt.pretrain import PretrainConfig, pretrain, write_base

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_CORPUS = CorpusConfig(n_pretrain=2000)


def tiny_run(seed: int, events: list | None = None):
    cfg = PretrainConfig(
        preset="tiny",
        steps=30,
        batch_size=16,
        warmup=5,
        seed=seed,
        device="cpu",
        corpus=SMALL_CORPUS,
    )
    model, tok, info = pretrain(cfg, events.append if events is not None else None)
    return cfg, model, tok, info


@pytest.fixture(scope="module")
def run0():
    events: list[dict] = []
    cfg, model, tok, info = tiny_run(0, events)
    return cfg, model, tok, info, events


def test_pretraining_is_deterministic_for_a_seed(run0):
    _, a, _, _, _ = run0
    _, b, _, _ = tiny_run(0)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_different_seed_gives_different_weights(run0):
    _, a, _, _, _ = run0
    _, c, _, _ = tiny_run(1)
    sa, sc = a.state_dict(), c.state_dict()
    assert any(not torch.equal(sa[n], sc[n]) for n in sa)
    assert not torch.equal(sa["blocks.0.attn.q_proj.weight"], sc["blocks.0.attn.q_proj.weight"])


def test_step_events_and_info(run0):
    _, model, tok, info, events = run0
    assert [e["step"] for e in events] == list(range(1, 31))
    assert all(e["steps"] == 30 and math.isfinite(e["loss"]) and e["lr"] > 0 for e in events)
    assert events[-1]["loss"] < events[0]["loss"]
    assert info["device"] == "CPU"
    assert info["final_loss"] == pytest.approx(events[-1]["loss"])
    assert not model.training
    assert model.config.vocab_size == tok.vocab_size


@pytest.mark.parametrize(
    "bad",
    [{"steps": 0}, {"steps": -5}, {"batch_size": 0}, {"lr": 0.0}, {"warmup": -1}],
)
def test_pretrain_config_validation(bad):
    with pytest.raises(ValueError):
        PretrainConfig(**bad)


def test_write_base_round_trip(run0, tmp_path):
    cfg, model, tok, info, _ = run0
    out = tmp_path / "base"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    metrics = write_base(out, model, tok, cfg, info, force=True)  # replaces what was there
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "metrics.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temp or .old dirs left
    loaded, tok2, saved_cfg = load_model(out)
    assert tok2.chars == tok.chars
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    on_disk = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["corpus_version"] == saved_cfg["corpus_version"]
    assert on_disk["corpus_version"] == build_corpus(SMALL_CORPUS).version
    assert on_disk["pretrain"]["corpus"]["n_pretrain"] == SMALL_CORPUS.n_pretrain
    assert on_disk["num_params"] == model.num_params()


def test_readme_base_table_is_current():
    """The README's base-model table is the output of scripts/base_table.py."""
    r = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "base_table.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- base-table:start -->\n", "\n<!-- base-table:end -->"
    shown = readme.split(start, 1)[1].split(end, 1)[0]
    assert shown.strip() == r.stdout.strip(), (
        "README.md's base table is stale: paste the output of `python scripts/base_table.py`"
    )
