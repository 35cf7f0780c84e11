"""minituner.lora.peft_format: adapters that PEFT loads as its own, and PEFT's that we load.

Issue 26 acceptance: ours -> PEFT and PEFT -> ours give the same logits (1e-6 in float32,
1e-2 in bfloat16) for q,v and all-linear targets, r in {1, 8, 64}, rsLoRA on and off,
after merging too, on random-initialised transformers LlamaForCausalLM and GPT2LMHeadModel
(hidden 64, 2 layers; GPT-2's Conv1D layers are converted to Linears on our side, see
minituner.hf.convert) and MiniGPT (PEFT wraps it as minituner.hf.MiniGPTForCausalLM).
The hostile-folder cases are in test_peft_hostile.py.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from minituner.hf import MiniGPTConfig, MiniGPTForCausalLM, conv1d_to_linear  # noqa: E402
from minituner.lora.adapter_io import load_adapter, save_adapter  # noqa: E402
from minituner.lora.inject import add_lora, lora_layers, merge_lora  # noqa: E402
from minituner.lora.peft_format import (  # noqa: E402
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    peft_targets,
)
from minituner.minigpt.model import GPTConfig, MiniGPT  # noqa: E402

VOCAB = 50
# the model kinds, their attention (q,v) and all-linear targets (attribute names)
TARGETS = {
    "llama": {
        "qv": ["q_proj", "v_proj"],
        "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
    "gpt2": {"qv": ["c_attn"], "all": ["c_attn", "c_proj", "c_fc"]},  # q,k,v fused in c_attn
    "minigpt": {
        "qv": ["q_proj", "v_proj"],
        "all": ["q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"],
    },
}


def hf_base(kind: str, seed: int = 0):
    """A random-initialised transformers model (hidden 64, 2 layers), eval mode."""
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(cfg).eval()
    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64
        )
        return transformers.GPT2LMHeadModel(cfg).eval()
    gpt = GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=64)
    return MiniGPTForCausalLM(MiniGPTConfig.from_gpt_config(gpt)).eval()


def ours_of(kind: str, base) -> torch.nn.Module:
    """Our side's model with the same weights: MiniGPT itself, or the transformers model
    (GPT-2's Conv1Ds converted to Linears)."""
    if kind == "minigpt":
        model = MiniGPT(base.config.gpt_config())
        model.load_state_dict(base.state_dict())
        return model.eval()
    model = copy.deepcopy(base)
    if kind == "gpt2":
        assert conv1d_to_linear(model)
    return model


def logits(model, x):
    out = model(x)
    return (out if isinstance(out, torch.Tensor) else out.logits).float()


def fill(tensors, seed: int, r: int = 8, scaling: float = 2.0):
    """Nonzero A and B (a fresh B is zero and would hide every bug) whose update
    scaling·B·A has entries of about 0.01, the size of a trained one (W's are ~0.02)."""
    std = (0.01 / (scaling * r**0.5)) ** 0.5
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=g) * std)


def scale_of(r: int, alpha: float, rslora: bool) -> float:
    return alpha / (r**0.5 if rslora else r)


def ids(seed: int = 1):
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(seed))


CASES = [
    (kind, targets, r, rslora)
    for kind in TARGETS
    for targets in ("qv", "all")
    for r in (1, 8, 64)
    for rslora in (False, True)
]


