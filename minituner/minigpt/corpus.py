"""The bilingual verb corpus: sentences, cloze pairs, seeded splits and the version hash.

Everything is generated from a :class:`CorpusConfig` (seeded, deterministic). The
corpus is built around one experiment: a model pretrained on this text learns a
*regular-form prior* for the English past tense, because

* regular verbs appear in every tense, in sentences and in cloze drills;
* irregular verbs appear mostly in the present and the future; their past forms are
  rare (``irregular_past_share``) and a set share of those rare past forms are
  over-regularized (``overregularize_share``: "goed", "eated", "they was");
* cloze drills in pretraining follow the same mix: regular verbs in every tense, the
  irregular past rarely and partly over-regularized, so the format is well known and
  the drills themselves teach "past = -ed".

The fine-tuning split then teaches the 8 irregular past forms through cloze pairs
such as ``"He __ to school yesterday."`` -> ``"went"``.

A sentence is a *combination* (verb, subject, complement, adverb); the adverb fixes the
tense. Every combination belongs to exactly one pool (pretrain, finetune_train,
finetune_test, control_en, control_es, regular_cloze_test or unused), so the held-out
splits are disjoint from pretraining by construction; tests check it again.

The verb tables and the English and Spanish form rules are :mod:`minituner.minigpt.verbs`.

``Corpus.version`` is a hash of the generated text: it changes whenever the text does.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from minituner.minigpt.verbs import (
    ADVERBS,
    REGULAR_VERBS,
    SUBJECTS,
    TENSES,
    VERB_BY_LEMMA,
    VERBS,
    Verb,
    english_form,
    overregularized_form,
    spanish_form,
)

# ---------------------------------------------------------------- sentences


@dataclass(frozen=True)
class Combo:
    """One sentence's choices; the adverb fixes the tense."""

    verb: str
    subject: int  # index into SUBJECTS
    complement: int  # index into the verb's complements
    tense: str
    adverb: int  # index into ADVERBS[tense]

    @property
    def person(self) -> str:
        return SUBJECTS[self.subject][2]


def _capitalize(s: str) -> str:
    return s[0].upper() + s[1:]


def english_sentence(c: Combo, form: str | None = None, verb: Verb | None = None) -> str:
    """``He went to school yesterday.``; ``form`` overrides the verb form; ``verb``
    is a verb outside the corpus (minituner.minigpt.teach), else ``c.verb`` is looked up."""
    verb = verb or VERB_BY_LEMMA[c.verb]
    form = form if form is not None else english_form(verb, c.tense, c.person)
    comp = verb.complements[c.complement][0]
    adv = ADVERBS[c.tense][c.adverb][0]
    return f"{SUBJECTS[c.subject][0]} {form} {comp} {adv}."


def spanish_sentence(c: Combo) -> str:
    verb = VERB_BY_LEMMA[c.verb]
    comp = verb.complements[c.complement][1]
    adv = ADVERBS[c.tense][c.adverb][1]
    subj = SUBJECTS[c.subject][1]
    return _capitalize(f"{subj} {spanish_form(verb, c.tense, c.person)} {comp} {adv}.")


CLOZE_BLANK = "__"
CLOZE_SEP = " ="  # the model reads "<prompt> =" and answers " <answer>\n"


@dataclass(frozen=True)
class ClozeExample:
    """A cloze pair: prompt ``He __ to school yesterday.`` and answer ``went``."""

    prompt: str
    answer: str
    verb: str
    tense: str
    person: str
    overregularized: str | None = None  # the over-regularized form, where one exists

    @property
    def text(self) -> str:
        """The full training line (without the newline)."""
        return cloze_input(self.prompt) + " " + self.answer


def cloze_input(prompt: str) -> str:
    """What the model is fed for a cloze prompt; the answer follows after a space."""
    return prompt + CLOZE_SEP


def cloze_example(c: Combo, verb: Verb | None = None) -> ClozeExample:
    """The cloze pair of a combination (``verb``: a verb outside the corpus)."""
    verb = verb or VERB_BY_LEMMA[c.verb]
    answer = english_form(verb, c.tense, c.person)
    over = overregularized_form(verb, c.person) if c.tense == "past" else None
    return ClozeExample(
        prompt=english_sentence(c, form=CLOZE_BLANK, verb=verb),
        answer=answer,
        verb=c.verb,
        tense=c.tense,
        person=c.person,
        overregularized=over,
    )


