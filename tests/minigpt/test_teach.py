"""Issue 15's training core: teaching a verb of one's own (minituner.minigpt.teach), its
accuracy in the events, end to end through training and the run store. (Replay of
regular-verb pairs: tests/minigpt/test_data.py; accuracy by verb: test_evaluate.py.)"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from minituner.cli import main
from minituner.finetune import events as ev
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import load_base
from minituner.minigpt.corpus import CorpusConfig
from minituner.minigpt.data import replay_count, training_examples
from minituner.minigpt.teach import (
    MAX_VERB_CHARS,
    TEACH_COMPLEMENTS,
    TeachVerb,
    check_teach,
    check_vocab,
    teach_examples,
    teach_prompts,
    teach_split,
)
from minituner.minigpt.verbs import ADVERBS, IRREGULAR_VERBS, REGULAR_VERBS, SUBJECTS, VERBS
from minituner.store.records import MetricsRecord, RunConfig
from minituner.store.runs import RunStore, run_id

SWIM = TeachVerb("swim", "swam")


@pytest.fixture(scope="module")
def fbase():
    return load_base()


# ------------------------------------------------------------------ config and run ids
@pytest.mark.parametrize("kw", [{"replay": 0.0}, {"replay": 0}, {"teach": ""}, {"teach": "  "}])
def test_defaults_leave_the_config_and_its_run_id_unchanged(kw):
    cfg = FinetuneConfig(**kw)
    assert cfg.to_dict() == FinetuneConfig().to_dict()
    assert "replay" not in cfg.to_dict() and "teach" not in cfg.to_dict()
    assert run_id(cfg, "m", "c") == run_id(FinetuneConfig(), "m", "c")


def test_replay_and_teach_enter_the_run_id_and_survive_json():
    ids = {
        run_id(FinetuneConfig(**kw), "m", "c")
        for kw in ({}, {"replay": 0.1}, {"replay": 0.25}, {"teach": "swim:swam"},
                   {"teach": "swim:swum"}, {"teach": "swim:swam", "replay": 0.1})
    }  # fmt: skip
    assert len(ids) == 6
    cfg = FinetuneConfig(method="full", replay=0.1, teach=" Swim / Swam ")
    assert cfg.teach == "swim:swam" and cfg.replay == 0.1
    assert run_id(cfg, "m", "c") == run_id(FinetuneConfig(method="full", replay=0.1,
                                                          teach="swim:swam"), "m", "c")  # fmt: skip
    wire = json.loads(json.dumps(cfg.to_dict()))  # the worker's job
    assert FinetuneConfig.from_dict(wire) == cfg
    rec = RunConfig("0123456789ab", cfg, "b", "c")
    assert RunConfig.from_json(json.loads(json.dumps(rec.to_json())), "config.json") == rec
    assert "teach=swim:swam" in cfg.label() and "replay=0.1" in cfg.label()


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"replay": 1.0}, "replay must be"),
        ({"replay": -0.1}, "replay must be"),
        ({"replay": float("nan")}, "replay must be"),
        ({"replay": True}, "replay must be"),
        ({"replay": "0.1"}, "replay must be"),
        ({"teach": 3}, "teach must be"),
        ({"teach": "swim"}, "swim:swam"),
        ({"teach": "swim:swam:swum"}, "swim:swam"),
        ({"teach": "swim:"}, "swim:swam"),
        ({"teach": "sw1m:swam"}, "one word of letters"),
        ({"teach": "swim:swam now"}, "one word of letters"),
        ({"teach": "go:goed"}, "already one of the corpus's verbs"),
        ({"teach": "a" * (MAX_VERB_CHARS + 1) + ":b"}, "letters long"),
    ],
)
def test_bad_replay_and_teach_settings_are_named(kw, needle):
    with pytest.raises(ValueError, match=needle):
        FinetuneConfig(**kw)


# ------------------------------------------------------------------ teach: prompts
def test_teach_verb_parses_both_spellings():
    assert TeachVerb.parse("swim:swam") == TeachVerb.parse(" Swim / swam ") == SWIM
    assert str(TeachVerb.parse("blick/blocked")) == "blick:blocked"  # a made-up verb
    assert TeachVerb.parse("o'clock:o'clocked").lemma == "o'clock"


def test_teach_prompts_follow_the_corpus_template():
    corpus_complements = {en for v in VERBS for en, _ in v.complements}
    assert not corpus_complements & set(TEACH_COMPLEMENTS)  # they name the taught verb
    expected = {
        f"{s} __ {c} {a}."
        for s, _, _ in SUBJECTS
        for c in TEACH_COMPLEMENTS
        for a, _ in ADVERBS["past"]
    }
    pairs = teach_prompts(SWIM)
    assert {e.prompt for e in pairs} == expected and len(pairs) == len(expected) == 250
    assert all(e.answer == "swam" and e.verb == "swim" and e.tense == "past" for e in pairs)
    assert {e.overregularized for e in pairs} == {"swimed"}
    assert pairs[0].text == "I __ after lunch yesterday. = swam"


def test_teach_split_is_disjoint_sized_and_fixed():
    split = teach_split(SWIM)
    cfg = CorpusConfig()
    assert len(split.held_out) == cfg.finetune_test_per_verb
    assert len(split.train) == cfg.finetune_train_per_verb
    assert not {e.prompt for e in split.train} & {e.prompt for e in split.held_out}
    assert teach_split(TeachVerb.parse("Swim/swam")) == split  # no run seed in it
    other = teach_split(TeachVerb("blick", "block"))
    assert [e.prompt for e in other.held_out] != [e.prompt for e in split.held_out]
    # every complement is trained on, and held out: the verb is learned, not a phrase
    assert {c for c in TEACH_COMPLEMENTS for e in split.train if c in e.prompt} == set(
        TEACH_COMPLEMENTS
    )


def test_teach_training_data_mixes_the_irregular_pairs(corpus):
    split = teach_split(SWIM)
    data = training_examples(corpus, FinetuneConfig(teach="swim:swam", seed=2))
    assert data == teach_examples(split, corpus, 2)
    counts = Counter(e.verb for e in data)
    assert counts["swim"] == len(split.train) == sum(counts[v] for v in IRREGULAR_VERBS)
    assert {e.prompt for e in data if e.verb == "swim"} == {e.prompt for e in split.train}
    assert not {e.prompt for e in data} & {e.prompt for e in split.held_out}
    assert not {e.prompt for e in data} & {e.prompt for e in corpus.finetune_test}
    with_replay = training_examples(corpus, FinetuneConfig(teach="swim:swam", replay=0.2))
    n_regular = sum(e.verb in REGULAR_VERBS for e in with_replay)
    assert n_regular == replay_count(len(data), 0.2)


def test_check_vocab_names_every_unknown_character(base):
    assert check_vocab("swim swam", base.tok) == "swim swam"
    assert check_teach(SWIM, base.tok) == SWIM
    with pytest.raises(ValueError) as err:
        check_vocab("swøm ĉ7#ø", base.tok)
    msg = str(err.value)
    assert "\n" not in msg
    unknown = [c for c in dict.fromkeys("swøm ĉ7#ø") if c not in base.tok.stoi]
    assert unknown and all(repr(c) in msg for c in unknown)
    assert "'ĉ' (try 'c')" in msg and "abcdefghijklmnopqrstuvwxyz" in msg
    with pytest.raises(ValueError, match="'ŝ' \\(try 's'\\)"):
        check_teach(TeachVerb.parse("ŝwim:ŝwam"), base.tok)


# ------------------------------------------------------------------ accuracy by verb
def test_an_evaluation_with_a_taught_verb_round_trips_and_is_checked():
    m = {
        "irregular_accuracy": 0.5, "overregularized_rate": 0.25, "regular_accuracy": 1.0,
        "control_en_ppl": 1.4, "control_es_ppl": 1.3, "irregular_accuracy_per_verb": {"go": 1.0},
        "taught_accuracy": {"swim": 0.75},
    }  # fmt: skip
    e = ev.Evaluation.from_metrics(5, m, {"control_en_drift": 0.0, "control_es_drift": 0.0})
    assert e.verb_accuracy == {"go": 1.0, "swim": 0.75}
    assert ev.loads(ev.dumps(e)) == e
    bad = json.loads(ev.dumps(e))
    bad["taught_accuracy"] = {"swim": 1.5}
    with pytest.raises(ValueError, match=r"taught_accuracy\.swim"):
        ev.event_from_json(bad)
    bad["taught_accuracy"] = {"swim": True}
    with pytest.raises(ValueError):
        ev.event_from_json(bad)
    old = json.loads(ev.dumps(e))
    del old["taught_accuracy"]  # an older writer: no taught verb
    assert ev.event_from_json(old).taught_accuracy == {}


# ------------------------------------------------------------------ a teach run, end to end
@pytest.fixture(scope="module")
def teach_run(fbase, tmp_path_factory):
    cfg = FinetuneConfig(
        teach="swim:swam", replay=0.1, steps=3, batch_size=8, eval_every=3, eval_sample=4
    )
    events: list[ev.Event] = []
    res = finetune(cfg, fbase, device="cpu", callback=events.append, eval_limit=4)
    store = RunStore([tmp_path_factory.mktemp("runs")])
    return res, events, store, store.save(res)


def test_a_teach_run_reports_and_stores_the_taught_verb(teach_run, fbase):
    res, events, store, info = teach_run
    assert res.ok(), res.message
    evals = [e for e in events if isinstance(e, ev.Evaluation)]
    assert [e.step for e in evals] == [0, 3]
    assert all(set(e.taught_accuracy) == {"swim"} for e in evals)
    assert all(set(e.verb_accuracy) >= {"swim"} for e in evals)
    assert all(ev.loads(ev.dumps(e)) == e for e in events)
    assert set(res.metrics["taught_accuracy"]) == {"swim"}
    # stored and read back: config, final figures and every evaluation keep the verb
    again = store.find(info.run_id)
    assert again.config.finetune.teach == "swim:swam" and again.config.finetune.replay == 0.1
    assert again.run_id == run_id(res.config, fbase.model_id, fbase.metrics["corpus_version"])
    assert again.final.taught_accuracy == res.metrics["taught_accuracy"]
    assert [e.taught_accuracy for e in again.metrics.evals] == [e.taught_accuracy for e in evals]
    raw = json.loads((info.path / MetricsRecord.FILE).read_text())
    assert MetricsRecord.from_json(raw, "metrics.json") == again.metrics


def test_a_taught_verb_outside_the_vocabulary_fails_before_training(fbase):
    with pytest.raises(ValueError, match="'ŝ'"):
        finetune(FinetuneConfig(teach="ŝwim:ŝwam", steps=1), fbase, device="cpu", eval_limit=1)


def test_the_cli_refuses_bad_teach_and_replay_values(capsys):
    for argv, needle in (
        (["finetune", "--replay", "1"], "must be below 1"),
        (["finetune", "--teach", "sw1m:swam"], "one word of letters"),
        (["finetune", "--teach", "go:goed"], "already one of"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert needle in capsys.readouterr().err
    # a character the model cannot read: one error line, before any training
    assert main(["finetune", "--teach", "ŝwim:ŝwam", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: character 'ŝ' (try 's')") and err.count("\n") == 1
