"""app/live.py: which pending Streamlit requests end a fragment's wait for news."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequestType

from app import live

FRAGMENT = "f1"


def ctx(state: ScriptRequestType, rerun: RerunData | None = None):
    return SimpleNamespace(
        script_requests=SimpleNamespace(_state=state, _rerun_data=rerun or RerunData())
    )


def widgets(pressed: bool) -> WidgetStates:
    ws = WidgetStates()
    w = ws.widgets.add()
    w.id, w.int_value = "$$ID-x-train_steps", 40
    b = ws.widgets.add()
    b.id, b.trigger_value = "$$ID-y-train_start", pressed
    return ws


def test_nothing_pending_keeps_waiting():
    assert not live.request_pending(ctx(ScriptRequestType.CONTINUE))


def test_stop_and_whole_page_reruns_end_the_wait():
    assert live.request_pending(ctx(ScriptRequestType.STOP))
    assert live.request_pending(ctx(ScriptRequestType.RERUN, RerunData()))  # a choice changed


def test_the_poll_timer_does_not_end_the_wait():
    timer = RerunData(
        fragment_id_queue=[FRAGMENT], is_auto_rerun=True, widget_states=widgets(False)
    )
    assert not live.request_pending(ctx(ScriptRequestType.RERUN, timer))


def test_a_click_inside_the_fragment_ends_the_wait():
    click = RerunData(fragment_id_queue=[FRAGMENT], widget_states=widgets(True))
    assert live.request_pending(ctx(ScriptRequestType.RERUN, click))
    # a timer tick folded into the click keeps is_auto_rerun=True but not the press
    folded = replace(click, is_auto_rerun=True)
    assert live.request_pending(ctx(ScriptRequestType.RERUN, folded))


def test_an_explicit_fragment_rerun_ends_the_wait():
    scoped = RerunData(fragment_id_queue=[FRAGMENT], is_fragment_scoped_rerun=True)
    assert live.request_pending(ctx(ScriptRequestType.RERUN, scoped))


def test_unknown_internals_count_as_pending():
    assert live.request_pending(SimpleNamespace())


def test_clicked():
    assert not live.clicked(None)
    assert not live.clicked(widgets(False))
    assert live.clicked(widgets(True))


def test_a_job_in_the_url_is_a_positive_whole_number_or_nothing():
    """?job=<id> opens a run of the class: anything else is ignored (the tab's own run)."""
    assert live_follow().job_from_url("12") == 12 and live_follow().job_from_url(["7"]) == 7
    for bad in (None, "", "0", "-3", "1.5", "abc", [], "<b>1</b>"):
        assert live_follow().job_from_url(bad) is None, bad


def live_follow():
    from app import follow

    return follow