def all_combos(verb: str, tense: str, v: Verb | None = None) -> list[Combo]:
    """Every combination of a verb in a tense (``v``: a verb outside the corpus)."""
    v = v or VERB_BY_LEMMA[verb]
    return [
        Combo(verb, s, k, tense, a)
        for s in range(len(SUBJECTS))
        for k in range(len(v.complements))
        for a in range(len(ADVERBS[tense]))
    ]


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class CorpusConfig:
    """Knobs of the generated corpus (every one changes ``Corpus.version``).

    irregular_past_share: probability that a pretraining sentence with an irregular
        verb is in the past tense (regular verbs: 1/3, uniform over the tenses).
    overregularize_share: share of those rare irregular past sentences written with
        the over-regularized form ("He goed to school yesterday.").
    cloze_share: share of pretraining lines that are cloze drills, with the same tense
        mix and over-regularization as the sentences.
    irregular_past_in_cloze: whether those drills include the (rare, partly
        over-regularized) irregular past; False keeps the irregular past out of drills.
    pair_share: share of pretraining lines that are "English | Spanish" translation
        pairs; the remaining lines are English-only and Spanish-only sentences, half each.
    """

    seed: int = 1234
    n_pretrain: int = 60_000  # lines
    irregular_past_share: float = 0.10
    overregularize_share: float = 0.75
    cloze_share: float = 0.25
    irregular_past_in_cloze: bool = True
    pair_share: float = 0.25
    finetune_train_per_verb: int = 64  # 8 verbs -> 512 pairs
    finetune_test_per_verb: int = 30  # 240 held-out prompts
    pretrain_irregular_past_per_verb: int = 80  # past combos pretraining may use
    regular_cloze_test_per_verb: int = 20
    control_en_per_verb_tense: int = 10  # 12 verbs x 3 tenses -> 360 sentences
    control_es_per_verb_tense: int = 5  # 20 verbs x 3 tenses (irregular past excluded)

    def __post_init__(self) -> None:
        for name in ("irregular_past_share", "overregularize_share", "cloze_share", "pair_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CorpusConfig.{name} must be in [0, 1], got {v}")
        if self.cloze_share + self.pair_share > 1.0:
            raise ValueError("cloze_share + pair_share must not exceed 1")
        if self.n_pretrain < 1:
            raise ValueError(f"CorpusConfig.n_pretrain must be >= 1, got {self.n_pretrain}")


@dataclass
class Corpus:
    config: CorpusConfig
    pretrain: list[str]  # lines of text, no newline
    finetune_train: list[ClozeExample]
    finetune_test: list[ClozeExample]
    control_en: list[str]
    control_es: list[str]
    regular_cloze_test: list[ClozeExample]
    pools: dict[str, set[Combo]] = field(repr=False, default_factory=dict)
    version: str = ""

    def all_text(self) -> str:
        """Every character any split can contain (for the tokenizer's vocabulary)."""
        parts = list(self.pretrain) + self.control_en + self.control_es
        for split in (self.finetune_train, self.finetune_test, self.regular_cloze_test):
            parts += [e.text for e in split]
        return "\n".join(parts) + "\n"


def _hash_text(corpus: Corpus) -> str:
    h = hashlib.sha256()
    h.update(repr(asdict(corpus.config)).encode())
    for name in (
        "pretrain",
        "control_en",
        "control_es",
    ):
        for line in getattr(corpus, name):
            h.update(line.encode() + b"\n")
    for name in ("finetune_train", "finetune_test", "regular_cloze_test"):
        for e in getattr(corpus, name):
            h.update(e.text.encode() + b"\n")
    return "c1-" + h.hexdigest()[:12]


def build_corpus(config: CorpusConfig | None = None) -> Corpus:
    """Generate the corpus for ``config`` (deterministic; cached per config)."""
    return _build_cached(config or CorpusConfig())


