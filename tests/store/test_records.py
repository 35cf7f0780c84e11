"""Typed run records (minituner.store.records, .spectrum_record): the shipped runs load
unchanged and round-trip, and each kind of malformed field is refused with a ValueError
naming the file and the field. (SpectrumRecord on its own: test_spectrum_record.py.)"""

from __future__ import annotations

import copy
import json
import math

import pytest
from record_util import DELETE, assert_refused, set_field

from minituner.finetune.config import FinetuneConfig
from minituner.paths import runs_dir
from minituner.schema import read_record
from minituner.store.records import SCHEMA_VERSION, EvalPoint, Figures, MetricsRecord, RunConfig
from minituner.store.spectrum_record import SpectrumRecord

RECORDS = (RunConfig, MetricsRecord, SpectrumRecord)
SHIPPED_LORA = "0e9eca154689"
SHIPPED_QLORA = "d23c57249929"


def _shipped_dirs():
    return sorted(p for p in runs_dir().iterdir() if not p.name.startswith("."))


def _load(rid: str, cls) -> dict:
    return json.loads((runs_dir() / rid / cls.FILE).read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the shipped runs
@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.FILE)
def test_every_shipped_record_loads_and_round_trips(cls):
    dirs = _shipped_dirs()
    assert len(dirs) >= 30
    for d in dirs:
        metrics = json.loads((d / MetricsRecord.FILE).read_text(encoding="utf-8"))
        if cls is SpectrumRecord and metrics.get("weights_saved") is False:
            assert not (d / cls.FILE).exists()  # a metrics-only run (frontier, replay)
            continue
        raw = json.loads((d / cls.FILE).read_text(encoding="utf-8"))
        # the first runs were written before the version was (version 1), later ones with it
        assert raw.pop("schema_version", 1) == 1
        rec = read_record(d / cls.FILE, cls)
        out = rec.to_json()
        assert out.pop("schema_version") == SCHEMA_VERSION == 1
        raw.pop("config", None)  # metrics.json's copy of config.json is not kept
        assert out == raw, d
        assert cls.from_json(rec.to_json(), "again") == rec


def test_shipped_records_have_the_expected_types():
    m = read_record(runs_dir() / SHIPPED_QLORA / MetricsRecord.FILE, MetricsRecord)
    assert m.completed and isinstance(m.final, Figures)
    assert isinstance(m.nf4_base_metrics, Figures)
    assert all(isinstance(e, EvalPoint) for e in m.evals) and m.evals[0].step == 0
    assert len(m.curves.step) == len(m.curves.loss) == 40
    assert m.memory.measured["total"] > 0 and m.memory.activations_is_estimate is True
    c = read_record(runs_dir() / SHIPPED_QLORA / RunConfig.FILE, RunConfig)
    assert c.finetune == FinetuneConfig(method="qlora") and c.run_id == SHIPPED_QLORA
    s = read_record(runs_dir() / SHIPPED_QLORA / SpectrumRecord.FILE, SpectrumRecord)
    assert s.stable_rank_mean() == pytest.approx(m.stable_rank_mean)


