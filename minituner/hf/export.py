"""A MiniGPT base and a stored run, written as folders that transformers and PEFT load.

:func:`export_model` writes one MiniGPT in transformers' layout: ``config.json``
(model_type "minigpt", with an ``auto_map`` for ``trust_remote_code``),
``model.safetensors`` (MiniGPT's own keys), ``generation_config.json`` (greedy, the
newline as end), the character tokenizer (``tokenizer.json``, read by minituner's
``CharTokenizer`` and by :class:`~minituner.hf.tokenizer.MiniGPTTokenizer` through
``tokenizer_config.json``) and ``modeling_minigpt.py`` (the classes, imported from
minituner, so that ``AutoModelForCausalLM`` and ``AutoTokenizer`` find them with
``trust_remote_code=True``; ``import minituner.hf`` registers them without it).

:func:`export_run` turns a stored run into

* ``format="peft"``: ``base/`` (the model the adapter was trained on) and ``adapter/``
  (PEFT's layout, :mod:`minituner.lora.peft_format`), for
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)``.
  A QLoRA run trained on a 4-bit base, so its ``base/`` holds that base's dequantized
  weights (float32, exactly what its NF4 layers compute with): the answers stay the same.
* ``format="merged"``: one model with ΔW folded in (LoRA, QLoRA, and full fine-tunes).

Nothing is overwritten: the folder must be new or empty.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn as nn

from minituner.finetune.result import Base
from minituner.hf.modeling import MiniGPTConfig, MiniGPTForCausalLM
from minituner.hf.tokenizer import VOCAB_FILE, MiniGPTTokenizer
from minituner.io import atomic_write_text
from minituner.lora.adapter_io import save_adapter
from minituner.lora.inject import linear_layers, lora_layers, merge_lora
from minituner.store.runs import RunInfo, RunStore

EXPORT_FORMATS = ("peft", "merged")
REMOTE_CODE = "modeling_minigpt.py"
_REMOTE_SOURCE = '''"""MiniGPT for transformers' trust_remote_code (written by `minituner export`).

Needs minituner with its hf extra installed: pip install "minituner[hf]".
"""

from minituner.hf.modeling import MiniGPTConfig, MiniGPTForCausalLM  # noqa: F401
from minituner.hf.tokenizer import MiniGPTTokenizer  # noqa: F401
'''


def hf_model(model: nn.Module) -> MiniGPTForCausalLM:
    """A :class:`MiniGPTForCausalLM` holding a copy of a plain MiniGPT's weights (eval)."""
    out = MiniGPTForCausalLM(MiniGPTConfig.from_gpt_config(model.config))
    out.load_state_dict(model.state_dict())
    return out.eval()


def _check_new(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} exists and is not an empty folder; export into a new one")


def export_model(model: nn.Module, tok, folder: str | os.PathLike) -> Path:
    """Write a plain MiniGPT (``model``) with tokenizer ``tok`` into ``folder`` in
    transformers' layout (the module docstring lists the files); return the folder.

    Raises:
        ValueError: ``folder`` exists and is not empty, or ``model`` is not a plain MiniGPT
            (one with LoRA or 4-bit layers: merge or dequantize it first).
    """
    out = Path(folder)
    _check_new(out)
    if lora_layers(model) or any(hasattr(m, "dequantize_weight") for m in model.modules()):
        raise ValueError("export_model needs a plain MiniGPT: merge LoRA, dequantize NF4 first")
    hf = hf_model(model)
    hf.config.auto_map = {
        "AutoConfig": "modeling_minigpt.MiniGPTConfig",
        "AutoModelForCausalLM": "modeling_minigpt.MiniGPTForCausalLM",
    }
    hf.generation_config.do_sample = False
    hf.generation_config.eos_token_id = tok.newline_id
    hf.generation_config.pad_token_id = tok.newline_id
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    tok.save(out / VOCAB_FILE)
    hf_tok = MiniGPTTokenizer(out / VOCAB_FILE, model_max_length=model.config.block_size)
    hf_tok.init_kwargs["auto_map"] = {"AutoTokenizer": ["modeling_minigpt.MiniGPTTokenizer", None]}
    hf_tok.save_pretrained(out)  # tokenizer_config.json (and tokenizer.json once more)
    atomic_write_text(out / REMOTE_CODE, _REMOTE_SOURCE)
    return out


@torch.no_grad()
def dequantized_base(tuned: nn.Module, base: Base) -> nn.Module:
    """The base model a run's adapter sits on, as a plain float MiniGPT: ``base.model``
    with every 4-bit layer of ``tuned`` (NF4, under LoRA or not) dequantized in its place,
    so that it computes what the run's frozen layers compute."""
    out = copy.deepcopy(base.model).eval()
    plain, lora = linear_layers(tuned)
    frozen = {**plain, **{p: layer.base for p, layer in lora.items()}}
    for path, module in frozen.items():
        if not isinstance(module, nn.Linear):  # a 4-bit layer
            target = out.get_submodule(path)
            target.weight.copy_(module.dequantize_weight().to(target.weight.dtype))
    return out


def export_run(
    info: RunInfo, base: Base, folder: str | os.PathLike, format: str = "peft", store=None
) -> dict[str, Path]:
    """Export a stored run (see the module docstring); return the folders written by name
    ({"base", "adapter"} or {"model"}).

    Raises:
        ValueError: an unknown format, a full fine-tune asked for as "peft" (it has no
            adapter), a run stored without weights, a folder that is not new or empty.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(
            f"unknown export format {format!r}; choose one of: {', '.join(EXPORT_FORMATS)}"
        )
    cfg = info.finetune_config()
    if format == "peft" and cfg.method == "full":
        raise ValueError(
            f"run {info.run_id} is a full fine-tune: it has no adapter for PEFT; "
            "export it with --format merged"
        )
    out = Path(folder)
    _check_new(out)
    tuned = (store or RunStore()).load_model(info, base)  # checks the run against the base
    if format == "merged":
        return {"model": export_model(merge_lora(tuned), base.tok, out)}
    base_dir = export_model(dequantized_base(tuned, base), base.tok, out / "base")
    adapter_dir = save_adapter(
        out / "adapter", tuned, format="peft", base_model=str(base_dir.resolve())
    )
    return {"base": base_dir, "adapter": adapter_dir}