@pytest.mark.parametrize(("kind", "targets", "r", "rslora"), CASES)
def test_ours_to_peft_gives_the_same_logits_merged_and_not(tmp_path, kind, targets, r, rslora):
    base = hf_base(kind)
    ours = ours_of(kind, base)
    add_lora(ours, TARGETS[kind][targets], r=r, alpha=2 * r, rslora=rslora)
    lora = [t for m in lora_layers(ours).values() for t in (m.lora_A, m.lora_B)]
    fill(lora, seed=r, r=r, scaling=scale_of(r, 2 * r, rslora))
    save_adapter(tmp_path, ours, format="peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    x = ids()
    torch.testing.assert_close(logits(ours, x), logits(theirs, x), atol=1e-6, rtol=0)
    assert not torch.allclose(logits(ours, x), logits(base, x), atol=1e-3)  # it did something
    merged_ours, merged_theirs = merge_lora(ours), theirs.merge_and_unload()
    torch.testing.assert_close(logits(merged_ours, x), logits(merged_theirs, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kind", "targets", "r", "rslora"), CASES)
def test_peft_to_ours_gives_the_same_logits_merged_and_not(tmp_path, kind, targets, r, rslora):
    base = hf_base(kind)
    cfg = peft.LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=TARGETS[kind][targets], use_rslora=rslora,
        fan_in_fan_out=kind == "gpt2",
    )  # fmt: skip
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg).eval()
    lora = [p for n, p in theirs.named_parameters() if "lora_" in n]
    fill(lora, seed=r + 1, r=r, scaling=scale_of(r, 2 * r, rslora))
    theirs.save_pretrained(tmp_path)
    assert (tmp_path / PEFT_WEIGHTS).exists()
    ours = ours_of(kind, base)
    meta = load_adapter(tmp_path, ours)
    assert meta["format"] == "peft" and len(meta["modules"]) == len(lora_layers(ours))
    x = ids()
    torch.testing.assert_close(logits(ours, x), logits(theirs, x), atol=1e-6, rtol=0)
    merged_ours, merged_theirs = merge_lora(ours), theirs.merge_and_unload()
    torch.testing.assert_close(logits(merged_ours, x), logits(merged_theirs, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kind", "targets", "r", "rslora"), CASES)
def test_both_ways_in_bfloat16_within_1e_2(tmp_path, kind, targets, r, rslora):
    """The float32 grid again in bfloat16 (q,v and all-linear, r in {1, 8, 64}, rsLoRA on
    and off, merged too), within the issue's 1e-2."""
    base = hf_base(kind).to(torch.bfloat16)
    ours = ours_of(kind, base)
    add_lora(ours, TARGETS[kind][targets], r=r, alpha=16, rslora=rslora)
    fill([t for m in lora_layers(ours).values() for t in (m.lora_A, m.lora_B)], seed=3)
    save_adapter(tmp_path / "ours", ours, format="peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    x = ids()
    torch.testing.assert_close(logits(ours, x), logits(theirs, x), atol=1e-2, rtol=0)
    theirs.save_pretrained(tmp_path / "theirs")
    back = ours_of(kind, base)
    load_adapter(tmp_path / "theirs", back)
    torch.testing.assert_close(logits(back, x), logits(theirs, x), atol=1e-2, rtol=0)
    torch.testing.assert_close(
        logits(merge_lora(back), x), logits(theirs.merge_and_unload(), x), atol=1e-2, rtol=0
    )


def test_the_written_config_is_peft_s_and_names_gpt2_s_transposed_layers(tmp_path):
    ours = ours_of("gpt2", hf_base("gpt2"))
    add_lora(ours, ["c_attn"], r=4, alpha=8, rslora=True)
    save_adapter(tmp_path, ours, format="peft", base_model="tiny-gpt2")
    meta = json.loads((tmp_path / PEFT_CONFIG).read_text())
    assert meta["peft_type"] == "LORA" and meta["task_type"] == "CAUSAL_LM"
    assert (meta["r"], meta["lora_alpha"], meta["use_rslora"]) == (4, 8.0, True)
    assert meta["target_modules"] == ["c_attn"] and meta["fan_in_fan_out"] is True
    assert meta["bias"] == "none" and meta["base_model_name_or_path"] == "tiny-gpt2"
    cfg = peft.LoraConfig.from_pretrained(tmp_path)  # PEFT reads every field it needs
    assert cfg.r == 4 and cfg.use_rslora and set(cfg.target_modules) == {"c_attn"}
    keys = set(transformers.modeling_utils.load_state_dict(str(tmp_path / PEFT_WEIGHTS)))
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys


def test_a_partial_selection_is_written_as_full_paths(tmp_path):
    ours = MiniGPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)).eval()
    add_lora(ours, ["blocks.1.attn.q_proj"], r=2, alpha=4)
    save_adapter(tmp_path, ours, format="peft")
    meta = json.loads((tmp_path / PEFT_CONFIG).read_text())
    assert meta["target_modules"] == ["blocks.1.attn.q_proj"]
    assert peft_targets(ours, meta["target_modules"]) == {"blocks.1.attn.q_proj"}


def test_layers_with_different_settings_cannot_be_written_as_peft(tmp_path):
    ours = MiniGPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)).eval()
    add_lora(ours, ["q"], r=2, alpha=4)
    add_lora(ours, ["v"], r=4, alpha=4)
    with pytest.raises(ValueError, match=r"one r for every layer.*format='own'"):
        save_adapter(tmp_path, ours, format="peft")
    assert not (tmp_path / PEFT_CONFIG).exists()
    with pytest.raises(ValueError, match="unknown adapter format 'hf'"):
        save_adapter(tmp_path, ours, format="hf")


def test_all_linear_and_regular_expression_targets_select_as_peft_does():
    model = hf_base("llama")
    every = peft_targets(model, "all-linear")
    assert "lm_head" not in every and len(every) == 2 * 7
    assert peft_targets(model, r".*\.0\.self_attn\.q_proj") == {"model.layers.0.self_attn.q_proj"}
    assert peft_targets(model, ["q_proj"]) == {f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)}


@settings(max_examples=25, deadline=None)
@given(
    names=st.sets(st.sampled_from(TARGETS["minigpt"]["all"]), min_size=1),
    r=st.integers(1, 16),
    alpha=st.floats(0.5, 32),
    rslora=st.booleans(),
    dropout=st.sampled_from([0.0, 0.1]),
    fmt=st.sampled_from(["own", "peft"]),
)
def test_any_adapter_round_trips_exactly_in_either_format(
    tmp_path_factory, names, r, alpha, rslora, dropout, fmt
):
    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    ours = MiniGPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)).eval()
    fresh = copy.deepcopy(ours)
    add_lora(ours, sorted(names), r=r, alpha=alpha, rslora=rslora, dropout=dropout)
    lora = [t for m in lora_layers(ours).values() for t in (m.lora_A, m.lora_B)]
    fill(lora, seed=r, r=r, scaling=scale_of(r, alpha, rslora))
    save_adapter(folder, ours, format=fmt)
    load_adapter(folder, fresh)
    a, b = lora_layers(ours), lora_layers(fresh)
    assert a.keys() == b.keys()
    for p in a:
        assert torch.equal(a[p].lora_A, b[p].lora_A) and torch.equal(a[p].lora_B, b[p].lora_B)
        assert (b[p].r, b[p].alpha, b[p].rslora, b[p].dropout) == (r, alpha, rslora, dropout)
    x = ids()
    assert torch.equal(logits(ours.eval(), x), logits(fresh.eval(), x))  # new layers train
