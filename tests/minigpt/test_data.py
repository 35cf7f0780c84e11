"""Batches (minituner.minigpt.data): each sequence is BOS + text + EOS, right-padded; a
batch's targets are its inputs shifted by one, IGNORE after a row's end and, for cloze
pairs, everywhere before the answer; what a fine-tuning config trains on, with replay
of regular-verb pairs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.finetune.config import FinetuneConfig
from minituner.minigpt.corpus import ClozeExample, replay_pool
from minituner.minigpt.data import (
    IGNORE,
    EncodedLines,
    encode_cloze,
    encode_lines,
    replay_count,
    training_examples,
)
from minituner.minigpt.tokenizer import CharTokenizer
from minituner.minigpt.verbs import REGULAR_VERBS

TOK = CharTokenizer("\nabcdefghijklmnopqrstuvwxyz _.=")


def _filled(e) -> str:
    return e.prompt.replace("__", e.answer)


# ------------------------------------------------------------------ replay
@pytest.mark.parametrize("share", [0.05, 0.1, 0.25, 0.5])
def test_replay_mixes_its_share_of_regular_pairs(corpus, share):
    data = training_examples(corpus, FinetuneConfig(replay=share))
    regular = [e for e in data if e.verb in REGULAR_VERBS]
    assert data[: len(corpus.finetune_train)] == corpus.finetune_train  # the main pairs, kept
    assert len(regular) == len(data) - len(corpus.finetune_train)
    assert abs(len(regular) / len(data) - share) <= 1 / len(data)
    assert all(e.tense == "past" for e in regular)
    assert len(set(regular)) == len(regular)  # no repeats while the pool lasts


def test_replay_zero_trains_on_the_irregular_pairs_alone(corpus):
    assert training_examples(corpus, FinetuneConfig()) == corpus.finetune_train
    assert replay_count(512, 0.0) == 0 and replay_count(512, 0.25) == 171


def test_replay_never_trains_on_what_measures_forgetting(corpus):
    pool = replay_pool(corpus)
    tested = {e.prompt for e in corpus.regular_cloze_test}
    control = set(corpus.control_en)
    # each regular verb's 250 past combos, less regular_cloze_test, control_en and control_es
    assert len(pool) == 12 * (250 - 20 - 10 - 5)
    assert not tested & {e.prompt for e in pool}
    assert not control & {_filled(e) for e in pool}
    # nor does a replay run: every regular pair it trains on is from the pool
    data = training_examples(corpus, FinetuneConfig(replay=0.5, seed=3))
    assert {e for e in data if e.verb in REGULAR_VERBS} <= set(pool)


def test_replay_is_seeded(corpus):
    def regular(seed):
        cfg = FinetuneConfig(replay=0.1, seed=seed)
        return [e for e in training_examples(corpus, cfg) if e.verb in REGULAR_VERBS]

    assert regular(0) == regular(0)
    assert regular(0) != regular(1)
    assert len(set(e.verb for e in regular(0))) > 6  # a sample across the verbs


def test_replay_beyond_the_pool_cycles_through_it(corpus):
    data = training_examples(corpus, FinetuneConfig(replay=0.9))
    regular = [e for e in data if e.verb in REGULAR_VERBS]
    assert len(regular) == replay_count(512, 0.9) > len(replay_pool(corpus))
    assert set(regular) == set(replay_pool(corpus))


# ------------------------------------------------------------------ encoding and batches
lines_st = st.lists(st.text("abcz _.", max_size=20), min_size=1, max_size=8)


def test_lines_are_bos_text_eos_right_padded():
    enc = encode_lines(TOK, ["ab", "", "abcd"])
    assert len(enc) == 3 and enc.max_len == 6
    assert enc.tokens.shape == (3, 6) and enc.tokens.dtype == torch.long
    assert enc.lengths.tolist() == [4, 2, 6]
    assert TOK.decode(enc.tokens[0].tolist()) == "\nab\n\n\n"  # padded with the newline, 0
    assert TOK.decode(enc.tokens[2].tolist()) == "\nabcd\n"
    assert enc.loss_from.tolist() == [0, 0, 0]


def test_no_sequence_is_refused():
    with pytest.raises(ValueError, match="no sequences"):
        EncodedLines([])


@settings(max_examples=60, deadline=None)
@given(lines_st, st.data())
def test_a_batch_is_its_sequences_shifted_and_masked_after_each_end(lines, data):
    enc = encode_lines(TOK, lines)
    idx = torch.tensor(data.draw(st.lists(st.integers(0, len(lines) - 1), min_size=1)))
    x, y = enc.batch(idx)
    T = max(len(lines[i]) for i in idx.tolist()) + 2  # the batch's own longest row
    assert x.shape == y.shape == (len(idx), T - 1)  # (B, T-1)
    for row, i in enumerate(idx.tolist()):
        full = [0, *TOK.encode(lines[i]), 0]
        n = len(full) - 1  # every character after the BOS, the EOS included
        assert x[row, :n].tolist() == full[:-1]
        assert y[row, :n].tolist() == full[1:]
        assert (y[row, n:] == IGNORE).all()
    assert int((y != IGNORE).sum()) == sum(len(lines[i]) + 1 for i in idx.tolist())


def _example(prompt: str, answer: str) -> ClozeExample:
    return ClozeExample(prompt=prompt, answer=answer, verb="go", tense="past", person="3s")


def test_cloze_targets_are_only_the_answer():
    examples = [_example("a __ b.", "went"), _example("zz __.", "be")]
    enc = encode_cloze(TOK, examples)
    x, y = enc.batch(torch.arange(2))
    assert x.shape == y.shape == (2, enc.max_len - 1)
    for row, e in enumerate(examples):
        kept = y[row][y[row] != IGNORE].tolist()
        assert TOK.decode(kept) == " " + e.answer + "\n"
        prompt = "\n" + e.prompt + " ="
        assert TOK.decode(x[row, : len(prompt)].tolist()) == prompt
        first = int((y[row] != IGNORE).nonzero()[0])
        assert first == len(prompt) - 1  # the target at the last prompt character is " "
    assert enc.loss_from.tolist() == [len("\na __ b. ="), len("\nzz __. =")]


def test_a_character_outside_the_vocabulary_is_named():
    with pytest.raises(ValueError, match="'Q'"):
        encode_lines(TOK, ["aQ"])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10_000), st.floats(0.0, 0.95))
def test_replay_count_makes_its_share_of_the_whole(n_main, share):
    n = replay_count(n_main, share)
    assert n >= 0
    assert abs(n / (n_main + n) - share) <= 1 / (n_main + n) + 1e-12
