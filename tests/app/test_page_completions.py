"""Issue 24, the Completions page (AppTest, no browser): the candidates follow the
prompt (a sentence of a known verb gets its irregular past and its "-ed" form, and they
stay editable), the greedy answers and the bars are explained in one line, any number
of runs are drawn side by side with the legend naming each, and the selection and the
prompt are kept in the URL. The store is the shipped runs (empty user cache)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import page_util  # noqa: E402
from app_util import shown  # noqa: E402
from page_util import texts  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import helpers  # noqa: E402
from app.charts import completions as charts  # noqa: E402
from app.charts.common import method_color, run_color  # noqa: E402
from minituner.minigpt.candidates import candidates_for  # noqa: E402
from minituner.minigpt.corpus import build_corpus  # noqa: E402
from minituner.minigpt.verbs import (  # noqa: E402
    ADVERBS,
    SUBJECTS,
    VERB_BY_LEMMA,
    english_form,
    regular_past,
)
from minituner.store.runs import RunStore  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180
LORA, FULL, QLORA = "0e9eca154689", "1f93a78d24f8", "d23c57249929"


def open_page(query: dict | None = None) -> AppTest:
    return page_util.open_page("completions", query)


def bars(at: AppTest) -> list[dict]:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("compl_bars"))
    return json.loads(chart.proto.spec)["data"]


# ---------------------------------------------------------------------- candidates
def test_candidates_of_every_held_out_prompt_are_its_answer_and_its_ed_form():
    """The held-out prompts map to their verb: the candidates are the example's answer
    and its over-regularized form (for "be": was against were)."""
    for e in build_corpus().finetune_test:
        guess = candidates_for(e.prompt)
        assert guess is not None and guess.verb == e.verb, e.prompt
        assert guess.candidates[0] == e.answer
        if e.overregularized:
            assert guess.candidates[1] == e.overregularized


@settings(max_examples=60, deadline=None)
@given(
    subject=st.sampled_from(SUBJECTS),
    lemma=st.sampled_from(sorted(VERB_BY_LEMMA)),
    complement=st.integers(0, 4),
    adverb=st.sampled_from([en for en, _ in ADVERBS["past"]]),
    article=st.sampled_from(["", "the "]),
)
def test_a_past_sentence_of_any_verb_gets_that_verbs_forms(
    subject, lemma, complement, adverb, article
):
    """Invariant: a past-tense sentence built from a verb's complement (its article
    changed, as a user might: "the letter" for "a letter") gets that verb's past first,
    and an irregular verb's "-ed" form second."""
    verb = VERB_BY_LEMMA[lemma]
    comp = verb.complements[complement][0]
    if article and comp.split()[0] in ("a", "an"):
        comp = article + comp.split(" ", 1)[1]
    prompt = f"{subject[0]} __ {comp} {adverb}."
    guess = candidates_for(prompt)
    if guess is None:  # only where another verb shares the sentence's nouns
        return
    assert guess.verb == lemma, prompt
    assert guess.candidates[0] == english_form(verb, "past", subject[2])
    if verb.irregular and lemma != "be":
        assert guess.candidates[1] == regular_past(lemma)


def test_the_issues_sentence_gets_write_not_go():
    assert candidates_for("She __ the letter yesterday.").candidates == ["wrote", "writed"]
    assert candidates_for("Nothing __ here.") is None


def test_candidates_follow_the_prompt_and_stay_editable(empty_cache):
    at = open_page()
    assert at.text_input(key="compl_cands").value == "went, goed"
    at.text_input(key="compl_prompt").set_value("She __ the letter yesterday.").run()
    assert at.text_input(key="compl_cands").value == "wrote, writed"
    assert [t["x"] for t in bars(at)][0] == ["wrote", "writed"]
    at.text_input(key="compl_cands").set_value("wrote, writed, called").run()
    assert bars(at)[0]["x"] == ["wrote", "writed", "called"]  # the user's own list
    at.text_input(key="compl_prompt").set_value(
        "Tom __ the dinosaur yesterday."
    ).run()  # no known verb
    assert at.text_input(key="compl_cands").value == "wrote, writed, called"  # kept: typed
    at.text_input(key="compl_prompt").set_value("They __ to the park yesterday.").run()
    assert at.text_input(key="compl_cands").value == "went, goed"
    at.text_input(key="compl_prompt").set_value("Tom __ the dinosaur yesterday.").run()
    assert at.text_input(key="compl_cands").value == ""  # automatic ones do not linger
    assert "Add candidate answers" in texts(at.info)


def test_greedy_answer_and_chart_are_explained_in_one_line(empty_cache):
    at = open_page()
    md = texts(at.markdown)
    assert "Greedy answer" in md and "among these candidates only" in md
    (axis,) = [
        json.loads(c.proto.spec)["layout"]["yaxis"]["title"]["text"]
        for c in at.get("plotly_chart")
        if c.proto.id.endswith("compl_bars")
    ]
    assert axis == "probability among these candidates (%)"


# ---------------------------------------------------------------------- runs side by side
def test_any_number_of_runs_side_by_side_with_the_legend_naming_each(empty_cache):
    at = open_page({"runs": f"{LORA},{FULL},{QLORA}"})
    assert not at.warning, texts(at.warning)
    runs = {r.run_id: r for r in RunStore().list()}
    traces = bars(at)
    assert [t["name"] for t in traces] == ["base model"] + [
        helpers.short_label(runs[rid]) for rid in (LORA, FULL, QLORA)
    ]
    assert traces[0]["marker"]["color"] == method_color("base")
    for t in traces[1:]:  # each run its own shade of its method (charts/common.run_color)
        assert t["marker"]["color"] == run_color(t["meta"]["method"], t["meta"]["run"])
    assert [t["meta"]["run"] for t in traces[1:]] == [LORA, FULL, QLORA]
    labels = [m.label for m in at.metric]
    assert labels[0] == "base model's greedy answer" and len(labels) == 4
    assert all(" · seed " in shown(label) for label in labels[1:])  # the run, named
    table = at.dataframe[0].value
    assert len(table.columns) == 2 + 4  # prompt, correct, base and the three runs


def test_completions_selection_and_prompt_round_trip_through_the_url(empty_cache):
    query = {"runs": f"{FULL},{LORA}", "prompt": "We __ a poem last week."}
    at = open_page(query)
    assert at.multiselect(key="compl_runs").value == [FULL, LORA]
    assert at.text_input(key="compl_prompt").value == query["prompt"]
    assert at.text_input(key="compl_cands").value == "wrote, writed"
    assert dict(at.query_params) == query
    at.multiselect(key="compl_runs").unselect(FULL).run()
    assert at.query_params["runs"] == LORA


@pytest.mark.parametrize("query", [{"runs": "nothere1234"}, {"method": "adam"}, {"r": "x"}])
def test_bad_completions_url_values_warn(empty_cache, query):
    at = open_page(query)
    assert len([w for w in at.warning if "URL parameter" in w.value]) == 1
    assert not at.error and len(at.get("plotly_chart")) == 1


def test_candidate_bars_colour_by_method_whatever_the_order():
    probs = {"base model": {"went": 0.5}, "full x": {"went": 0.9}, "lora y": {"went": 0.1}}
    fwd = charts.candidate_bars(probs)
    rev = charts.candidate_bars(dict(reversed(probs.items())))
    colours = {t.name: t.marker.color for t in fwd.data}
    assert colours == {t.name: t.marker.color for t in rev.data}
    assert colours == {"base model": method_color("base"), "full x": run_color("full", "full x"),
                       "lora y": run_color("lora", "lora y")}  # fmt: skip
