"""Turning lines and cloze pairs into padded (x, y) batches.

Every sequence is ``"\\n" + text + "\\n"`` (the newline doubles as BOS and EOS). Batches
are right-padded: causal attention means padding after a sequence cannot change the
logits inside it, and padded targets are IGNORE so the loss skips them.

:func:`training_examples` is what a fine-tuning config trains on: the corpus's
irregular cloze pairs, or a taught verb's (:mod:`minituner.minigpt.teach`), plus the replayed
regular-verb pairs its ``replay`` share asks for.
"""

from __future__ import annotations

import random

import torch

from minituner.minigpt.corpus import ClozeExample, Corpus, cloze_input, replay_pool
from minituner.minigpt.tokenizer import CharTokenizer

IGNORE = -100


class EncodedLines:
    """A list of token sequences stored as one padded tensor, with a per-sequence index
    of the first target position that counts in the loss (0: every position)."""

    def __init__(self, seqs: list[list[int]], loss_from: list[int] | None = None):
        if not seqs:
            raise ValueError("no sequences to encode")
        self.lengths = torch.tensor([len(s) for s in seqs])
        T = int(self.lengths.max())
        self.tokens = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, s in enumerate(seqs):
            self.tokens[i, : len(s)] = torch.tensor(s)
        self.loss_from = torch.tensor(loss_from if loss_from is not None else [0] * len(seqs))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return int(self.lengths.max())

    def to(self, device) -> EncodedLines:
        self.tokens = self.tokens.to(device)
        self.lengths = self.lengths.to(device)
        self.loss_from = self.loss_from.to(device)
        return self

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x (B, T-1) and targets y (B, T-1) for sequence indices ``idx``."""
        lengths = self.lengths[idx]
        T = int(lengths.max())
        seq = self.tokens[idx, :T]  # (B, T)
        x, y = seq[:, :-1], seq[:, 1:].clone()
        pos = torch.arange(1, T, device=seq.device)[None, :]  # position of each target
        keep = (pos < lengths[:, None]) & (pos >= self.loss_from[idx][:, None])
        y[~keep] = IGNORE
        return x, y


def encode_lines(tok: CharTokenizer, lines: list[str]) -> EncodedLines:
    """Plain text lines; the loss covers every character after the BOS."""
    return EncodedLines([[0] + tok.encode(line) + [0] for line in lines])


def encode_cloze(tok: CharTokenizer, examples: list[ClozeExample]) -> EncodedLines:
    """Cloze pairs with the loss masked to the answer: only the characters of
    ``" went\\n"`` are predicted, never the prompt."""
    seqs, starts = [], []
    for e in examples:
        prompt = [0] + tok.encode(cloze_input(e.prompt))
        answer = tok.encode(" " + e.answer) + [0]
        seqs.append(prompt + answer)
        starts.append(len(prompt))  # first target position that is part of the answer
    return EncodedLines(seqs, starts)


def replay_count(n_main: int, share: float) -> int:
    """How many replayed pairs make ``share`` of ``n_main`` + them (rounded)."""
    return round(n_main * share / (1.0 - share))


def training_examples(corpus: Corpus, cfg) -> list[ClozeExample]:
    """The cloze pairs a fine-tuning config (a FinetuneConfig) trains on, in a fixed
    order (batches are drawn from it at random, seeded).

    The main pairs are ``corpus.finetune_train`` (the 8 irregular verbs), or for
    ``cfg.teach`` the taught verb's pairs plus as many irregular ones
    (:func:`minituner.minigpt.teach.teach_examples`). With ``cfg.replay`` = s > 0, regular-verb
    pairs from the pretraining pool (:func:`minituner.minigpt.corpus.replay_pool`, disjoint from
    regular_cloze_test and control_en) are added until they are a share s of the whole
    (rounded): a seeded sample (seed ``cfg.seed``) without repeats while the pool lasts
    (2,580 pairs: s up to 0.83 with the 512 irregular pairs), then cycling through it.
    """
    if cfg.teach:
        from minituner.minigpt.teach import TeachVerb, teach_examples, teach_split

        split = teach_split(TeachVerb.parse(cfg.teach), corpus.config)
        main = teach_examples(split, corpus, cfg.seed)
    else:
        main = list(corpus.finetune_train)
    n = replay_count(len(main), cfg.replay) if cfg.replay else 0
    if n == 0:
        return main
    pool = replay_pool(corpus)
    random.Random(f"replay-{cfg.seed}").shuffle(pool)
    return main + [pool[i % len(pool)] for i in range(n)]
