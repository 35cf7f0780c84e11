"""The typed training events (minituner.finetune.events): every type survives its JSON form,
and malformed JSON is refused with a ValueError instead of being half-understood."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minituner.finetune import events as ev
from minituner.store.records import EvalPoint

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(max_size=40)
count = st.integers(min_value=0, max_value=10**9)
# an evaluation's ranges (those of its stored form, records.EvalPoint)
share = st.floats(min_value=0.0, max_value=1.0)
ppl = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False)
drift = st.floats(min_value=-1.0, exclude_min=True, allow_infinity=False)

EVENTS = st.one_of(
    st.builds(ev.Started, text, text, count, count, count),
    st.builds(ev.Phase, text, text),
    st.builds(ev.Step, count, count, finite, finite, finite),
    st.builds(
        ev.Evaluation,
        irregular_accuracy=share,
        irregular_accuracy_per_verb=st.dictionaries(text, share, max_size=8),
        overregularized_rate=share,
        regular_accuracy=share,
        control_en_ppl=ppl,
        control_es_ppl=ppl,
        control_en_drift=drift,
        control_es_drift=drift,
        step=count,
        taught_accuracy=st.dictionaries(text, share, max_size=2),
    ),
    st.builds(ev.Finished, finite, finite, finite, text),
    st.builds(ev.Stopped, text, count),
    st.builds(ev.Diverged, text, count),
    st.builds(ev.Failed, text),
)


@given(EVENTS)
def test_every_event_round_trips_through_json(e):
    line = ev.dumps(e)
    assert "\n" not in line  # one event per line on the pipe
    back = ev.loads(line)
    assert back == e and type(back) is type(e)
    assert ev.event_from_json(json.loads(json.dumps(ev.to_json(e)))) == e


def test_every_event_type_has_a_unique_tag():
    assert set(ev.EVENT_TYPES) == {
        "started", "phase", "step", "evaluation", "finished", "stopped", "diverged", "failed",
    }  # fmt: skip
    assert {t.tag for t in ev.TERMINAL} == {"finished", "stopped", "diverged", "failed"}


def test_integers_are_accepted_where_floats_belong():
    e = ev.loads('{"event":"step","step":1,"steps":2,"loss":1,"lr":0,"tokens_per_s":3}')
    assert e == ev.Step(1, 2, 1.0, 0.0, 3.0) and isinstance(e.loss, float)


def test_optional_fields_take_their_defaults():
    assert ev.loads('{"event":"phase","name":"training"}') == ev.Phase("training")
    assert (
        ev.loads(
            '{"event":"finished","wall_time_s":1.5,"irregular_accuracy":0.9,"control_en_drift":0.01}'
        ).run_id
        == ""
    )


@pytest.mark.parametrize(
    "line, needle",
    [
        ("not json", "not a JSON event line"),
        ("[1, 2]", "JSON object"),
        ('{"type": "step"}', "unknown event None"),
        ('{"event": "end"}', "unknown event 'end'"),
        ('{"event": "failed"}', "missing field 'message'"),
        ('{"event": "failed", "message": "x", "extra": 1}', "unknown fields ['extra']"),
        ('{"event": "failed", "message": 3}', "'message' has a bad value"),
        ('{"event": "stopped", "message": "x", "step": true}', "'step' has a bad value"),
        ('{"event": "stopped", "message": "x", "step": 1.5}', "'step' has a bad value"),
        ('{"event":"step","step":1,"steps":2,"loss":NaN,"lr":0,"tokens_per_s":3}', "'loss'"),
        ('{"event":"step","step":1,"steps":2,"loss":"1","lr":0,"tokens_per_s":3}', "'loss'"),
    ],
)
def test_malformed_events_are_refused(line, needle):
    with pytest.raises(ValueError) as err:
        ev.loads(line)
    assert needle in str(err.value)


def test_evaluation_from_metrics_and_its_stored_form():
    m = {
        "irregular_accuracy": 0.5, "overregularized_rate": 0.25, "regular_accuracy": 1.0,
        "control_en_ppl": 1.4, "control_es_ppl": 1.3, "irregular_accuracy_per_verb": {"go": 1.0},
    }  # fmt: skip
    e = ev.Evaluation.from_metrics(10, m, {"control_en_drift": 0.01, "control_es_drift": -0.02})
    assert e.step == 10 and e.irregular_accuracy_per_verb == {"go": 1.0}
    assert e.control_es_drift == -0.02
    rec = e.to_json()  # the stored form: the run record's evaluation point
    assert EvalPoint.from_json(rec, "metrics.json") == EvalPoint(**vars(e))
    assert rec["step"] == 10 and math.isclose(rec["control_en_ppl"], 1.4)


def test_a_nan_cannot_be_written():
    with pytest.raises(ValueError):
        ev.dumps(ev.Step(1, 2, float("nan"), 0.1, 1.0))
