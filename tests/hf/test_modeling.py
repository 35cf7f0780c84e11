"""minituner.hf.modeling: MiniGPT as a transformers model computes what MiniGPT computes,
saves and loads in transformers' layout (registered or as remote code), and batches
left-padded prompts without one row changing another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from minituner.hf import MiniGPTConfig  # noqa: E402
from minituner.hf.export import hf_model  # noqa: E402
from minituner.minigpt.model import GPTConfig, MiniGPT  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def tiny() -> MiniGPT:
    torch.manual_seed(0)
    return MiniGPT(GPTConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


def test_the_wrapper_has_minigpt_s_keys_and_logits():
    ours = tiny()
    hf = hf_model(ours)
    assert hf.state_dict().keys() == ours.state_dict().keys()
    assert hf.lm_head.weight is hf.tok_emb.weight  # tied, as in MiniGPT
    x = torch.randint(0, 30, (3, 20), generator=torch.Generator().manual_seed(1))
    assert torch.equal(hf(x).logits, ours(x))


def test_config_round_trips_and_checks_like_gptconfig():
    gpt = GPTConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=32)
    cfg = MiniGPTConfig.from_gpt_config(gpt)
    assert cfg.gpt_config() == gpt and cfg.model_type == "minigpt"
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (0, 0, 0)
    assert MiniGPTConfig.from_dict(cfg.to_dict()).gpt_config() == gpt
    with pytest.raises(ValueError, match="divisible by n_head"):
        MiniGPTConfig(n_embd=30, n_head=4)


@pytest.mark.parametrize("remote_code", [False, True])
def test_save_pretrained_loads_with_auto_classes(tmp_path, remote_code):
    from minituner.hf.export import export_model
    from minituner.minigpt.tokenizer import CharTokenizer

    ours = tiny()
    export_model(ours, CharTokenizer("abcdefghijklmnopqrstuvwxyz .,"), tmp_path / "m")
    kw = {"trust_remote_code": True} if remote_code else {}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", **kw).eval()
    assert type(loaded).__name__ == "MiniGPTForCausalLM"
    x = torch.randint(0, 30, (2, 10), generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded(x).logits, ours(x))


def test_greedy_generate_continues_as_minigpt_does():
    ours = tiny()
    hf = hf_model(ours)
    x = torch.tensor([[0, 5, 6, 7]])
    mine = ours.generate(x, 10)  # greedy, no stop token
    theirs = hf.generate(input_ids=x, max_new_tokens=10, eos_token_id=None, do_sample=False)
    assert torch.equal(theirs, mine)


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 20), min_size=2, max_size=5), seed=st.integers(0, 99))
def test_a_left_padded_row_computes_what_it_computes_alone(lengths, seed):
    hf = hf_model(tiny())
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, 30, (n,), generator=g) for n in lengths]
    T = max(lengths)
    ids = torch.stack([torch.cat([torch.zeros(T - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.arange(T) >= T - len(r) for r in rows]).long()
    batched = hf(ids, attention_mask=mask).logits
    assert torch.isfinite(batched).all()
    for i, r in enumerate(rows):
        alone = hf(r[None]).logits[0]
        torch.testing.assert_close(batched[i, T - len(r) :], alone, atol=1e-5, rtol=1e-5)


def test_labels_give_the_shifted_cross_entropy_and_long_inputs_are_refused():
    hf = hf_model(tiny())
    x = torch.randint(0, 30, (2, 12), generator=torch.Generator().manual_seed(3))
    out = hf(x, labels=x)
    want = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 30), x[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(out.loss, want)
    with pytest.raises(ValueError, match="block_size"):
        hf(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        hf(torch.zeros(1, 33, dtype=torch.long), attention_mask=torch.ones(1, 33).tril()[0:1])


def test_only_minituner_hf_imports_transformers_or_peft():
    for path in (ROOT / "minituner").rglob("*.py"):
        if "hf" in path.relative_to(ROOT / "minituner").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )  # fmt: skip
            top = {n.split(".")[0] for n in names}
            assert not top & {"transformers", "peft"}, f"{path} imports {top}"
