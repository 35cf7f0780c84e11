"""The verb corpus: sentences, determinism, versioning, split hygiene and the shares of
irregular and over-regularized past forms actually present in the pretraining text (the
verb tables and form rules: test_verbs.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from minituner.minigpt import corpus as corpus_mod
from minituner.minigpt.corpus import (
    CLOZE_BLANK,
    Combo,
    CorpusConfig,
    all_combos,
    build_corpus,
    cloze_example,
    english_sentence,
    spanish_sentence,
)
from minituner.minigpt.verbs import (
    ADVERBS,
    IRREGULAR_VERBS,
    REGULAR_VERBS,
    SUBJECTS,
    TENSES,
    VERB_BY_LEMMA,
    VERBS,
    english_form,
    overregularized_form,
    regular_past,
    third_singular,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

SPLITS = (
    "pretrain",
    "finetune_train",
    "finetune_test",
    "control_en",
    "control_es",
    "regular_cloze_test",
)


def subject(english: str) -> int:
    return [s[0] for s in SUBJECTS].index(english)


def combo(verb: str, subj: str, comp: int, tense: str, adv: int = 0) -> Combo:
    return Combo(verb, subject(subj), comp, tense, adv)


def fresh(cfg: CorpusConfig):
    """Build without build_corpus' cache, so that determinism is really exercised."""
    return corpus_mod._build_cached.__wrapped__(cfg)


def text_digest(c) -> str:
    return hashlib.sha256(c.all_text().encode()).hexdigest()


# ---------------------------------------------------------------- sentences and cloze pairs


def test_agreement():
    go, be = VERB_BY_LEMMA["go"], VERB_BY_LEMMA["be"]
    assert english_sentence(combo("go", "He", 0, "present")) == "He goes to school every day."
    assert english_sentence(combo("go", "They", 0, "present")) == "They go to school every day."
    assert english_form(go, "present", "1s") == "go"
    assert english_form(VERB_BY_LEMMA["have"], "present", "3s") == "has"
    assert english_form(VERB_BY_LEMMA["do"], "present", "3s") == "does"
    assert english_form(be, "past", "1s") == "was"
    assert english_form(be, "past", "3s") == "was"
    for person in ("2s", "1p", "3p"):
        assert english_form(be, "past", person) == "were"
    assert [english_form(be, "present", p) for p in ("1s", "2s", "3s", "1p", "3p")] == [
        "am",
        "are",
        "is",
        "are",
        "are",
    ]
    assert english_form(go, "future", "3s") == "will go"
    assert english_sentence(combo("be", "I", 0, "past")) == "I was at home yesterday."
    assert english_sentence(combo("be", "They", 0, "past")) == "They were at home yesterday."


@pytest.mark.parametrize(
    ("c", "spanish"),
    [
        (combo("go", "He", 0, "past"), "Él fue a la escuela ayer."),
        (combo("eat", "We", 0, "future"), "Nosotros comeremos una manzana mañana."),
        (combo("be", "I", 0, "past"), "Yo estuve en casa ayer."),
        (combo("have", "They", 0, "present"), "Ellos tienen un perro todos los días."),
        (combo("have", "We", 0, "future"), "Nosotros tendremos un perro mañana."),
        (combo("do", "I", 0, "future"), "Yo haré la tarea mañana."),
        (combo("come", "She", 0, "past"), "Ella vino a la fiesta ayer."),
        (combo("see", "You", 0, "past"), "Tú viste una película ayer."),
        (combo("write", "Maria", 0, "past"), "María escribió una carta ayer."),
        (combo("work", "My parents", 0, "past"), "Mis padres trabajaron en la fábrica ayer."),
        (combo("play", "I", 0, "past"), "Yo jugué al fútbol ayer."),
        (combo("eat", "The children", 0, "present"), "Los niños comen una manzana todos los días."),
    ],
)
def test_spanish_conjugation(c, spanish):
    assert spanish_sentence(c) == spanish


def test_cloze_format():
    ex = cloze_example(combo("go", "He", 0, "past"))
    assert ex.prompt == "He __ to school yesterday."
    assert ex.answer == "went"
    assert ex.overregularized == "goed"
    assert ex.text == "He __ to school yesterday. = went"
    assert (ex.verb, ex.tense, ex.person) == ("go", "past", "3s")
    be_they = cloze_example(combo("be", "They", 0, "past"))
    assert (be_they.answer, be_they.overregularized) == ("were", "was")
    assert cloze_example(combo("be", "He", 0, "past")).overregularized is None


