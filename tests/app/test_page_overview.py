"""Issue 24 on the Overview page (AppTest, no browser): "A run to start from" shows what
the run cost beside what it learned (regular-verb accuracy and its change against the
base model), no delta that is not a change (the device was an "↑ NVIDIA H200" badge), and
the parameter share with the one definition the Train page uses.

The store holds only the shipped runs (an empty user cache), so the run shown is the
shipped default LoRA run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from app_util import shown  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import headline, helpers  # noqa: E402
from minituner.finetune.config import FinetuneConfig  # noqa: E402
from minituner.finetune.result import load_base  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180


@pytest.fixture(scope="module")
def overview(tmp_path_factory) -> AppTest:
    mp = pytest.MonkeyPatch()
    mp.setenv("MINITUNER_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        yield at
    finally:
        mp.undo()


def default_run():
    return next(r for r in RunStore().list() if r.finetune_config() == FinetuneConfig())


def run_metrics(at: AppTest) -> dict:
    """The metrics under "A run to start from" (the base model's come first, same labels)."""
    out = {}
    for m in at.metric:
        if m.proto.delta:  # only the run's figures have changes
            out[m.label] = m
    return out


def test_a_run_to_start_from_shows_regular_verb_accuracy_and_its_change(overview):
    run, base = default_run(), load_base().metrics
    figures = run_metrics(overview)
    regular = figures["regular verbs"]
    assert regular.value == helpers.pct(run.final.regular_accuracy)
    assert regular.proto.delta == headline.change(
        run.final.regular_accuracy, base["regular_accuracy"]
    )
    assert regular.proto.delta.startswith("-")  # the cost: 100 % -> about 72 %
    assert regular.proto.help.endswith(f"base model {helpers.pct(base['regular_accuracy'])}")
    assert figures["irregular verbs"].proto.delta.startswith("+")
    labels = [m.label for m in overview.metric]
    assert labels.count("regular verbs") == 2  # the base model's, then the run's
    assert "English drift" in labels


def test_no_delta_on_the_device_or_the_share(overview):
    for m in overview.metric:
        assert m.proto.delta == "" or m.proto.delta.endswith(" pts"), (m.label, m.proto.delta)
    run = default_run()
    captions = "\n".join(shown(c.value) for c in overview.caption)
    assert f"on {run.metrics.device}" in captions  # the device as text, not a badge


def test_the_parameter_share_is_the_one_the_train_page_shows(overview):
    """Over the base model's parameters: 2.01 % for the default run (it was 1.97 % here,
    over the run's own total, which counts the adapter)."""
    run, base = default_run(), load_base().metrics
    text = headline.share_text(run.metrics.trainable_params, base["num_params"])
    assert text.startswith("2.01% of the base model's 816,000")
    captions = "\n".join(c.value for c in overview.caption)
    assert text in captions and "1.97" not in captions


def test_the_share_of_a_qlora_run_is_over_the_base_model():
    """A QLoRA run's total_params leaves out its 4-bit base (35.7 % of 45,952); over the
    base model it is the LoRA share of the same rank and targets."""

    def same(r) -> bool:
        f, d = r.finetune_config(), FinetuneConfig()
        return (f.r, f.targets, f.seed, f.steps, f.teach) == (d.r, d.targets, d.seed, d.steps, "")

    runs = {r.method: r for r in RunStore().list() if same(r)}
    q, lora = runs["qlora"], runs["lora"]
    assert q.metrics.trainable_params == lora.metrics.trainable_params
    n = load_base().metrics["num_params"]
    assert headline.share_text(q.metrics.trainable_params, n) == headline.share_text(
        lora.metrics.trainable_params, n
    )
