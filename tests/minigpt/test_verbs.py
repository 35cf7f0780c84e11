"""The verb tables and form rules (minituner.minigpt.verbs): 20 verbs, 8 irregular, the
English past and third person, and the over-regularized past a learner produces."""

from __future__ import annotations

from collections import Counter

import pytest

from minituner.minigpt.verbs import (
    IRREGULAR_VERBS,
    REGULAR_VERBS,
    VERB_BY_LEMMA,
    VERBS,
    english_form,
    overregularized_form,
    regular_past,
    third_singular,
)


def test_twenty_verbs_eight_irregular():
    assert len(VERBS) == 20
    assert set(IRREGULAR_VERBS) == {"be", "have", "do", "go", "come", "see", "eat", "write"}
    assert len(REGULAR_VERBS) == 12
    assert {"work", "play", "walk", "talk"} <= set(REGULAR_VERBS)
    assert len({v.lemma for v in VERBS}) == 20


def test_complements_are_unique_to_their_verb():
    # a sentence's complement tells its verb: this is what keeps the pools' combos apart
    seen = Counter(c for v in VERBS for c, _ in v.complements)
    assert max(seen.values()) == 1


@pytest.mark.parametrize(
    ("lemma", "past"),
    [
        ("study", "studied"),
        ("stop", "stopped"),
        ("dance", "danced"),
        ("play", "played"),
        ("work", "worked"),
        ("watch", "watched"),
        ("go", "went"),
        ("come", "came"),
        ("see", "saw"),
        ("eat", "ate"),
        ("write", "wrote"),
        ("have", "had"),
        ("do", "did"),
    ],
)
def test_past_forms(lemma, past):
    assert english_form(VERB_BY_LEMMA[lemma], "past", "3s") == past


def test_spelling_rules():
    assert regular_past("study") == "studied"
    assert regular_past("stop", double_final=True) == "stopped"
    assert regular_past("dance") == "danced"
    assert regular_past("play") == "played"
    assert third_singular("watch") == "watches"
    assert third_singular("study") == "studies"
    assert third_singular("play") == "plays"
    assert english_form(VERB_BY_LEMMA["watch"], "present", "3s") == "watches"
    assert english_form(VERB_BY_LEMMA["study"], "present", "3s") == "studies"


def test_overregularized_forms():
    forms = {
        lemma: overregularized_form(VERB_BY_LEMMA[lemma], "3s")
        for lemma in IRREGULAR_VERBS
        if lemma != "be"
    }
    assert forms == {
        "go": "goed",
        "come": "comed",
        "see": "seed",
        "eat": "eated",
        "write": "writed",
        "have": "haved",
        "do": "doed",
    }
    assert overregularized_form(VERB_BY_LEMMA["be"], "3p") == "was"  # "they was"
    assert overregularized_form(VERB_BY_LEMMA["be"], "1s") is None
    assert overregularized_form(VERB_BY_LEMMA["work"], "3s") is None