# ---------------------------------------------------------------- determinism and version


def test_same_config_same_text_and_version():
    cfg = CorpusConfig(n_pretrain=3000)
    a, b = fresh(cfg), fresh(cfg)
    assert a is not b
    assert a.all_text() == b.all_text()
    assert a.pretrain == b.pretrain
    assert a.finetune_test == b.finetune_test
    assert a.version == b.version
    assert a.version.startswith("c1-")


def test_same_text_across_processes():
    """Set iteration order depends on PYTHONHASHSEED; the corpus must not."""
    code = (
        "import hashlib; from minituner.minigpt.corpus import build_corpus, CorpusConfig; "
        "c = build_corpus(CorpusConfig(n_pretrain=3000)); "
        "print(c.version, hashlib.sha256(c.all_text().encode()).hexdigest())"
    )
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        r = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outs.add(r.stdout.strip())
    here = fresh(CorpusConfig(n_pretrain=3000))
    assert outs == {f"{here.version} {text_digest(here)}"}


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 99},
        {"irregular_past_share": 0.3},
        {"overregularize_share": 0.2},
        {"cloze_share": 0.1},
        {"irregular_past_in_cloze": False},
        {"pair_share": 0.5},
        {"finetune_train_per_verb": 40},
        {"finetune_test_per_verb": 20},
        {"n_pretrain": 2999},
    ],
)
def test_knob_changes_text_and_version(change):
    ref = fresh(CorpusConfig(n_pretrain=3000))
    other = fresh(dataclasses.replace(ref.config, **change))
    assert other.all_text() != ref.all_text()
    assert other.version != ref.version


def test_version_follows_the_text(corpus):
    """The version is a hash of the generated text, not only of the config."""
    changed = dataclasses.replace(corpus, pretrain=corpus.pretrain[:-1] + ["He goed home."])
    assert corpus_mod._hash_text(changed) != corpus.version
    same = dataclasses.replace(corpus, pretrain=list(corpus.pretrain))
    assert corpus_mod._hash_text(same) == corpus.version


def test_build_corpus_default_and_cache(corpus):
    assert build_corpus() is corpus
    assert build_corpus(CorpusConfig()) is corpus


