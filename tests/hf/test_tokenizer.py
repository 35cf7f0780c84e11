"""minituner.hf.tokenizer: the character tokenizer through transformers gives minituner's
ids (BOS newline first), pads on the left, refuses unknown characters by name, and loads
from an exported folder with AutoTokenizer (registered or as remote code)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from minituner.hf import MiniGPTTokenizer  # noqa: E402
from minituner.minigpt.tokenizer import CharTokenizer  # noqa: E402

CHARS = "abcdefghij =_."


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    CharTokenizer(CHARS).save(folder / "tokenizer.json")
    return folder


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=CHARS, max_size=40))
def test_ids_are_minituner_s_after_a_newline(files, text):
    ours = CharTokenizer.load(files / "tokenizer.json")
    tok = MiniGPTTokenizer(files / "tokenizer.json")
    ids = tok(text)["input_ids"]
    assert ids == [0] + ours.encode(text)
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_batches_pad_on_the_left_and_unknown_characters_are_named(files):
    tok = MiniGPTTokenizer(files / "tokenizer.json")
    enc = tok(["abc", "a"], padding=True)
    assert enc["input_ids"][1][:2] == [0, 0] and enc["attention_mask"][1] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="'Z' not in the model's vocabulary"):
        tok("aZ")


@pytest.mark.parametrize("remote_code", [False, True])
def test_auto_tokenizer_loads_an_exported_folder(tmp_path, remote_code):
    import torch

    from minituner.hf.export import export_model
    from minituner.minigpt.model import GPTConfig, MiniGPT

    ours = CharTokenizer(CHARS)
    model = MiniGPT(
        GPTConfig(vocab_size=ours.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8)
    )
    export_model(model, ours, tmp_path / "m")
    kw = {"trust_remote_code": True} if remote_code else {}
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m", **kw)
    assert type(tok).__name__ == "MiniGPTTokenizer" and tok.model_max_length == 16
    assert tok("abc =", return_tensors="pt")["input_ids"].equal(
        torch.tensor([[0] + ours.encode("abc =")])
    )
    assert CharTokenizer.load(tmp_path / "m" / "tokenizer.json").chars == ours.chars
