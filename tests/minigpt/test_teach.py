"""Issue 15's training core: replay of regular-verb pairs, accuracy by verb, and teaching
a verb of one's own (minituner.minigpt.teach), end to end through training and the run store."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from minituner.cli import main
from minituner.finetune import events as ev
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import load_base
from minituner.minigpt.corpus import CorpusConfig, replay_pool
from minituner.minigpt.data import replay_count, training_examples
from minituner.minigpt.evaluate import complete, evaluate
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
