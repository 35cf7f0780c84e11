"""What a user types into the app and the CLI (issue 13): URL values outside the Train
page's ranges are reported and replaced by the default, never clamped silently; the
app never offers a rank the model cannot train; cloze prompts are checked before any
answer is printed (what the model refuses: tests/minigpt/test_evaluate.py); adapters
with NaN or inf weights are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import helpers  # noqa: E402
from minituner.cli import main  # noqa: E402
from minituner.finetune.config import DEFAULT_LR, FinetuneConfig  # noqa: E402
from minituner.finetune.result import load_base  # noqa: E402
from minituner.minigpt.model import preset_config  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")


@pytest.fixture(scope="module")
def fbase():
    return load_base()


# ---------------------------------------------------------------- URL parameters


@pytest.mark.parametrize(
    "query",
    [{"lr": "5"}, {"lr": "1e-9"}, {"lr": "1.5"}, {"alpha": "2000"}, {"alpha": "0.1"},
     {"r": "129"}, {"r": "256"}, {"steps": "2001"}, {"seed": str(2**31)}],
)  # fmt: skip
def test_out_of_range_url_values_are_reported_not_clamped(query):
    parsed, problems = helpers.parse_train_params(query)
    assert parsed == {}, parsed
    (problem,) = problems
    key, value = next(iter(query.items()))
    assert f"{key}={value!r}" in problem and "default" in problem


def test_in_range_url_values_are_taken():
    query = {"lr": "1", "alpha": "1024", "r": "128", "steps": "2000", "seed": "0"}
    parsed, problems = helpers.parse_train_params(query)
    assert problems == []
    assert parsed == {"lr": 1.0, "alpha": 1024.0, "r": 128, "steps": 2000, "seed": 0}


@pytest.mark.parametrize("r", [1, 2, 8, helpers.MAX_R])
@pytest.mark.parametrize("alpha", helpers.RANGES["alpha"])
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_every_alpha_the_train_page_offers_is_a_valid_config(method, r, alpha):
    """issue 23, item 9: alpha's bound (alpha/r at most 1024) leaves the page's whole
    range valid at every rank it offers, so the widget never offers a refused value."""
    FinetuneConfig(method=method, r=r, alpha=alpha)


def test_rank_limit_follows_the_model(fbase):
    assert helpers.rank_limit(fbase.model.config) == fbase.model.config.n_embd == 128
    assert helpers.rank_limit(preset_config("tiny", vocab_size=8)) == 32
    assert helpers.rank_limit() == 128  # the data folder's base model
    assert helpers.parse_train_params({"r": "40"}, max_r=32)[0] == {}


def test_config_from_choices_refuses_a_rank_the_model_cannot_take(fbase):
    choices = {**helpers.default_choices(), "r": 200}
    with pytest.raises(ValueError, match="between 1 and 128"):
        helpers.config_from_choices(choices, fbase.model.config)
    with pytest.raises(ValueError, match="between 1 and 128"):
        helpers.config_from_choices(choices)
    assert helpers.config_from_choices({**choices, "r": 128}).r == 128


def test_a_link_with_out_of_range_values_opens_with_warnings_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    at.query_params.update({"lr": "5", "r": "200", "alpha": "16"})
    at.switch_page("views/train.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = "\n".join(str(w.value) for w in at.warning)
    assert "lr='5'" in warnings and "r='200'" in warnings
    lr = at.number_input(key="train_lr")
    r = at.number_input(key="train_r")
    assert lr.value == DEFAULT_LR["lora"]  # the default, not the widget's minimum 1e-06
    assert r.value == FinetuneConfig().r
    assert r.max == 128  # no rank the 128-wide layers cannot take
    assert at.number_input(key="train_alpha").value == 16.0


# ---------------------------------------------------------------- cloze prompts


def shipped_run_id() -> str:
    return sorted(p.name for p in (REPO_ROOT / "precomputed" / "runs").iterdir())[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [([""], "empty"), (["He went to school yesterday."], "no blank"),
     (["He __ to school " + "x" * 120], "too long"),
     (["He __ to school yesterday.", "--candidates", "went," + "w" * 120], "too long"),
     (["He __ to school yesterday.", "--candidates", "went,gøed"], "'ø'")],
)  # fmt: skip
def test_complete_refuses_a_bad_prompt_before_any_output(capsys, args, needle):
    code = main(["complete", *args, "--run", shipped_run_id()])
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), (code, out, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err


@pytest.mark.parametrize(("prompt", "needle"), [("He went home.", "no blank"), ("", "empty")])
def test_the_completions_page_refuses_a_bad_prompt(tmp_path, monkeypatch, prompt, needle):
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    at.switch_page("views/completions.py")
    at.run()
    at.text_input(key="compl_prompt").set_value(prompt).run()
    assert not at.exception, [e.value for e in at.exception]
    assert needle in "\n".join(str(e.value) for e in at.error)
    assert not at.metric  # no answer shown


# ---------------------------------------------------------------- adapter weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("key", ["lora_A", "lora_B"])
def test_an_adapter_with_non_finite_weights_is_refused(tmp_path, bad, key):
    import torch

    from minituner.io import load_tensors, save_tensors
    from minituner.lora.adapter_io import ADAPTER_WEIGHTS, load_adapter, save_adapter
    from minituner.lora.inject import add_lora, lora_layers
    from minituner.minigpt.model import MiniGPT

    model = MiniGPT(preset_config("tiny", vocab_size=8))
    add_lora(model, ["q", "v"], r=2, alpha=4.0)
    save_adapter(tmp_path, model)
    file = tmp_path / ADAPTER_WEIGHTS
    tensors = load_tensors(file)
    name = f"blocks.1.attn.v_proj.{key}"
    tensors[name][0, 1] = bad
    save_tensors(file, tensors)
    fresh = MiniGPT(preset_config("tiny", vocab_size=8))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError) as exc:
        load_adapter(tmp_path, fresh)
    assert str(file) in str(exc.value) and name in str(exc.value)
    assert "NaN or infinite" in str(exc.value)
    assert not lora_layers(fresh)  # the model is unchanged
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
