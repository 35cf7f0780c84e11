"""Evaluation (minituner.minigpt.evaluate): the shipped base model's figures recomputed and
equal to its metrics.json, accuracy by verb against a one-prompt-at-a-time recount,
prompts the model cannot answer refused before anything is computed, and perplexity and
candidate scores against a float64 recomputation from the logits."""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from minituner.finetune.result import load_base
from minituner.minigpt.corpus import CorpusConfig, build_corpus
from minituner.minigpt.evaluate import (
    candidate_logprobs,
    check_prompt,
    complete,
    drift,
    evaluate,
    greedy_answers,
    perplexity,
)
from minituner.minigpt.teach import TeachVerb, teach_split
from minituner.paths import base_dir

SWIM = TeachVerb("swim", "swam")


@pytest.fixture(scope="module")
def fbase():
    return load_base()


# ---------------------------------------------------------------- the shipped base model


@pytest.fixture(scope="module")
def shipped():
    metrics = json.loads((base_dir() / "metrics.json").read_text(encoding="utf-8"))
    return metrics


@pytest.fixture(scope="module")
def recomputed(base, shipped):
    corpus = build_corpus(CorpusConfig(**shipped["pretrain"]["corpus"]))
    return corpus, evaluate(base.model, base.tok, corpus)


def test_shipped_base_metrics_reproduce(base, shipped, recomputed):
    corpus, m = recomputed
    assert shipped["corpus_version"] == corpus.version
    assert base.cfg["corpus_version"] == corpus.version
    for k in ("irregular_accuracy", "overregularized_rate", "regular_accuracy"):
        assert m[k] == shipped[k], k  # exact: the same greedy answers
    assert m["irregular_accuracy_per_verb"] == shipped["irregular_accuracy_per_verb"]
    for k in ("control_en_ppl", "control_es_ppl"):
        assert m[k] == pytest.approx(shipped[k], rel=1e-6), k
    assert shipped["num_params"] == base.model.num_params()
    assert base.cfg["pretrain"] == shipped["pretrain"]


def test_shipped_base_has_the_regular_prior(shipped, recomputed):
    """The experiment needs a base model that mostly fails the irregular past (while it
    knows the regular past), and that over-regularizes."""
    _, m = recomputed
    assert m["regular_accuracy"] >= 0.90
    assert m["overregularized_rate"] > 0
    assert 0.05 <= m["irregular_accuracy"] <= 0.60, (
        f"irregular_accuracy {m['irregular_accuracy']:.3f} is outside [0.05, 0.60]: "
        "the base model has no clear regular-form prior"
    )


# ------------------------------------------------------------------ accuracy by verb
def test_per_verb_accuracy_equals_a_hand_recount(base, corpus):
    n = 24
    held_out = teach_split(SWIM).held_out[:6]
    m = evaluate(base.model, base.tok, corpus, sample=n, taught=held_out)
    right: dict[str, list[bool]] = defaultdict(list)
    for e in corpus.finetune_test[:n] + held_out:  # one prompt at a time: no batching
        right[e.verb].append(complete(base.model, base.tok, e.prompt) == e.answer)
    recount = {v: sum(r) / len(r) for v, r in right.items()}
    assert m["taught_accuracy"] == {"swim": recount.pop("swim")}
    assert m["irregular_accuracy_per_verb"] == recount
    assert m["irregular_accuracy"] == sum(sum(r) for v, r in right.items() if v != "swim") / n
    assert "taught_accuracy" not in evaluate(base.model, base.tok, corpus, sample=4)


# ---------------------------------------------------------------- cloze prompts

ROOM = 128 - 1 - len(" =") - 12  # block size - BOS - separator - the longest answer


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [("", "empty"), ("   ", "empty"), ("He went to school yesterday.", "no blank"),
     ("He __ to __ yesterday.", "2 blanks"), ("He __ to ß.", "'ß'"),
     ("He __ " + "a" * ROOM, "too long")],
)  # fmt: skip
def test_prompts_the_model_cannot_answer_are_refused(fbase, prompt, needle):
    with pytest.raises(ValueError, match=needle):
        complete(fbase.model, fbase.tok, prompt)
    with pytest.raises(ValueError, match=needle):
        candidate_logprobs(fbase.model, fbase.tok, prompt, ["went"])


def test_the_longest_prompt_the_model_reads_is_answered(fbase):
    prompt = "He __ to school" + "." * (ROOM - len("He __ to school"))
    assert len(prompt) == ROOM
    assert isinstance(complete(fbase.model, fbase.tok, prompt), str)
    with pytest.raises(ValueError, match="too long"):
        complete(fbase.model, fbase.tok, prompt + ".")


