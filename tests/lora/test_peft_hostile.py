"""minituner.lora.peft_format: a hostile or unsupported PEFT adapter folder is one clear
error and loads nothing (issue 26 acceptance: wrong shapes, missing keys, extra keys, NaN
values, another base's module names, a pickle .bin instead of safetensors; and the PEFT
features these layers do not compute: DoRA, modules_to_save, other adapter types, biases,
non-uniform rank or alpha patterns)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from minituner.lora.adapter_io import load_adapter, save_adapter
from minituner.lora.inject import add_lora, lora_layers
from minituner.lora.peft_format import PEFT_CONFIG, PEFT_PICKLE, PEFT_WEIGHTS
from minituner.minigpt.model import GPTConfig, MiniGPT

KEY = "base_model.model.blocks.0.attn.q_proj.lora_{}.weight"


def model() -> MiniGPT:
    torch.manual_seed(0)
    return MiniGPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture
def folder(tmp_path):
    """A valid PEFT adapter (q and v of a 2-layer MiniGPT, r=4) that each case damages."""
    m = model()
    add_lora(m, ["q", "v"], r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.normal_()
    return save_adapter(tmp_path / "adapter", m, format="peft")


def edit_tensors(folder, change):
    tensors = load_file(folder / PEFT_WEIGHTS)
    change(tensors)
    save_file({k: t.clone() for k, t in tensors.items()}, folder / PEFT_WEIGHTS)


def edit_config(folder, **values):
    meta = json.loads((folder / PEFT_CONFIG).read_text())
    meta.update(values)
    (folder / PEFT_CONFIG).write_text(json.dumps(meta))


def _pickle_instead(folder):
    (folder / PEFT_WEIGHTS).unlink()
    marker = folder / "pwned"
    # protocol 0: os.system("touch <marker>") when unpickled; it must never run
    (folder / PEFT_PICKLE).write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())


def _other_base(folder):
    def rename(t):
        for k in list(t):
            t[k.replace("blocks.", "model.layers.").replace(".attn.", ".self_attn.")] = t.pop(k)

    edit_tensors(folder, rename)


HOSTILE = {
    "wrong shape": (
        lambda f: edit_tensors(f, lambda t: t.update({KEY.format("A"): torch.zeros(4, 31)})),
        r"q_proj: adapter lora_A is \(4, 31\), model expects \(4, 32\)",
    ),
    "r disagrees with the config": (
        lambda f: edit_tensors(f, lambda t: t.update({KEY.format("B"): torch.zeros(32, 3)})),
        r"with r=4 they must be",
    ),
    "missing B": (lambda f: edit_tensors(f, lambda t: t.pop(KEY.format("B"))), "has no lora_B"),
    "missing layer": (
        lambda f: edit_tensors(f, lambda t: [t.pop(KEY.format(x)) for x in "AB"]),
        r"target_modules selects blocks.0.attn.q_proj but the file has no tensors there",
    ),
    "extra key": (
        lambda f: edit_tensors(f, lambda t: t.update({"base_model.model.ln_f.weight": t[KEY.format("A")][0]})),
        r"holds base_model.model.ln_f.weight, which is not a LoRA A or B",
    ),
    "extra layer": (
        lambda f: edit_tensors(
            f,
            lambda t: t.update({
                KEY.format("A").replace("q_proj", "k_proj"): t[KEY.format("A")],
                KEY.format("B").replace("q_proj", "k_proj"): t[KEY.format("B")],
            }),
        ),
        r"tensors for blocks.0.attn.k_proj, which target_modules excludes",
    ),
    "NaN": (
        lambda f: edit_tensors(f, lambda t: t[KEY.format("B")].__setitem__((0, 0), float("nan"))),
        r"lora_B.weight holds 1 NaN or infinite values",
    ),
    "inf": (
        lambda f: edit_tensors(f, lambda t: t[KEY.format("A")].__setitem__((1, 2), float("inf"))),
        r"lora_A.weight holds 1 NaN or infinite values",
    ),
    "integer tensor": (
        lambda f: edit_tensors(f, lambda t: t.update({KEY.format("A"): torch.ones(4, 32, dtype=torch.int64)})),
        r"not floating point",
    ),
    "another base's names": (_other_base, r"made for another model: MiniGPT has no model.layers.0.self_attn.q_proj"),
    "pickle instead of safetensors": (_pickle_instead, r"adapter_model.bin, a pickle: minituner never unpickles"),
    "DoRA": (lambda f: edit_config(f, use_dora=True), r"uses DoRA"),
    "modules_to_save": (lambda f: edit_config(f, modules_to_save=["lm_head"]), r"modules_to_save"),
    "another adapter type": (lambda f: edit_config(f, peft_type="IA3"), r"PEFT IA3 adapter; only LoRA"),
    "trained biases": (lambda f: edit_config(f, bias="all"), r"bias='all'"),
    "rank pattern": (lambda f: edit_config(f, rank_pattern={"v_proj": 8}), r"another rank"),
    "alpha pattern": (lambda f: edit_config(f, alpha_pattern={"q_proj": 2}), r"another alpha"),
    "layer selection": (lambda f: edit_config(f, layers_to_transform=[0]), r"layers_to_transform"),
    "bad r": (lambda f: edit_config(f, r="4"), r"whole number"),
    "bad targets": (lambda f: edit_config(f, target_modules=5), r"target_modules must be"),
    "broken json": (lambda f: (f / PEFT_CONFIG).write_text("{"), r"adapter_config.json"),
    "not safetensors": (lambda f: (f / PEFT_WEIGHTS).write_bytes(b"\x80\x04junk"), r"not a valid safetensors"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_peft_folder_is_one_clear_error_and_loads_nothing(folder, case):
    damage, message = HOSTILE[case]
    damage(folder)
    m = model()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=message) as info:
        load_adapter(folder, m)
    assert "\n" not in str(info.value)
    assert not lora_layers(m)  # nothing wrapped
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (folder / "pwned").exists()


def test_uniform_patterns_and_unknown_harmless_keys_still_load(folder):
    edit_config(folder, rank_pattern={"q_proj": 4}, alpha_pattern={"v_proj": 8}, eva_config=None)
    m = model()
    meta = load_adapter(folder, m)
    assert sorted(meta["modules"]) == [f"blocks.{i}.attn.{n}_proj" for i in (0, 1) for n in "qv"]


def test_a_model_that_already_has_other_lora_is_refused_with_what_differs(folder):
    m = model()
    add_lora(m, ["k"], r=4, alpha=8)
    with pytest.raises(
        ValueError, match=r"adapter has blocks.0.attn.q_proj but the model has no LoRA"
    ):
        load_adapter(folder, m)
