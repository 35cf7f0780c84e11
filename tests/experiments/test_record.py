"""experiments.json as a typed record (minituner.experiments.record and its sections): the
shipped file reads and writes back byte for byte; a malformed field is refused with a
ValueError naming the file and the field; the app's lenient read keeps the good sections
and names the bad ones."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from record_util import (
    DEEP,
    DELETE,
    assert_refused,
    mutated_text,
    node_paths,
    replacements,
    set_field,
)

from minituner.experiments.record import ExperimentsRecord, read_experiments
from minituner.experiments.record_grids import Frontier, GridConfig, Replay
from minituner.experiments.record_sections import Aggregate, MeanStd, RankSweep
from minituner.io import read_json, write_json
from minituner.paths import experiments_file


def test_the_shipped_file_round_trips_byte_for_byte(shipped, tmp_path):
    path = tmp_path / "experiments.json"
    write_json(path, shipped.to_json())
    assert path.read_text(encoding="utf-8") == experiments_file().read_text(encoding="utf-8")
    assert ExperimentsRecord.from_json(shipped.to_json(), "again") == shipped


def test_the_shipped_record_has_the_expected_types(shipped):
    assert isinstance(shipped.rank_sweep, RankSweep)
    assert list(shipped.rank_sweep.summary) == shipped.rank_sweep.ranks == [1, 2, 4, 8, 16, 32, 64]
    a = shipped.forgetting["qlora"]
    assert isinstance(a, Aggregate) and isinstance(a.irregular_accuracy, MeanStd)
    assert a.nf4_base is not None and shipped.forgetting["lora"].nf4_base is None
    assert isinstance(shipped.frontier, Frontier) and isinstance(shipped.replay, Replay)
    assert all(isinstance(c, GridConfig) for c in shipped.frontier.configs)
    assert [c.r for c in shipped.replay.full] == [None] * 4  # full fine-tuning has no rank
    assert shipped.truncation.k[-1] == "full" and shipped.missing == []
    assert shipped.problems == {}


# (change, the field named in the message)
MALFORMED = {
    "no base": (set_field(["base"], DELETE), "base"),
    "base accuracy above 1": (set_field(["base", "irregular_accuracy"], 1.5), "base.irregular_accuracy"),
    "ranks a string": (set_field(["rank_sweep", "ranks"], "1,2"), "rank_sweep.ranks"),
    "a rank without its summary": (set_field(["rank_sweep", "summary", "8"], DELETE),
                                   "rank_sweep.summary"),
    "mean a string": (set_field(["rank_sweep", "summary", "8", "irregular_accuracy_mean"], "0.9"),
                      "rank_sweep.summary.8.irregular_accuracy_mean"),
    "std missing": (set_field(["targets", "mlp", "control_en_drift_std"], DELETE),
                    "targets.mlp.control_en_drift_std"),
    "std negative": (set_field(["forgetting", "lora", "final_loss_std"], -1.0),
                     "forgetting.lora.final_loss_std"),
    "n disagrees": (set_field(["forgetting", "full", "n"], 2), "forgetting.full.n"),
    "params a float": (set_field(["targets", "all", "trainable_params"], 1.5),
                       "targets.all.trainable_params"),
    "unknown field": (set_field(["targets", "q,v", "colour"], "red"), "targets.q,v.colour"),
    "nf4 base malformed": (set_field(["forgetting", "qlora", "nf4_base", "regular_accuracy"], None),
                           "forgetting.qlora.nf4_base.regular_accuracy"),
    "elbow disagrees": (set_field(["rank_sweep", "elbow", "elbow"], 64), "rank_sweep.elbow.elbow"),
    "best lr a string": (set_field(["full_lr_search", "best_lr"], "1e-3"), "full_lr_search.best_lr"),
    "lr run without id": (set_field(["full_lr_search", "runs", 1, "run_id"], DELETE),
                          "full_lr_search.runs[1].run_id"),
    "front index too big": (set_field(["frontier", "fronts", "control_en_drift", "lora", 0], 99),
                            "frontier.fronts.control_en_drift.lora[0]"),
    "per-seed list short": (lambda d: d["frontier"]["configs"][3]["per_seed"]
                            ["regular_accuracy"].pop(), "frontier.configs[3]"),
    "matched short": (lambda d: d["frontier"]["matched"]["regular_accuracy"]["lora"].pop(),
                      "frontier.matched.regular_accuracy.lora"),
    "replay share above 1": (set_field(["replay", "lora", 1, "replay"], 2.0), "replay.lora[1].replay"),
    "truncation k zero": (set_field(["truncation", "k", 0], 0), "truncation.k[0]"),
    "truncation short": (lambda d: d["truncation"]["control_es_drift"].pop(),
                         "truncation.control_es_drift"),
    "missing a number": (set_field(["missing"], [3]), "missing[0]"),
    "newer version": (set_field(["schema_version"], 2), "schema_version"),
    "extra section": (set_field(["extra"], {}), "extra"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_field_is_refused_naming_file_and_field(case, shipped_json):
    change, field = MALFORMED[case]
    data = copy.deepcopy(shipped_json)
    change(data)
    assert_refused(ExperimentsRecord.from_json, data, "/data/experiments.json", field)


@pytest.mark.parametrize("value", [None, [], "x", 3])
def test_a_file_that_is_not_an_object_is_refused(value):
    with pytest.raises(ValueError, match="e.json: the file must be a JSON object"):
        ExperimentsRecord.from_json(value, "e.json")
    with pytest.raises(ValueError, match="e.json: the file must be a JSON object"):
        ExperimentsRecord.from_json(value, "e.json", lenient=True)


def test_a_missing_or_invalid_file_names_it(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_experiments(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_experiments(bad)


def test_older_files_lack_the_grids_and_regular_accuracy(shipped_json):
    old = {k: v for k, v in shipped_json.items() if k not in ("frontier", "replay", "truncation")}
    old = json.loads(json.dumps(old))
    for a in old["targets"].values():
        del a["regular_accuracy_mean"], a["regular_accuracy_std"]
    rec = ExperimentsRecord.from_json(old, "old.json")
    assert rec.frontier is rec.replay is rec.truncation is None
    assert rec.targets["mlp"].regular_accuracy is None
    assert rec.to_json() == old


def test_a_lenient_read_keeps_the_good_sections_and_names_the_bad(shipped_json, shipped):
    data = copy.deepcopy(shipped_json)
    data["frontier"] = {"configs": [{"method": "lora"}]}
    data["replay"] = {"lora": [{}]}
    del data["targets"]
    rec = ExperimentsRecord.from_json(data, "e.json", lenient=True)
    assert rec.frontier is rec.replay is rec.targets is None
    assert set(rec.problems) == {"frontier", "replay"}  # a missing section is no problem
    assert rec.problems["frontier"].startswith("e.json: frontier.")
    assert rec.rank_sweep == shipped.rank_sweep and rec.forgetting == shipped.forgetting
    with pytest.raises(ValueError, match="e.json: targets is missing"):
        ExperimentsRecord.from_json(data, "e.json")  # a strict read refuses the file


SHIPPED_DOC = json.loads(experiments_file().read_text(encoding="utf-8"))
SHIPPED_PATHS = node_paths(SHIPPED_DOC)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(SHIPPED_PATHS), value=replacements())
def test_any_damaged_node_is_a_value_error_or_a_lenient_problem(path, value):
    """issue 23, item 6: any node of the shipped experiments.json replaced by a list, a
    number, a string, null, an object or a 100,000-deep nesting: the strict reader raises
    ValueError and nothing else (was: TypeError, AttributeError, RecursionError …); the
    lenient reader (the app's) records the problem for the section instead."""
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "experiments.json"
        file.write_text(mutated_text(SHIPPED_DOC, path, value), encoding="utf-8")
        try:
            read_experiments(file)
        except ValueError as e:
            assert "\n" not in str(e) and "experiments.json" in str(e)
        try:
            doc = read_json(file)
        except ValueError:
            assert value == DEEP or not path  # the file as a whole: the page warns
            return
        in_section = len(path) >= 1 and path[0] in {f.name for f in fields(ExperimentsRecord)}
        if not in_section:  # the root or schema_version: refused as a whole
            try:
                ExperimentsRecord.from_json(doc, str(file), lenient=True)
            except ValueError:
                pass
            return
        rec = ExperimentsRecord.from_json(doc, str(file), lenient=True)
        if path[0] in rec.problems:
            assert getattr(rec, path[0]) is None
        assert set(rec.problems) <= {path[0]}


def test_a_special_experiments_file_is_a_value_error(tmp_path):
    """issue 23, items 4 and 6: a FIFO or a link to /dev/zero is refused at once."""
    fifo, dev = tmp_path / "fifo.json", tmp_path / "dev.json"
    os.mkfifo(fifo)
    dev.symlink_to("/dev/zero")
    for path in (fifo, dev):
        with pytest.raises(ValueError, match="not a regular file"):
            read_experiments(path)
