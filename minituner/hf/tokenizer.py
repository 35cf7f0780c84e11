"""MiniGPT's character tokenizer as a transformers tokenizer (:class:`MiniGPTTokenizer`).

One token per character of the corpus; the newline (id 0) is BOS, EOS and padding, and
every encoded text starts with it (as MiniGPT's training lines do). The vocabulary file is
minituner's own ``tokenizer.json`` (:class:`~minituner.minigpt.tokenizer.CharTokenizer`),
so an exported folder holds one tokenizer file for both libraries. A character outside
the vocabulary is refused with its name, never dropped or mapped to an unknown token.
Padding is on the left, as ``generate`` needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedTokenizer

from minituner.minigpt.tokenizer import NEWLINE, CharTokenizer

VOCAB_FILE = "tokenizer.json"


class MiniGPTTokenizer(PreTrainedTokenizer):
    """transformers' face of :class:`CharTokenizer` (same ids, same file)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | os.PathLike, **kwargs):
        self.chars = CharTokenizer.load(vocab_file)
        for key in ("bos_token", "eos_token", "pad_token"):
            kwargs.setdefault(key, NEWLINE)
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return self.chars.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self.chars.stoi)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        self.chars.encode(text)  # names a character outside the vocabulary
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.chars.stoi[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self.chars.chars[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def build_inputs_with_special_tokens(self, ids, pair=None) -> list[int]:
        return [self.chars.newline_id, *ids, *(pair or [])]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None):
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE
        path = Path(save_directory) / name
        self.chars.save(path)
        return (str(path),)