@lru_cache(maxsize=4)
def _build_cached(cfg: CorpusConfig) -> Corpus:
    rng = random.Random(cfg.seed)
    pools: dict[str, set[Combo]] = {
        k: set()
        for k in (
            "pretrain",
            "finetune_train",
            "finetune_test",
            "control_en",
            "control_es",
            "regular_cloze_test",
        )
    }
    pretrain_pool: dict[tuple[str, str], list[Combo]] = {}
    for verb in VERBS:
        for tense in TENSES:
            combos = all_combos(verb.lemma, tense)
            rng.shuffle(combos)
            take = _Taker(combos)
            if verb.irregular and tense == "past":
                pools["finetune_test"].update(take(cfg.finetune_test_per_verb))
                pools["finetune_train"].update(take(cfg.finetune_train_per_verb))
                pre = take(cfg.pretrain_irregular_past_per_verb)
            else:
                if not verb.irregular:
                    pools["control_en"].update(take(cfg.control_en_per_verb_tense))
                    if tense == "past":
                        pools["regular_cloze_test"].update(take(cfg.regular_cloze_test_per_verb))
                pools["control_es"].update(take(cfg.control_es_per_verb_tense))
                pre = take.rest()
            pretrain_pool[(verb.lemma, tense)] = pre
            pools["pretrain"].update(pre)

    pretrain = _pretrain_lines(cfg, rng, pretrain_pool)

    def ordered(name: str) -> list[Combo]:  # sets are unordered: fix an order, then shuffle
        items = sorted(
            pools[name], key=lambda c: (c.verb, c.tense, c.subject, c.complement, c.adverb)
        )
        random.Random(f"{cfg.seed}-{name}").shuffle(items)
        return items

    corpus = Corpus(
        config=cfg,
        pretrain=pretrain,
        finetune_train=[cloze_example(c) for c in ordered("finetune_train")],
        finetune_test=[cloze_example(c) for c in ordered("finetune_test")],
        control_en=[english_sentence(c) for c in ordered("control_en")],
        control_es=[spanish_sentence(c) for c in ordered("control_es")],
        regular_cloze_test=[cloze_example(c) for c in ordered("regular_cloze_test")],
        pools=pools,
    )
    corpus.version = _hash_text(corpus)
    return corpus


def replay_pool(corpus: Corpus) -> list[ClozeExample]:
    """Regular-verb past-tense cloze pairs of sentences from the pretraining pool, in a
    fixed order: what replay mixes into fine-tuning. None of them is a
    regular_cloze_test or control_en combination (the pools are disjoint), so replay
    never trains on what measures forgetting."""
    combos = sorted(
        (c for c in corpus.pools["pretrain"] if c.tense == "past" and c.verb in REGULAR_VERBS),
        key=lambda c: (c.verb, c.subject, c.complement, c.adverb),
    )
    return [cloze_example(c) for c in combos]


class _Taker:
    def __init__(self, items: list[Combo]):
        self.items, self.i = items, 0

    def __call__(self, n: int) -> list[Combo]:
        out = self.items[self.i : self.i + n]
        self.i += n
        return out

    def rest(self) -> list[Combo]:
        return self.__call__(len(self.items))


def _pretrain_lines(
    cfg: CorpusConfig, rng: random.Random, pool: dict[tuple[str, str], list[Combo]]
) -> list[str]:
    lines = []
    for _ in range(cfg.n_pretrain):
        verb = rng.choice(VERBS)
        kind = rng.random()
        if verb.irregular:
            past = rng.random() < cfg.irregular_past_share
            if kind < cfg.cloze_share and not cfg.irregular_past_in_cloze:
                past = False
            tense = "past" if past else rng.choice(("present", "future"))
        else:
            tense = rng.choice(TENSES)
        c = rng.choice(pool[(verb.lemma, tense)])
        form = None
        if tense == "past" and verb.irregular and rng.random() < cfg.overregularize_share:
            form = overregularized_form(verb, c.person)  # None for "I was": stays correct
        if kind < cfg.cloze_share:
            ex = cloze_example(c)
            lines.append(cloze_input(ex.prompt) + " " + (form or ex.answer))
            continue
        en = english_sentence(c, form)
        es = spanish_sentence(c)
        if kind < cfg.cloze_share + cfg.pair_share:
            lines.append(f"{en} | {es}")
        elif rng.random() < 0.5:
            lines.append(en)
        else:
            lines.append(es)
    return lines
