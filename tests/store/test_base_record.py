"""The base model's metrics.json as a typed record (minituner.store.base_record): the
shipped file reads and writes back unchanged; a malformed field is refused naming the
file and the field."""

from __future__ import annotations

import copy
import json

import pytest
from record_util import DELETE, assert_refused, set_field

from minituner.minigpt.corpus import CorpusConfig
from minituner.minigpt.pretrain import PretrainConfig
from minituner.paths import base_dir
from minituner.schema import read_record
from minituner.store.base_record import BaseMetrics
from minituner.store.records import ModelFigures


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads((base_dir() / BaseMetrics.FILE).read_text(encoding="utf-8"))


def test_the_shipped_file_round_trips_unchanged(raw):
    path = base_dir() / BaseMetrics.FILE
    rec = read_record(path, BaseMetrics)
    assert isinstance(rec, ModelFigures)
    assert json.dumps(rec.to_json(), indent=1) + "\n" == path.read_text(encoding="utf-8")
    assert BaseMetrics.from_json(rec.to_json(), "again") == rec
    assert rec.irregular_accuracy == raw["irregular_accuracy"] < 0.5
    assert set(rec.irregular_accuracy_per_verb) == {
        "be", "have", "do", "go", "come", "see", "eat", "write"
    }  # fmt: skip
    assert isinstance(rec.pretrain, PretrainConfig)
    assert isinstance(rec.pretrain.corpus, CorpusConfig)
    assert (
        rec.pretrain.corpus.finetune_test_per_verb
        == raw["pretrain"]["corpus"]["finetune_test_per_verb"]
    )


MALFORMED = {
    "no accuracy": (set_field(["irregular_accuracy"], DELETE), "irregular_accuracy"),
    "accuracy a string": (set_field(["regular_accuracy"], "1"), "regular_accuracy"),
    "per-verb above 1": (set_field(["irregular_accuracy_per_verb", "go"], 2), "irregular_accuracy_per_verb.go"),
    "ppl zero": (set_field(["control_en_ppl"], 0), "control_en_ppl"),
    "params zero": (set_field(["num_params"], 0), "num_params"),
    "corpus version a number": (set_field(["corpus_version"], 1), "corpus_version"),
    "steps a string": (set_field(["pretrain", "steps"], "4000"), "pretrain.steps"),
    "unknown corpus knob": (set_field(["pretrain", "corpus", "colour"], 1), "pretrain.corpus.colour"),
    "bad pretraining": (set_field(["pretrain", "batch_size"], 0), "pretrain"),
    "a drift": (set_field(["control_en_drift"], 0.0), "control_en_drift"),
    "newer version": (set_field(["schema_version"], 2), "schema_version"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_field_is_refused_naming_file_and_field(case, raw):
    change, field = MALFORMED[case]
    data = copy.deepcopy(raw)
    change(data)
    assert_refused(BaseMetrics.from_json, data, "/base/metrics.json", field)
