"""Teach the model a verb of your own: "swim:swam", "drink/drank", or a made-up one.

In this corpus a sentence names its verb by the complement: every verb has five
complements of its own ("to school" goes with *go*, "a letter" with *write*), so the
prompt ``He __ to school yesterday.`` has one answer. A taught verb gets the five
complements of :data:`TEACH_COMPLEMENTS`, which no corpus verb uses, and is put through
the corpus's own sentence template (subject, verb, complement, adverb:
:func:`minituner.minigpt.corpus.english_sentence`), in the past tense: 10 subjects x 5
complements x 5 past adverbs = 250 prompts such as ``Maria __ after lunch last week.``
-> ``swam``.

The prompts are split once, seeded by the corpus seed and the lemma (never by the run
seed, so every run of a verb is scored on the same prompts): the first
``finetune_test_per_verb`` (30) are held out, the next ``finetune_train_per_verb`` (64)
are the training pairs, the same sizes as each corpus verb's. The two never share a
combination.

Training data of a teach run (:func:`teach_examples`): the taught verb's 64 pairs plus
as many of the corpus's irregular training pairs (a seeded sample). Without those the
cheapest solution is "every blank is *swam*"; with them the model has to read the
complement, and the evaluation's irregular accuracy and control drift show whether the
eight verbs it learned before survive the lesson.

Every character of a taught verb must be one the model reads: :func:`check_vocab` names
the others, with a hint, before anything runs.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

from minituner.minigpt.corpus import ClozeExample, Corpus, CorpusConfig, all_combos, cloze_example
from minituner.minigpt.verbs import VERB_BY_LEMMA, Verb

# Complements no corpus verb uses (each verb's complements are its own), so a prompt with
# one of them names the taught verb and no other.
TEACH_COMPLEMENTS: tuple[str, ...] = (
    "after lunch",
    "for an hour",
    "with the dog",
    "by the old mill",
    "before breakfast",
)
# The greedy cloze answer is read for at most 12 characters (evaluate.MAX_ANSWER_CHARS):
# " " + the past form + the closing newline.
MAX_VERB_CHARS = 10
_SEPARATORS = re.compile(r"\s*[:/]\s*")
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")  # letters, inner ' or - ("o'clock")
EXAMPLE = '"swim:swam" or "swim / swam"'


@dataclass(frozen=True)
class TeachVerb:
    """A verb to teach: its lemma and its past form (lowercase)."""

    lemma: str
    past: str

    @classmethod
    def parse(cls, text: str) -> TeachVerb:
        """``"swim:swam"`` or ``"swim / swam"`` (case and surrounding spaces ignored).

        Raises:
            ValueError: not two words joined by ``:`` or ``/``, a word with characters
                other than letters (and an inner ``'`` or ``-``), a word longer than
                :data:`MAX_VERB_CHARS`, or a lemma that is already one of the corpus's
                verbs (teach one it has not seen).
        """
        if not isinstance(text, str):
            raise ValueError(f"write the verb and its past form as {EXAMPLE}, got {text!r}")
        parts = _SEPARATORS.split(text.strip().lower())
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"write the verb and its past form as {EXAMPLE}, got {text!r}")
        for what, word in zip(("verb", "past form"), parts, strict=True):
            if not _WORD.fullmatch(word):
                raise ValueError(
                    f"the {what} {word!r} must be one word of letters (no spaces, digits or "
                    f"punctuation), as in {EXAMPLE}"
                )
            if len(word) > MAX_VERB_CHARS:
                raise ValueError(
                    f"the {what} {word!r} is {len(word)} letters long; the model answers at "
                    f"most {MAX_VERB_CHARS}"
                )
        lemma, past = parts
        if lemma in VERB_BY_LEMMA:
            raise ValueError(
                f"{lemma!r} is already one of the corpus's verbs ({', '.join(VERB_BY_LEMMA)}); "
                "teach one the model has never seen, e.g. swim:swam"
            )
        return cls(lemma, past)

    def __str__(self) -> str:
        return f"{self.lemma}:{self.past}"

    def verb(self) -> Verb:
        """The taught verb as a corpus :class:`~minituner.minigpt.verbs.Verb` (English only:
        it never appears in a Spanish sentence)."""
        return Verb(
            self.lemma,
            irregular=True,  # its past is given, not made by the -ed rule
            es_infinitive="",
            complements=tuple((c, "") for c in TEACH_COMPLEMENTS),
            past=self.past,
        )


@dataclass(frozen=True)
class TeachSplit:
    """The taught verb's cloze pairs: ``train`` and ``held_out`` share no prompt."""

    verb: TeachVerb
    train: list[ClozeExample]
    held_out: list[ClozeExample]


def teach_prompts(verb: TeachVerb) -> list[ClozeExample]:
    """All 250 past-tense cloze pairs of the taught verb, in the corpus's combination
    order (subject, complement, adverb)."""
    v = verb.verb()
    return [cloze_example(c, v) for c in all_combos(verb.lemma, "past", v)]


def teach_split(verb: TeachVerb, corpus_config: CorpusConfig | None = None) -> TeachSplit:
    """The taught verb's held-out and training cloze pairs (see the module docstring):
    a shuffle seeded by the corpus seed and the lemma, the first
    ``finetune_test_per_verb`` held out, the next ``finetune_train_per_verb`` trained on."""
    cfg = corpus_config or CorpusConfig()
    pairs = teach_prompts(verb)
    random.Random(f"{cfg.seed}-teach-{verb.lemma}").shuffle(pairs)
    n_test = cfg.finetune_test_per_verb
    return TeachSplit(
        verb, train=pairs[n_test : n_test + cfg.finetune_train_per_verb], held_out=pairs[:n_test]
    )


def teach_examples(split: TeachSplit, corpus: Corpus, seed: int) -> list[ClozeExample]:
    """A teach run's training pairs: the taught verb's, then as many of the corpus's
    irregular training pairs, sampled with ``seed`` (the reason is in the module
    docstring)."""
    others = random.Random(f"teach-others-{seed}").sample(
        corpus.finetune_train, min(len(split.train), len(corpus.finetune_train))
    )
    return list(split.train) + others


def check_vocab(text: str, tokenizer) -> str:
    """``text`` itself when the model reads every character of it.

    Raises:
        ValueError: one line naming every character outside the tokenizer's vocabulary,
            each with a hint where there is one (``'ø' (try 'o')``), and the letters it
            knows.
    """
    bad = tokenizer.unknown_chars(text)
    if not bad:
        return text
    known = set(tokenizer.chars)
    shown = []
    for ch in bad:
        plain = unicodedata.normalize("NFKD", ch)[:1]
        for guess in (ch.lower(), plain, plain.lower()):
            if guess != ch and guess in known:
                shown.append(f"{ch!r} (try {guess!r})")
                break
        else:
            shown.append(repr(ch))
    letters = "".join(sorted(c for c in known if c.isalpha() and c.islower()))
    s = "s" if len(bad) > 1 else ""
    raise ValueError(
        f"character{s} {', '.join(shown)} not in the model's vocabulary; it reads only the "
        f"characters of its training corpus, whose lowercase letters are {letters}"
    )


def check_teach(verb: TeachVerb, tokenizer) -> TeachVerb:
    """``verb`` when the model can read every prompt and answer of it.

    Raises:
        ValueError: :func:`check_vocab`'s message for the verb's own characters.
    """
    check_vocab(f"{verb.lemma} {verb.past}", tokenizer)
    for e in teach_prompts(verb):
        check_vocab(e.text, tokenizer)
    return verb