# ------------------------------------------------------------------ versions
def test_a_newer_schema_version_is_refused():
    data = {**_load(SHIPPED_LORA, RunConfig), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(ValueError, match=r"cfg\.json: schema_version .*newer minituner"):
        RunConfig.from_json(data, "cfg.json")
    data["schema_version"] = 1
    assert RunConfig.from_json(data, "cfg.json").run_id == SHIPPED_LORA


# ------------------------------------------------------------------ malformed fields
LAYER = "blocks.0.attn.q_proj"

# (record, change, the field named in the message)
MALFORMED = {
    "config: run_id with a newline": (RunConfig, set_field(["run_id"], SHIPPED_LORA + "\n"), "run_id"),
    "config: no finetune": (RunConfig, set_field(["finetune"], DELETE), "finetune"),
    "config: finetune null": (RunConfig, set_field(["finetune"], None), "finetune"),
    "config: seed a string": (RunConfig, set_field(["finetune", "seed"], "1"), "finetune.seed"),
    "config: rank a float": (RunConfig, set_field(["finetune", "r"], 8.5), "finetune.r"),
    "config: rank 0": (RunConfig, set_field(["finetune", "r"], 0), "finetune"),
    "config: targets a number": (RunConfig, set_field(["finetune", "targets"], 3), "finetune.targets"),
    "config: rslora a string": (RunConfig, set_field(["finetune", "rslora"], "no"), "finetune.rslora"),
    "config: unknown setting": (RunConfig, set_field(["finetune", "colour"], 1), "finetune.colour"),
    "config: base id a number": (RunConfig, set_field(["base_model_id"], 7), "base_model_id"),
    "config: extra field": (RunConfig, set_field(["extra"], 1), "extra"),
    "metrics: nothing known": (MetricsRecord, lambda d: d.clear() or d.update(x=[1]), "status"),
    "metrics: no status": (MetricsRecord, set_field(["status"], DELETE), "status"),
    "metrics: unknown status": (MetricsRecord, set_field(["status"], "done"), "status"),
    "metrics: accuracy a string": (MetricsRecord, set_field(["irregular_accuracy"], "0.9"),
                                   "irregular_accuracy"),
    "metrics: accuracy null": (MetricsRecord, set_field(["irregular_accuracy"], None),
                               "irregular_accuracy"),
    "metrics: accuracy above 1": (MetricsRecord, set_field(["regular_accuracy"], 1.5),
                                  "regular_accuracy"),
    "metrics: drift NaN": (MetricsRecord, set_field(["control_en_drift"], math.nan),
                           "control_en_drift"),
    "metrics: ppl infinite": (MetricsRecord, set_field(["control_es_ppl"], math.inf), "control_es_ppl"),
    "metrics: huge int": (MetricsRecord, set_field(["wall_time_s"], 10**400), "wall_time_s"),
    "metrics: per-verb a list": (MetricsRecord, set_field(["irregular_accuracy_per_verb"], [1]),
                                 "irregular_accuracy_per_verb"),
    "metrics: per-verb value": (MetricsRecord, set_field(["irregular_accuracy_per_verb", "go"], "x"),
                                "irregular_accuracy_per_verb.go"),
    "metrics: taught above 1": (MetricsRecord, set_field(["taught_accuracy"], {"swim": 1.5}),
                                "taught_accuracy.swim"),
    "metrics: taught a number": (MetricsRecord, set_field(["taught_accuracy"], 0.5),
                                 "taught_accuracy"),
    "metrics: eval taught bool": (MetricsRecord, set_field(["evals", 1, "taught_accuracy"],
                                                      {"swim": True}), "evals[1].taught_accuracy.swim"),
    "metrics: eval taught NaN": (MetricsRecord, set_field(["evals", 0, "taught_accuracy"],
                                                     {"swim": math.nan}), "evals[0].taught_accuracy"),
    "metrics: eval per-verb key": (MetricsRecord, set_field(["evals", 0, "irregular_accuracy_per_verb",
                                                        "go"], -0.1), "evals[0].irregular_accuracy_per_verb.go"),
    "metrics: no curves": (MetricsRecord, set_field(["curves"], DELETE), "curves"),
    "metrics: loss NaN": (MetricsRecord, set_field(["curves", "loss", 3], math.nan), "curves.loss[3]"),
    "metrics: short lr": (MetricsRecord, lambda d: d["curves"]["lr"].pop(), "curves.lr"),
    "metrics: step a float": (MetricsRecord, set_field(["curves", "step", 0], 1.0), "curves.step[0]"),
    "metrics: evals an object": (MetricsRecord, set_field(["evals"], {}), "evals"),
    "metrics: eval without step": (MetricsRecord, set_field(["evals", 1, "step"], DELETE),
                                   "evals[1].step"),
    "metrics: eval accuracy bool": (MetricsRecord, set_field(["evals", 2, "irregular_accuracy"], True),
                                    "evals[2].irregular_accuracy"),
    "metrics: params negative": (MetricsRecord, set_field(["trainable_params"], -1), "trainable_params"),
    "metrics: trainable > total": (MetricsRecord, set_field(["trainable_params"], 10**9),
                                   "trainable_params"),
    "metrics: no memory": (MetricsRecord, set_field(["memory"], DELETE), "memory"),
    "metrics: memory a string": (MetricsRecord, set_field(["memory", "measured", "total"], "1 GB"),
                                 "memory.measured.total"),
    "metrics: memory without total": (MetricsRecord, set_field(["memory", "predicted", "total"],
                                                          DELETE), "memory.predicted.total"),
    "metrics: stable rank null": (MetricsRecord, set_field(["stable_rank_mean"], None),
                                  "stable_rank_mean"),
    "metrics: unknown field": (MetricsRecord, set_field(["colour"], "red"), "colour"),
    "spectrum: empty": (SpectrumRecord, lambda d: d.clear(), "holds no layer"),
    "spectrum: layer a list": (SpectrumRecord, set_field([LAYER], []), LAYER),
    "spectrum: shape 3-D": (SpectrumRecord, set_field([LAYER, "shape"], [1, 2, 3]), f"{LAYER}.shape"),
    "spectrum: sv missing": (SpectrumRecord, set_field([LAYER, "singular_values"], DELETE),
                             f"{LAYER}.singular_values"),
    "spectrum: sv negative": (SpectrumRecord, set_field([LAYER, "singular_values", 0], -1.0),
                              f"{LAYER}.singular_values[0]"),
    "spectrum: sv short": (SpectrumRecord, lambda d: d[LAYER]["singular_values"].pop(),
                           f"{LAYER}.singular_values"),
    "spectrum: energy short": (SpectrumRecord, lambda d: d[LAYER]["cumulative_energy"].pop(),
                               f"{LAYER}.cumulative_energy"),
    "spectrum: rank_90 too big": (SpectrumRecord, set_field([LAYER, "rank_90"], 1000),
                                  f"{LAYER}.rank_90"),
    "spectrum: note a number": (SpectrumRecord, set_field([LAYER, "note"], 3), f"{LAYER}.note"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_field_is_refused_naming_file_and_field(case):
    cls, change, field = MALFORMED[case]
    data = copy.deepcopy(_load(SHIPPED_LORA, cls))
    change(data)
    assert_refused(cls.from_json, data, "/store/run/" + cls.FILE, field)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.FILE)
@pytest.mark.parametrize("value", [None, [], "x", 3, True])
def test_a_file_that_is_not_an_object_is_refused(cls, value):
    with pytest.raises(ValueError, match="f.json: the file must be a JSON object"):
        cls.from_json(value, "f.json")


def test_unfinished_runs_need_no_final_figures():
    data = _load(SHIPPED_LORA, MetricsRecord)
    stopped = {k: data[k] for k in ("message", "device", "trainable_params", "total_params",
                                    "curves", "evals", "wall_time_s")}  # fmt: skip
    rec = MetricsRecord.from_json({**stopped, "status": "stopped"}, "m.json")
    assert not rec.completed and rec.final is None and rec.memory is None
    with pytest.raises(ValueError, match="m.json: irregular_accuracy is missing"):
        MetricsRecord.from_json({**stopped, "status": "completed"}, "m.json")


def test_accuracy_by_verb_reads_old_records_and_keeps_a_taught_verb():
    data = _load(SHIPPED_LORA, MetricsRecord)
    old = MetricsRecord.from_json(data, "m.json")  # written before taught_accuracy existed
    assert old.final.taught_accuracy == {} and all(e.taught_accuracy == {} for e in old.evals)
    assert old.final.verb_accuracy == data["irregular_accuracy_per_verb"]
    assert old.evals[1].verb_accuracy == data["evals"][1]["irregular_accuracy_per_verb"]
    assert set(old.final.verb_accuracy) == {"be", "have", "do", "go", "come", "see", "eat", "write"}
    assert (
        "taught_accuracy" not in old.to_json() and "taught_accuracy" not in old.evals[0].to_json()
    )
    taught = copy.deepcopy(data)
    taught["taught_accuracy"] = {"swim": 0.5}
    for i, e in enumerate(taught["evals"]):
        e["taught_accuracy"] = {"swim": i / len(taught["evals"])}
    rec = MetricsRecord.from_json(taught, "m.json")
    assert rec.final.taught_accuracy == {"swim": 0.5}
    assert rec.final.verb_accuracy == {**data["irregular_accuracy_per_verb"], "swim": 0.5}
    assert [e.verb_accuracy["swim"] for e in rec.evals] == [
        i / len(data["evals"]) for i in range(len(data["evals"]))
    ]
    assert MetricsRecord.from_json(json.loads(json.dumps(rec.to_json())), "again") == rec
