"""QLoRA end to end: a short qlora fine-tune on the CPU (NF4 block Linears under LoRA),
the NF4-only figures it reports, merging, and the shipped QLoRA results."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from minituner.finetune import loop as train
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import load_base
from minituner.lora.inject import lora_layers, merge_lora
from minituner.lora.layer import LoRALinear
from minituner.minigpt.data import encode_lines
from minituner.nf4.linear import NF4Linear
from minituner.paths import experiments_file

EVAL_CAP = 4
TARGETED = ("q_proj", "v_proj")
PLAIN = ("k_proj", "o_proj", "fc_in", "fc_out")


@pytest.fixture(scope="module")
def fbase():
    return load_base()


@pytest.fixture(scope="module")
def shipped():
    return json.loads(experiments_file().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def qlora_run(fbase):
    """A 4-step qlora fine-tune. The NF4-base evaluation (the first evaluation on the full
    splits) is real; the periodic and final evaluations use a small sample."""
    real = train.evaluate
    full_calls = []

    def evaluate(model, tok, corpus, base_metrics=None, sample=None):
        if sample is None and not full_calls:
            full_calls.append(1)
            return real(model, tok, corpus, base_metrics=base_metrics)
        n = min(sample or EVAL_CAP, EVAL_CAP)
        return real(model, tok, corpus, base_metrics=base_metrics, sample=n)

    cfg = FinetuneConfig(method="qlora", steps=4, batch_size=8, eval_every=100, eval_sample=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "evaluate", evaluate)
        res = finetune(cfg, fbase, device="cpu")
    assert full_calls, "the NF4 base was never evaluated on the full splits"
    return res


@pytest.fixture(scope="module")
def batch(fbase):
    lines = fbase.corpus.control_en[:6] + ["He went to school yesterday."]
    x, _ = encode_lines(fbase.tok, lines).batch(torch.arange(len(lines)))
    return x


def test_qlora_run_completes(qlora_run):
    assert qlora_run.status == "completed", qlora_run.message
    assert qlora_run.model is not None


def test_block_linears_are_nf4_under_lora(qlora_run, fbase):
    model = qlora_run.model
    for i, block in enumerate(model.blocks):
        for name in TARGETED:
            layer = getattr(block.attn, name)
            assert isinstance(layer, LoRALinear), (i, name)
            assert isinstance(layer.base, NF4Linear), (i, name)
            assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
            assert layer.lora_B.abs().max() > 0  # trained
        for name in PLAIN:
            parent = block.mlp if name.startswith("fc") else block.attn
            assert isinstance(getattr(parent, name), NF4Linear), (i, name)
        # no full-precision Linear weight is left inside a block
        assert not any(isinstance(m, nn.Linear) for m in block.modules())
    assert type(model.lm_head) is nn.Linear  # tied to the embedding: stays full precision
    assert model.lm_head.weight is model.tok_emb.weight
    assert sorted(lora_layers(model)) == sorted(
        f"blocks.{i}.attn.{n}" for i in range(len(model.blocks)) for n in TARGETED
    )
    # the frozen base is quantized, not trained
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert qlora_run.metrics["trainable_params"] == 16384
    # the shared base model was not quantized in place
    assert all(type(m) is not NF4Linear for m in fbase.model.modules())


def test_nf4_base_metrics_match_the_shipped_ones(qlora_run, shipped, fbase):
    m = qlora_run.metrics
    assert "nf4_base_metrics" in m
    nf4 = m["nf4_base_metrics"]
    ref = shipped["forgetting"]["qlora"]["nf4_base"]
    assert set(nf4) == set(ref)
    # the shipped figures come from another machine: allow one flipped near-tie of 240
    # prompts and float-summation noise in the perplexities
    for k in ("irregular_accuracy", "overregularized_rate", "regular_accuracy"):
        assert nf4[k] == pytest.approx(ref[k], abs=1 / 240), k
    for k in ("control_en_ppl", "control_es_ppl"):
        assert nf4[k] == pytest.approx(ref[k], rel=1e-6), k
    # quantization alone barely moves the base model
    for lang in ("en", "es"):
        assert abs(nf4[f"control_{lang}_drift"]) < 0.01
    assert abs(nf4["irregular_accuracy"] - fbase.metrics["irregular_accuracy"]) < 0.1


def test_qlora_predicted_memory_equals_measured(qlora_run):
    mem = qlora_run.metrics["memory"]
    pred, meas = mem["predicted"], mem["measured"]
    for key in ("weights", "nf4", "lora", "gradients", "optimizer"):
        assert pred[key] == meas[key], (key, pred[key], meas[key])
    assert pred["states_total"] == meas["total"]
    assert meas["nf4"] > 0


@torch.no_grad()
def test_merge_lora_gives_plain_linears_with_the_same_outputs(qlora_run, batch):
    model = qlora_run.model.eval()
    want = model(batch)
    merged = merge_lora(copy.deepcopy(model)).eval()
    assert not lora_layers(merged)
    for block in merged.blocks:
        for name in TARGETED:
            layer = getattr(block.attn, name)
            assert type(layer) is nn.Linear and layer.weight.dtype == torch.float32
    got = merged(batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=5e-5)  # fp32 rounding
    # the adapter matters: merging away the LoRA update would not match
    no_lora = copy.deepcopy(model)
    for layer in lora_layers(no_lora).values():
        layer.lora_B.zero_()
    assert (no_lora(batch) - want).abs().max() > 1e-2
    torch.testing.assert_close(model(batch), want)  # the qlora model itself is untouched


@torch.no_grad()
def test_in_place_merge_on_nf4_base_is_refused(qlora_run, batch):
    model = copy.deepcopy(qlora_run.model).eval()
    before = model(batch)
    layer = lora_layers(model)["blocks.0.attn.q_proj"]
    codes = layer.base.weight_codes.clone()
    with pytest.raises(ValueError, match="4-bit"):
        layer.merge()
    assert layer.merged is False
    assert torch.equal(layer.base.weight_codes, codes)
    assert torch.equal(model(batch), before)


def test_shipped_qlora_matches_lora(shipped):
    q = shipped["forgetting"]["qlora"]
    lora8 = shipped["rank_sweep"]["summary"]["8"]
    assert q["n"] == 3 and lora8["n"] == 3
    assert abs(q["irregular_accuracy_mean"] - lora8["irregular_accuracy_mean"]) <= 0.02
    assert q["irregular_accuracy_mean"] >= 0.95
    # the same adapters on a 4-bit base: same trainable count, far less state memory
    assert q["trainable_params"] == lora8["trainable_params"]
    assert q["measured_state_bytes"] < lora8["measured_state_bytes"] / 3
    for lang in ("en", "es"):
        assert q[f"control_{lang}_drift_mean"] <= 0.05
    assert shipped["forgetting"]["lora"] == lora8  # the same three runs
