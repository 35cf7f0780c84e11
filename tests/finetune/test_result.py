"""What a fine-tune starts from and leaves (minituner.finetune.result): the base model as
load_base reads it, prepare_model's copy per method, and the weight update of a result."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest
import torch

from minituner.finetune.config import FinetuneConfig
from minituner.finetune.result import (
    FinetuneResult,
    full_delta,
    load_base,
    prepare_model,
    weight_delta,
)
from minituner.io import read_json, write_json
from minituner.lora.inject import lora_layers
from minituner.nf4.linear import NF4Linear
from minituner.paths import base_dir

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fbase():
    return load_base()


def test_load_base_reads_the_shipped_model(fbase):
    assert re.fullmatch(r"[0-9a-f]{12}", fbase.model_id)
    assert fbase.metrics["corpus_version"] == fbase.corpus.version
    assert not any(p.device.type != "cpu" for p in fbase.model.parameters())


def test_load_base_refuses_a_model_of_another_corpus(tmp_path):
    d = tmp_path / "base"
    shutil.copytree(base_dir(), d)
    metrics = read_json(d / "metrics.json")
    write_json(d / "metrics.json", {**metrics, "corpus_version": "c1-000000000000"})
    with pytest.raises(ValueError, match="pretrain"):
        load_base(d)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_prepare_model_makes_a_trainable_copy_per_method(fbase, method):
    before = {k: v.clone() for k, v in fbase.model.state_dict().items()}
    model = prepare_model(fbase, FinetuneConfig(method=method, r=4), CPU)
    assert model is not fbase.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if method == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
    else:
        assert trainable and all("lora_" in n for n in trainable)
        layers = lora_layers(model)
        assert {p.rsplit(".", 1)[-1] for p in layers} == {"q_proj", "v_proj"}
        assert all(isinstance(m.base, NF4Linear) == (method == "qlora") for m in layers.values())
    for k, v in fbase.model.state_dict().items():  # the shared base stays put
        assert torch.equal(v, before[k]), k


def _result(fbase, cfg, model) -> FinetuneResult:
    return FinetuneResult(cfg, "completed", "", model, {}, fbase)


def test_weight_delta_of_lora_is_scaling_b_a(fbase):
    cfg = FinetuneConfig(method="lora", r=4, alpha=8.0)
    model = prepare_model(fbase, cfg, CPU)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_()
    deltas = weight_delta(_result(fbase, cfg, model))
    assert set(deltas) == set(lora_layers(model))
    for path, layer in lora_layers(model).items():
        want = (8.0 / 4) * layer.lora_B.detach() @ layer.lora_A.detach()
        torch.testing.assert_close(deltas[path], want)


def test_full_delta_and_weight_delta_of_full_finetuning(fbase):
    cfg = FinetuneConfig(method="full")
    model = prepare_model(fbase, cfg, CPU)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    res = _result(fbase, cfg, model)
    full = full_delta(res)
    assert set(full) == {n for n, _ in model.named_parameters()}
    assert all(torch.allclose(d, torch.ones_like(d)) for d in full.values())
    linear = weight_delta(res)
    assert linear and all(k.startswith("blocks.") for k in linear)
    assert all(torch.allclose(d, torch.ones_like(d)) for d in linear.values())


def test_a_run_without_a_model_has_no_weight_update(fbase):
    res = dataclasses.replace(_result(fbase, FinetuneConfig(), None), status="diverged")
    assert not res.ok()
    with pytest.raises(ValueError, match="did not complete"):
        weight_delta(res)
