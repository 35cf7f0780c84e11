"""Character tokenizer: one id per character seen in the corpus.

The newline is id 0: it starts every sequence (BOS), ends every line (EOS) and pads
batches (padded targets are masked out of the loss).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from minituner.io import atomic_write_text, read_json

NEWLINE = "\n"


class CharTokenizer:
    def __init__(self, chars: list[str] | str):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer vocabulary has duplicate characters")
        if any(len(c) != 1 for c in chars):
            raise ValueError("tokenizer vocabulary entries must be single characters")
        if NEWLINE in chars:
            chars.remove(NEWLINE)
        self.chars = [NEWLINE] + chars
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def newline_id(self) -> int:
        return 0

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of ``text`` outside the vocabulary, in order of appearance."""
        seen: dict[str, None] = {}
        for ch in text:
            if ch not in self.stoi:
                seen.setdefault(ch, None)
        return list(seen)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``.

        Raises:
            ValueError: if ``text`` holds a character outside the vocabulary; the message
                names it (e.g. ``'?'``), since a user typing a prompt will see it.
        """
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            bad = self.unknown_chars(text)
            shown = ", ".join(repr(c) for c in bad)
            raise ValueError(
                f"character{'s' if len(bad) > 1 else ''} {shown} not in the model's vocabulary "
                f"(it knows only the {self.vocab_size} characters of its training corpus)"
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """Load a tokenizer JSON file.

        Raises:
            ValueError: if the file is missing or is not a tokenizer file.
        """
        path = Path(path)
        data = read_json(path)  # a regular file, size-capped, depth-limited; names the file
        try:
            if data.get("type") != "char" or not isinstance(data.get("chars"), list):
                raise ValueError("not a character tokenizer file")
            return cls(data["chars"])
        except (ValueError, AttributeError, TypeError) as e:
            raise ValueError(f"tokenizer file {path} is corrupt: {e}") from None