@pytest.mark.parametrize(
    "bad",
    [
        {"irregular_past_share": 1.5},
        {"overregularize_share": -0.1},
        {"cloze_share": 0.8, "pair_share": 0.5},
        {"n_pretrain": 0},
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        CorpusConfig(**bad)


# ---------------------------------------------------------------- splits


def key(c: Combo) -> tuple:
    return (c.verb, c.subject, c.complement, c.tense, c.adverb)


def test_split_sizes_and_contents(corpus):
    cfg = corpus.config
    assert len(corpus.pretrain) == cfg.n_pretrain
    assert len(corpus.finetune_train) == 8 * cfg.finetune_train_per_verb
    assert 450 <= len(corpus.finetune_train) <= 550  # ~500 cloze pairs
    assert len(corpus.finetune_test) == 8 * cfg.finetune_test_per_verb
    assert len(corpus.control_en) == 12 * 3 * cfg.control_en_per_verb_tense
    assert len(corpus.regular_cloze_test) == 12 * cfg.regular_cloze_test_per_verb
    assert len(corpus.control_es) == (12 * 3 + 8 * 2) * cfg.control_es_per_verb_tense
    for split in (corpus.finetune_train, corpus.finetune_test):
        assert {e.verb for e in split} == set(IRREGULAR_VERBS)
        assert Counter(e.verb for e in split).most_common()[-1][1] == len(split) // 8
        assert all(e.tense == "past" and CLOZE_BLANK in e.prompt for e in split)
        assert len({e.prompt for e in split}) == len(split)
    assert {e.verb for e in corpus.regular_cloze_test} == set(REGULAR_VERBS)
    assert all(e.tense == "past" for e in corpus.regular_cloze_test)


def test_pools_are_disjoint_and_match_the_splits(corpus):
    pools = corpus.pools
    assert set(pools) == set(SPLITS)
    for a, b in itertools.combinations(SPLITS, 2):
        overlap = {key(c) for c in pools[a]} & {key(c) for c in pools[b]}
        assert not overlap, f"{a} and {b} share {sorted(overlap)[:3]}"
    assert {cloze_example(c) for c in pools["finetune_train"]} == set(corpus.finetune_train)
    assert {cloze_example(c) for c in pools["finetune_test"]} == set(corpus.finetune_test)
    assert {cloze_example(c) for c in pools["regular_cloze_test"]} == set(corpus.regular_cloze_test)
    assert {english_sentence(c) for c in pools["control_en"]} == set(corpus.control_en)
    assert {spanish_sentence(c) for c in pools["control_es"]} == set(corpus.control_es)
    assert {c.verb for c in pools["control_en"]} == set(REGULAR_VERBS)
    assert all(c.tense == "past" for c in pools["finetune_test"])


class Index:
    """Every sentence the corpus can generate, mapped back to its combination, so that
    pretraining lines can be read back as (combination, form used)."""

    def __init__(self):
        self.en: dict[str, tuple[Combo, bool]] = {}  # sentence -> (combo, over-regularized)
        self.es: dict[str, Combo] = {}
        self.prompt: dict[str, Combo] = {}
        for v in VERBS:
            for tense in TENSES:
                for c in all_combos(v.lemma, tense):
                    self.en[english_sentence(c)] = (c, False)
                    self.es[spanish_sentence(c)] = c
                    self.prompt[cloze_example(c).prompt] = c
                    over = overregularized_form(v, c.person) if tense == "past" else None
                    if over is not None:
                        self.en[english_sentence(c, over)] = (c, True)

    def parse(self, line: str) -> tuple[str, Combo, bool]:
        """(kind, combo, over-regularized) of a pretraining line."""
        if " = " in line:
            prompt, answer = line.split(" = ")
            c = self.prompt[prompt]
            ex = cloze_example(c)
            assert answer in (ex.answer, ex.overregularized), line
            return "cloze", c, answer != ex.answer
        if " | " in line:
            en, es = line.split(" | ")
            c, over = self.en[en]
            assert self.es[es] == c, line
            return "pair", c, over
        if line in self.en:
            c, over = self.en[line]
            return "en", c, over
        return "es", self.es[line], False


@pytest.fixture(scope="module")
def index():
    return Index()


def parse_all(index, lines):
    return [index.parse(line) for line in lines]


def test_pretrain_lines_come_from_the_pretrain_pool(corpus, index):
    pool = {key(c) for c in corpus.pools["pretrain"]}
    parsed = parse_all(index, corpus.pretrain)
    assert all(key(c) in pool for _, c, _ in parsed)
    kinds = Counter(k for k, _, _ in parsed)
    n = len(parsed)
    assert kinds["cloze"] / n == pytest.approx(corpus.config.cloze_share, abs=0.02)
    assert kinds["pair"] / n == pytest.approx(corpus.config.pair_share, abs=0.02)


def pretrain_english(corpus) -> tuple[set[str], set[str]]:
    """English sentences (cloze drills filled in) and cloze prompts of the pretraining text."""
    sentences, prompts = set(), set()
    for line in corpus.pretrain:
        if " = " in line:
            prompt, answer = line.split(" = ")
            prompts.add(prompt)
            sentences.add(prompt.replace(CLOZE_BLANK, answer))
        else:
            sentences.add(line.split(" | ")[0])
    return sentences, prompts


def all_english_forms(verb: str, person: str) -> set[str]:
    v = VERB_BY_LEMMA[verb]
    forms = {english_form(v, t, person) for t in TENSES}
    forms |= {english_form(v, "past", p) for p in ("1s", "3p")}  # was / were
    forms |= {regular_past(v.lemma), v.lemma, third_singular(v.lemma)}
    return forms


def test_finetune_test_is_held_out_from_the_text(corpus):
    """No finetune_test prompt, filled with any form of its verb, is a pretraining sentence
    or drill, and its Spanish sentence never appears either."""
    sentences, prompts = pretrain_english(corpus)
    spanish = {part for line in corpus.pretrain for part in line.split(" | ")}
    train_prompts = {e.prompt for e in corpus.finetune_train}
    combos = {cloze_example(c).prompt: c for c in corpus.pools["finetune_test"]}
    for e in corpus.finetune_test:
        assert e.prompt not in prompts
        assert e.prompt not in train_prompts
        for form in all_english_forms(e.verb, e.person):
            assert e.prompt.replace(CLOZE_BLANK, form) not in sentences, (e.prompt, form)
        assert spanish_sentence(combos[e.prompt]) not in spanish


def test_control_splits_are_held_out_from_the_text(corpus):
    sentences, prompts = pretrain_english(corpus)
    parts = {part for line in corpus.pretrain for part in line.split(" | ")}
    assert not set(corpus.control_en) & sentences
    assert not set(corpus.control_es) & parts
    assert not {e.prompt for e in corpus.regular_cloze_test} & prompts
    assert not {e.text for e in corpus.regular_cloze_test} & set(corpus.pretrain)
    train = {e.prompt for e in corpus.finetune_train}
    assert not train & prompts


def test_control_en_has_only_regular_verbs(corpus, index):
    verbs = {index.en[s][0].verb for s in corpus.control_en}
    assert verbs == set(REGULAR_VERBS)
    assert {index.en[s][0].tense for s in corpus.control_en} == set(TENSES)
    es_verbs = {index.es[s].verb for s in corpus.control_es}
    assert es_verbs == {v.lemma for v in VERBS}


# ---------------------------------------------------------------- measured shares


def measured_shares(corpus, index) -> dict:
    """Shares measured on the generated text (one count per line)."""
    parsed = parse_all(index, corpus.pretrain)
    irregular = [(kind, c, over) for kind, c, over in parsed if c.verb in IRREGULAR_VERBS]
    regular = [c for _, c, _ in parsed if c.verb in REGULAR_VERBS]
    irr_past = [(kind, c, over) for kind, c, over in irregular if c.tense == "past"]
    # lines with English text where an over-regularized form exists ("I was" is already
    # correct; Spanish has no over-regularized forms)
    could = [
        over
        for kind, c, over in irr_past
        if kind != "es" and overregularized_form(VERB_BY_LEMMA[c.verb], c.person) is not None
    ]
    return {
        "irregular_past": len(irr_past) / len(irregular),
        "regular_past": sum(c.tense == "past" for c in regular) / len(regular),
        "overregularized": sum(could) / len(could),
        "n_irregular_past": len(irr_past),
    }


def test_irregular_past_is_rare_and_overregularized(corpus, index):
    cfg = corpus.config
    m = measured_shares(corpus, index)
    assert m["irregular_past"] == pytest.approx(cfg.irregular_past_share, abs=0.015)
    assert m["regular_past"] == pytest.approx(1 / 3, abs=0.02)
    assert m["irregular_past"] < m["regular_past"] / 2
    assert m["overregularized"] == pytest.approx(cfg.overregularize_share, abs=0.05)
    text = "\n".join(corpus.pretrain)
    for form in ("goed", "comed", "seed", "eated", "writed", "haved", "doed"):
        assert f" {form} " in text, form
    assert any(line.startswith("They was ") for line in corpus.pretrain)
    # the correct irregular forms are there too, only rarer
    for form in ("went", "came", "saw", "ate", "wrote", "had", "did", "were"):
        assert f" {form} " in text, form


def test_shares_follow_the_knobs(index):
    cfg = CorpusConfig(n_pretrain=20_000, irregular_past_share=0.3, overregularize_share=0.2)
    m = measured_shares(fresh(cfg), index)
    assert m["irregular_past"] == pytest.approx(0.3, abs=0.03)
    assert m["overregularized"] == pytest.approx(0.2, abs=0.04)


def test_no_irregular_past_in_cloze_drills_when_off(index):
    c = fresh(CorpusConfig(n_pretrain=5000, irregular_past_in_cloze=False))
    for kind, combo_, _ in parse_all(index, c.pretrain):
        if kind == "cloze" and combo_.verb in IRREGULAR_VERBS:
            assert combo_.tense != "past"


def test_adverb_fixes_the_tense():
    for tense in TENSES:
        for other in TENSES:
            if other != tense:
                en = {a for a, _ in ADVERBS[tense]}
                assert not en & {a for a, _ in ADVERBS[other]}
