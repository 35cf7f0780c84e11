"""The base model's metrics.json as a typed record (minituner.store.base_record): the
shipped file reads and writes back unchanged; a malformed field is refused naming the
file and the field."""

from __future__ import annotations

import copy
import json

import pytest

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


def _set(path: list, value):
    def change(d):
        for k in path[:-1]:
            d = d[k]
        if value is DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value

    return change


DELETE = object()
MALFORMED = {
    "no accuracy": (_set(["irregular_accuracy"], DELETE), "irregular_accuracy"),
    "accuracy a string": (_set(["regular_accuracy"], "1"), "regular_accuracy"),
    "per-verb above 1": (_set(["irregular_accuracy_per_verb", "go"], 2), "irregular_accuracy_per_verb.go"),
    "ppl zero": (_set(["control_en_ppl"], 0), "control_en_ppl"),
    "params zero": (_set(["num_params"], 0), "num_params"),
    "corpus version a number": (_set(["corpus_version"], 1), "corpus_version"),
    "steps a string": (_set(["pretrain", "steps"], "4000"), "pretrain.steps"),
    "unknown corpus knob": (_set(["pretrain", "corpus", "colour"], 1), "pretrain.corpus.colour"),
    "bad pretraining": (_set(["pretrain", "batch_size"], 0), "pretrain"),
    "a drift": (_set(["control_en_drift"], 0.0), "control_en_drift"),
    "newer version": (_set(["schema_version"], 2), "schema_version"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_field_is_refused_naming_file_and_field(case, raw):
    change, field = MALFORMED[case]
    data = copy.deepcopy(raw)
    change(data)
    with pytest.raises(ValueError) as e:
        BaseMetrics.from_json(data, "/base/metrics.json")
    msg = str(e.value)
    assert msg.startswith("/base/metrics.json: "), msg
    assert field in msg.split(": ", 1)[1], msg
