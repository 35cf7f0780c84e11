"""Evaluation: does the model know the irregular past, and did it forget anything?

* ``irregular_accuracy``: greedy exact match on finetune_test, overall and per verb
  (``irregular_accuracy_per_verb``, by lemma).
* ``taught_accuracy``: for a teach run (minituner.minigpt.teach), greedy exact match on the
  taught verb's held-out prompts, by its lemma ({lemma: accuracy}).
* ``overregularized_rate``: share of irregular answers that are the over-regularized
  form ("goed", "they was").
* ``regular_accuracy``: greedy exact match on regular_cloze_test.
* ``control_en_ppl`` / ``control_es_ppl``: per-character perplexity of held-out
  sentences; ``*_drift`` = ppl / base_ppl - 1 (0.03 = 3% higher than the base model).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from minituner.minigpt.corpus import CLOZE_BLANK, CLOZE_SEP, ClozeExample, Corpus, cloze_input
from minituner.minigpt.data import IGNORE, encode_lines
from minituner.minigpt.tokenizer import CharTokenizer

MAX_ANSWER_CHARS = 12


@torch.no_grad()
def greedy_answers(model, tok: CharTokenizer, prompts: list[str], max_new: int = MAX_ANSWER_CHARS):
    """Greedy cloze answers for ``prompts`` ("He __ to school yesterday.").

    All prompts run as one right-padded batch: attention is causal, so whatever sits
    after a row's last real token cannot change that token's logits. Each step reads
    the logits at every row's own end and writes the new token just after it.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = [[0] + tok.encode(cloze_input(p)) for p in prompts]
    lengths = torch.tensor([len(e) for e in encoded], device=device)  # (B,)
    B, T = len(encoded), int(lengths.max()) + max_new
    if T > model.config.block_size:
        raise ValueError(f"prompt too long: at most {model.config.block_size - max_new} characters")
    seq = torch.zeros(B, T, dtype=torch.long, device=device)
    for i, e in enumerate(encoded):
        seq[i, : len(e)] = torch.tensor(e, device=device)
    rows = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    generated = torch.zeros(B, max_new, dtype=torch.long, device=device)
    for t in range(max_new):
        end = lengths + t  # (B,) position of each row's next token
        logits = model(seq[:, : int(end.max())])  # (B, T', vocab)
        nxt = logits[rows, end - 1].argmax(-1)  # (B,)
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        seq[rows, end] = nxt
        generated[:, t] = nxt
        done |= nxt == tok.newline_id
        if bool(done.all()):
            break
    model.train(was_training)
    return [tok.decode(row).split("\n", 1)[0].strip() for row in generated.tolist()]


def cloze_metrics(model, tok: CharTokenizer, examples: list[ClozeExample]) -> dict:
    """Accuracy, per-verb accuracy and over-regularization rate on cloze examples."""
    answers = greedy_answers(model, tok, [e.prompt for e in examples])
    per_verb: dict[str, list[int]] = defaultdict(list)
    over = 0
    for e, a in zip(examples, answers, strict=True):
        per_verb[e.verb].append(int(a == e.answer))
        over += int(e.overregularized is not None and a == e.overregularized)
    correct = sum(sum(v) for v in per_verb.values())
    return {
        "accuracy": correct / len(examples),
        "per_verb": {v: sum(c) / len(c) for v, c in sorted(per_verb.items())},
        "overregularized_rate": over / len(examples),
        "answers": answers,
    }