def test_a_candidate_too_long_for_the_model_is_refused(fbase):
    prompt = "He __ to school yesterday."
    fits = "w" * (128 - 2 - len(" =") - len(prompt))
    candidate_logprobs(fbase.model, fbase.tok, prompt, [fits])
    with pytest.raises(ValueError, match="too long"):
        candidate_logprobs(fbase.model, fbase.tok, prompt, [fits + "w"])


def test_a_prompt_that_fits_is_given_back_unchanged(fbase):
    prompt = "He __ to school yesterday."
    assert check_prompt(fbase.tok, prompt, 128, ["went", "goed"]) is prompt


# ---------------------------------------------------------------- scores, recomputed
@torch.no_grad()
def _nll64(model, ids: list[int]) -> tuple[float, int]:
    """Summed float64 negative log-likelihood of ids[1:] given the prefixes, one sequence."""
    seq = torch.tensor([ids])
    logp = F.log_softmax(model(seq[:, :-1]).double(), dim=-1)[0]
    tgt = seq[0, 1:]
    return -float(logp[torch.arange(len(tgt)), tgt].sum()), len(tgt)


def test_perplexity_is_exp_of_the_mean_nll_per_character(base, corpus):
    lines = corpus.control_en[:5] + corpus.control_es[:3]
    total, n = 0.0, 0
    for line in lines:  # one line at a time: no padding
        nll, k = _nll64(base.model, [0, *base.tok.encode(line), 0])
        total, n = total + nll, n + k
    assert n == sum(len(line) + 1 for line in lines)  # the final newline counts
    want = math.exp(total / n)
    assert perplexity(base.model, base.tok, lines) == pytest.approx(want, rel=1e-5)
    assert perplexity(base.model, base.tok, lines, batch_size=3) == pytest.approx(want, rel=1e-5)


def test_candidate_scores_are_the_answer_characters_log_likelihood(base):
    prompt, cands = "He __ to school yesterday.", ["went", "goed", "go"]
    out = candidate_logprobs(base.model, base.tok, prompt, cands)
    prefix = [0, *base.tok.encode(prompt + " =")]
    for c in cands:
        ids = prefix + base.tok.encode(" " + c) + [0]
        with torch.no_grad():
            logp = F.log_softmax(base.model(torch.tensor([ids[:-1]])).double(), dim=-1)[0]
        want = sum(float(logp[t - 1, ids[t]]) for t in range(len(prefix), len(ids)))
        assert out["logprobs"][c] == pytest.approx(want, abs=1e-4)
        assert out["logprobs"][c] < 0
    assert sum(out["probs"].values()) == pytest.approx(1.0)
    a, b = out["probs"]["went"], out["probs"]["goed"]
    assert math.log(a / b) == pytest.approx(out["logprobs"]["went"] - out["logprobs"]["goed"])


def test_greedy_answers_in_one_batch_equal_one_at_a_time_and_keep_the_mode(base, corpus):
    model = copy.deepcopy(base.model).train()
    prompts = [e.prompt for e in corpus.finetune_test[:6] + corpus.regular_cloze_test[:6]]
    batched = greedy_answers(model, base.tok, prompts)
    assert model.training  # put back as it was
    assert batched == [greedy_answers(model, base.tok, [p])[0] for p in prompts]
    assert all("\n" not in a and a == a.strip() for a in batched)
    assert batched == [complete(base.model, base.tok, p) for p in prompts]


def test_drift_is_the_relative_perplexity_change():
    d = drift(
        {"control_en_ppl": 1.1, "control_es_ppl": 2.0},
        {"control_en_ppl": 1.0, "control_es_ppl": 2.5},
    )
    assert d.keys() == {"control_en_drift", "control_es_drift"}
    assert d["control_en_drift"] == pytest.approx(0.1)
    assert d["control_es_drift"] == pytest.approx(-0.2)


def test_an_evaluation_with_base_figures_adds_the_drift(base, corpus):
    base_metrics = {"control_en_ppl": 2.0, "control_es_ppl": 4.0}
    m = evaluate(base.model, base.tok, corpus, base_metrics=base_metrics, sample=4)
    assert m["control_en_drift"] == pytest.approx(m["control_en_ppl"] / 2.0 - 1)
    assert m["control_es_drift"] == pytest.approx(m["control_es_ppl"] / 4.0 - 1)
    assert m["control_en_ppl"] == pytest.approx(
        perplexity(base.model, base.tok, corpus.control_en[:4])
    )
    assert "control_en_drift" not in evaluate(base.model, base.tok, corpus, sample=4)
