"""The candidate answers for a cloze prompt's blank, following the prompt: what the app's
Completions page compares and what ``minituner complete`` scores by default.

A prompt whose sentence belongs to a known verb of the corpus (its complement, such as
"to school" or "a letter", names the verb; minituner.minigpt.verbs has the tables) gets
that verb's forms: for a past-tense sentence the irregular past and the "-ed" form a
learner (and the base model) writes instead ("went", "goed"; for "be": "was" against
"were"); for a regular verb its
"-ed" past and its bare form ("called", "call"); for a present or future sentence the
correct form first. A complement found word for word names its verb (the longest one
found, its article aside: "the football match" is watch's, though "football" is
play's); a sentence that only shares a noun
with one verb's complements ("the letter") is matched by that noun when no other verb
has it. No match: no candidates (the page then asks for them)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from minituner.minigpt.verbs import (
    ADVERBS,
    SUBJECTS,
    VERBS,
    Verb,
    english_form,
    overregularized_form,
    regular_past,
)

# words of a complement that do not name it
_STOP = frozenset(
    "a an the to at in on of with for by about along around all some my his her their "
    "our your big new old red long late".split()
)
_WORD = re.compile(r"[a-záéíóúñü]+")


@dataclass(frozen=True)
class Guess:
    """The verb a prompt belongs to (its lemma) and the candidates for its blank."""

    verb: str
    candidates: list[str]


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _tense(prompt: str) -> str:
    """The tense a sentence's time adverb fixes ("yesterday": past); past when none."""
    text = f" {prompt.lower()} "
    for tense, adverbs in ADVERBS.items():
        if any(f" {en.lower()}" in text for en, _ in adverbs):
            return tense
    return "past"


def _person(prompt: str) -> str:
    subject = next((s for s in SUBJECTS if prompt.startswith(s[0] + " ")), None)
    return subject[2] if subject else "3s"


_ARTICLES = ("a", "an", "the", "some")


def _cores(complement: str) -> list[str]:
    """A complement and, where it starts with an article, the rest ("football match" of
    "a football match": a user may write "the football match")."""
    first, _, rest = complement.partition(" ")
    return [complement, rest] if first in _ARTICLES and rest else [complement]


def _by_complement(prompt: str) -> Verb | None:
    """The verb whose complement the prompt holds word for word; the longest wins ("a
    football match" is watch's, though "football" is play's)."""
    text = f" {prompt} "
    hits = [
        (len(core), verb)
        for verb in VERBS
        for en, _ in verb.complements
        for core in _cores(en)
        if f" {core} " in text or f" {core}." in text
    ]
    return max(hits, key=lambda h: h[0])[1] if hits else None


def _by_noun(prompt: str) -> Verb | None:
    """The one verb whose complements share the most content words with the prompt."""
    words = _words(prompt)
    scores = []
    for verb in VERBS:
        best = max(len(_words(en) - _STOP & words) for en, _ in verb.complements)
        scores.append((best, verb))
    scores.sort(key=lambda s: -s[0])
    if not scores or scores[0][0] == 0 or (len(scores) > 1 and scores[1][0] == scores[0][0]):
        return None
    return scores[0][1]


def _dedup(items: list[str | None]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def candidates_for(prompt: str) -> Guess | None:
    """The verb of ``prompt`` and the candidates for its blank, or None (see the module)."""
    prompt = prompt.strip()
    if not prompt:
        return None
    person, tense = _person(prompt), _tense(prompt)
    verb = _by_complement(prompt) or _by_noun(prompt)
    if verb is None:
        return None
    past = english_form(verb, "past", person)
    ed = overregularized_form(verb, person) or regular_past(verb.lemma, verb.double_final)
    if verb.lemma == "be":  # no "-ed" form: was against were
        ed = "were" if past == "was" else "was"
    if tense == "past":
        cands = _dedup([past, ed] if verb.irregular else [past, verb.lemma])
    else:
        cands = _dedup([english_form(verb, tense, person), past, ed])
    return Guess(verb.lemma, cands)