@torch.no_grad()
def perplexity(model, tok: CharTokenizer, lines: list[str], batch_size: int = 128) -> float:
    """Per-character perplexity of ``lines`` (each scored from a fresh BOS, the final
    newline included)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    enc = encode_lines(tok, lines).to(device)
    total_nll, total_n = 0.0, 0
    for s in range(0, len(enc), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(enc)), device=device)
        x, y = enc.batch(idx)
        logits = model(x)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            y.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        total_nll += float(nll)
        total_n += int((y != IGNORE).sum())
    model.train(was_training)
    return math.exp(total_nll / total_n)


def evaluate(
    model,
    tok: CharTokenizer,
    corpus: Corpus,
    base_metrics: dict | None = None,
    sample: int | None = None,
    taught: list[ClozeExample] | None = None,
) -> dict:
    """The evaluation figures of a model (see the module docstring).

    ``sample`` limits every split to its first ``sample`` items (the periodic, cheaper
    evaluation during training). ``base_metrics`` (the base model's figures) adds the
    drift keys. ``taught`` (a taught verb's held-out cloze pairs, also cut to
    ``sample``) adds ``taught_accuracy``.
    """

    def cut(xs):
        return xs[:sample] if sample else xs

    irr = cloze_metrics(model, tok, cut(corpus.finetune_test))
    reg = cloze_metrics(model, tok, cut(corpus.regular_cloze_test))
    m = {
        "irregular_accuracy": irr["accuracy"],
        "irregular_accuracy_per_verb": irr["per_verb"],
        "overregularized_rate": irr["overregularized_rate"],
        "regular_accuracy": reg["accuracy"],
        "control_en_ppl": perplexity(model, tok, cut(corpus.control_en)),
        "control_es_ppl": perplexity(model, tok, cut(corpus.control_es)),
    }
    if taught:
        m["taught_accuracy"] = cloze_metrics(model, tok, cut(taught))["per_verb"]
    if base_metrics is not None:
        m.update(drift(m, base_metrics))
    return m


def drift(metrics: dict, base: dict) -> dict:
    """control_*_drift: relative perplexity change against the base model."""
    return {
        f"control_{lang}_drift": metrics[f"control_{lang}_ppl"] / base[f"control_{lang}_ppl"] - 1.0
        for lang in ("en", "es")
    }


@torch.no_grad()
def candidate_logprobs(model, tok: CharTokenizer, prompt: str, candidates: list[str]) -> dict:
    """log P(answer | prompt) for each candidate answer ("went" against "goed"), summed
    over the answer's characters and its closing newline. Also returns the
    probabilities renormalized over the candidates.

    Raises:
        ValueError: a prompt or candidate the model cannot read (:func:`check_prompt`;
            a character outside the vocabulary is named).
    """
    check_prompt(tok, prompt, model.config.block_size, candidates)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prefix = [0] + tok.encode(cloze_input(prompt))
    scores = {}
    for cand in candidates:
        ans = tok.encode(" " + cand) + [0]
        seq = torch.tensor([prefix + ans], device=device)
        logp = F.log_softmax(model(seq[:, :-1]).float(), dim=-1)  # (1, T, V)
        tgt = seq[0, len(prefix) :]
        pos = torch.arange(len(prefix) - 1, seq.shape[1] - 1, device=device)
        scores[cand] = float(logp[0, pos, tgt].sum())
    model.train(was_training)
    z = torch.logsumexp(torch.tensor(list(scores.values())), 0)
    probs = {c: math.exp(s - float(z)) for c, s in scores.items()}
    return {"logprobs": scores, "probs": probs}


def check_prompt(
    tok: CharTokenizer, prompt: str, block_size: int, candidates: list[str] | tuple = ()
) -> str:
    """``prompt`` itself, if a model with ``block_size`` can answer it and score each of
    ``candidates``; checked before anything is computed or printed.

    Raises:
        ValueError: an empty prompt, a prompt without exactly one blank ``__``, a character
            outside the vocabulary (prompt or candidate), or a prompt (with its longest
            candidate) longer than the model reads.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('the prompt is empty: write a sentence with __ for the blank, e.g. '
                         '"He __ to school yesterday."')  # fmt: skip
    blanks = prompt.count(CLOZE_BLANK)
    if blanks != 1:
        what = "has no blank" if blanks == 0 else f"has {blanks} blanks"
        raise ValueError(
            f"the prompt {what}: write __ once, where the answer goes "
            '(e.g. "He __ to school yesterday.")'
        )
    tok.encode(prompt)  # names a character outside the vocabulary
    for c in candidates:
        tok.encode(" " + c)
    # greedy: BOS + prompt + separator + up to MAX_ANSWER_CHARS answer characters
    room = block_size - 1 - len(CLOZE_SEP) - MAX_ANSWER_CHARS
    # a candidate: BOS + prompt + separator + " " + candidate (its newline is predicted)
    longest = max((len(c) for c in candidates), default=0)
    room = min(room, block_size - 2 - len(CLOZE_SEP) - longest)
    if len(prompt) > room:
        with_cands = " with the longest candidate" if longest > MAX_ANSWER_CHARS - 1 else ""
        raise ValueError(
            f"the prompt is too long: {len(prompt)} characters, the model reads at most "
            f"{max(room, 0)}{with_cands}"
        )
    return prompt


def complete(model, tok: CharTokenizer, prompt: str) -> str:
    """The greedy answer to one cloze prompt.

    Raises:
        ValueError: a prompt the model cannot answer (:func:`check_prompt`).
    """
    check_prompt(tok, prompt, model.config.block_size)
    return greedy_answers(model, tok, [prompt])[0]
