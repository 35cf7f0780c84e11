"""The fine-tuning loop (minituner.finetune.loop) on the CPU: a frozen base, the event stream,
determinism, stopping, divergence, config validation, full fine-tuning and the metrics
(with predicted = measured memory for fp32 training).

A full evaluation costs several seconds here, so only ``lora_run`` pays for the real
final evaluation; the other runs cap every evaluation at ``EVAL_CAP`` items per split
with ``finetune(..., eval_limit=...)``, which does not touch training.
"""

from __future__ import annotations

import math

import pytest
import torch

from minituner.finetune import events as ev
from minituner.finetune import loop as train
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import LOSS_FACTOR, Training, evaluation_collapse, finetune
from minituner.finetune.result import full_delta, load_base, weight_delta
from minituner.lora.inject import lora_layers
from minituner.lora.layer import LoRALinear
from minituner.store.runs import RunStore

EVAL_CAP = 4  # items per split in the cheap evaluation
SMALL = dict(steps=4, batch_size=8, eval_every=2, eval_sample=4)


@pytest.fixture(scope="module")
def fbase():
    return load_base()


@pytest.fixture(scope="module")
def base_state(fbase):
    """The base model's state before any fine-tune of this module ran."""
    return {k: v.detach().clone() for k, v in fbase.model.state_dict().items()}


@pytest.fixture(scope="module")
def lora_run(fbase, base_state):
    """One LoRA fine-tune with the real (full) final evaluation, and its events."""
    flags = {n: p.requires_grad for n, p in fbase.model.named_parameters()}
    training = fbase.model.training
    events: list[ev.Event] = []
    res = finetune(
        FinetuneConfig(method="lora", seed=0, **SMALL), fbase, device="cpu", callback=events.append
    )
    return res, events, flags, training


def _cheap_run(fbase, **kw):
    cfg = {**SMALL, **kw}
    return finetune(FinetuneConfig(**cfg), fbase, device="cpu", eval_limit=EVAL_CAP)


# ------------------------------------------------------------------ frozen base


def test_lora_run_completes(lora_run):
    res = lora_run[0]
    assert res.status == "completed", res.message
    assert res.ok() and res.message == ""
    assert res.model is not None


def test_frozen_base_weights_are_bit_identical(lora_run, base_state):
    res = lora_run[0]
    checked = 0
    for name, t in res.model.state_dict().items():
        if "lora_" in name:
            continue
        base_name = name.replace(".base.", ".")
        assert base_name in base_state, name
        assert torch.equal(t, base_state[base_name]), f"{name} changed during LoRA training"
        checked += 1
    assert checked == len(base_state)


def test_base_model_object_is_unchanged(lora_run, fbase, base_state):
    res, _, flags, training = lora_run
    assert res.base is fbase
    sd = fbase.model.state_dict()
    assert sd.keys() == base_state.keys()
    for k, v in base_state.items():
        assert torch.equal(sd[k], v), k
    assert not any(isinstance(m, LoRALinear) for m in fbase.model.modules())
    assert {n: p.requires_grad for n, p in fbase.model.named_parameters()} == flags
    assert fbase.model.training == training
    assert all(p.device.type == "cpu" for p in fbase.model.parameters())
    assert res.model is not fbase.model


def test_only_lora_parameters_are_trainable(lora_run):
    res = lora_run[0]
    trainable = {n for n, p in res.model.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    assert all(n.endswith(("lora_A", "lora_B")) for n in trainable), trainable
    layers = lora_layers(res.model)
    assert sorted(layers) == sorted(
        f"blocks.{i}.attn.{p}" for i in range(len(res.model.blocks)) for p in ("q_proj", "v_proj")
    )
    assert trainable == {f"{p}.lora_{ab}" for p in layers for ab in "AB"}
    # training moved B away from its zero init, so the update is not empty
    assert all(layer.lora_B.abs().max() > 0 for layer in layers.values())
    n_lora = sum(p.numel() for n, p in res.model.named_parameters() if p.requires_grad)
    assert res.metrics["trainable_params"] == n_lora
    assert res.metrics["total_params"] == sum(p.numel() for p in res.model.parameters())


# ------------------------------------------------------------------ events


def test_events_come_in_order(lora_run):
    _, events, _, _ = lora_run
    kinds = [(type(e).__name__, getattr(e, "step", getattr(e, "name", None))) for e in events]
    assert kinds == [
        ("Phase", "preparing"),
        ("Started", None),
        ("Evaluation", 0),
        ("Phase", "training"),
        ("Step", 1),
        ("Step", 2),
        ("Evaluation", 2),
        ("Step", 3),
        ("Step", 4),
        ("Evaluation", 4),
        ("Phase", "final evaluation"),
        ("Finished", None),
    ]
    start = events[1]
    assert start.device == "CPU" and start.steps == 4
    assert start.label == FinetuneConfig(method="lora", seed=0, **SMALL).label()
    assert start.trainable_params == 16384
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert all(e.steps == 4 for e in steps)
    assert all(math.isfinite(e.loss) and e.loss > 0 for e in steps)
    assert all(e.lr > 0 and e.tokens_per_s > 0 for e in steps)
    assert events[2].control_en_drift == 0.0 and events[2].control_es_drift == 0.0
    end = events[-1]
    assert end.irregular_accuracy == lora_run[0].metrics["irregular_accuracy"]
    assert end.run_id == ""  # in-process runs are not stored by the loop


def test_every_event_survives_its_json_form(lora_run):
    for e in lora_run[1]:
        assert ev.loads(ev.dumps(e)) == e


def test_curves_and_evals_match_the_events(lora_run):
    res, events, _, _ = lora_run
    steps = [e for e in events if isinstance(e, ev.Step)]
    c = res.metrics["curves"]
    assert c["step"] == [1, 2, 3, 4]
    assert c["loss"] == [e.loss for e in steps]
    assert c["lr"] == [e.lr for e in steps]
    assert len(c["tokens_per_s"]) == 4
    evals = [e for e in events if isinstance(e, ev.Evaluation)]
    assert res.metrics["evals"] == [e.to_json() for e in evals]
    assert [e["step"] for e in res.metrics["evals"]] == [0, 2, 4]


def test_training_object_holds_the_result(fbase):
    run = Training(FinetuneConfig(**SMALL), fbase, "cpu", eval_limit=EVAL_CAP)
    assert run.result is None
    last = list(run)[-1]
    assert isinstance(last, ev.Finished) and run.result.ok()
    with pytest.raises(ValueError, match="eval_limit"):
        Training(FinetuneConfig(**SMALL), fbase, "cpu", eval_limit=0)


def test_eval_limit_caps_every_evaluation(fbase, monkeypatch):
    seen = []
    real = train.evaluate

    def spy(model, tok, corpus, base_metrics=None, sample=None):
        seen.append(sample)
        return real(model, tok, corpus, base_metrics=base_metrics, sample=sample)

    monkeypatch.setattr(train, "evaluate", spy)
    res = _cheap_run(fbase)
    assert res.ok() and seen and all(s == EVAL_CAP for s in seen)
    assert res.metrics["eval_limit"] == EVAL_CAP


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_runs(fbase):
    kw = dict(method="lora", dropout=0.1, seed=3)  # dropout draws from the seeded RNG too
    a = _cheap_run(fbase, **kw)
    b = _cheap_run(fbase, **kw)
    assert a.ok() and b.ok()
    assert a.metrics["curves"]["loss"] == b.metrics["curves"]["loss"]
    la, lb = lora_layers(a.model), lora_layers(b.model)
    assert la.keys() == lb.keys()
    for p in la:
        assert torch.equal(la[p].lora_A, lb[p].lora_A), p
        assert torch.equal(la[p].lora_B, lb[p].lora_B), p
    c = _cheap_run(fbase, **{**kw, "seed": 4})
    assert c.metrics["curves"]["loss"] != a.metrics["curves"]["loss"]
    p0 = next(iter(la))
    assert not torch.equal(lora_layers(c.model)[p0].lora_A, la[p0].lora_A)


# ------------------------------------------------------------------ stop, diverge


def test_should_stop_stops_between_steps(fbase):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2  # allow two steps, then stop

    events: list[ev.Event] = []
    res = finetune(
        FinetuneConfig(**SMALL), fbase, "cpu", events.append, should_stop=stop, eval_limit=EVAL_CAP
    )
    assert res.status == "stopped"
    assert not res.ok()
    assert res.model is None
    assert "after 2 steps" in res.message
    assert res.metrics["curves"]["step"] == [1, 2]
    assert [e.step for e in events if isinstance(e, ev.Step)] == [1, 2]
    assert events[-1] == ev.Stopped(res.message, 2)
    assert "irregular_accuracy" not in res.metrics  # no final evaluation of a stopped run


def test_nan_loss_diverges_and_is_never_stored(fbase, monkeypatch, tmp_path):
    def nan_loss(model, x, y):
        return model(x).sum() * float("nan")  # a NaN with a graph, as a real blow-up gives

    monkeypatch.setattr(train, "_masked_loss", nan_loss)
    res = _cheap_run(fbase)
    assert res.status == "diverged"
    assert res.model is None
    assert "nan" in res.message and "learning rate" in res.message
    assert res.metrics["curves"]["loss"] == []  # the NaN never enters the curves
    store = RunStore([tmp_path], save_root=tmp_path)
    with pytest.raises(ValueError, match="diverged"):
        store.save(res)
    assert list(tmp_path.iterdir()) == []
    assert store.list() == []


def test_exploding_loss_diverges(fbase, monkeypatch):
    real = train._masked_loss
    calls = []

    def exploding(model, x, y):
        calls.append(1)
        loss = real(model, x, y)
        return loss * (1.0 if len(calls) < 3 else 2 * LOSS_FACTOR)

    monkeypatch.setattr(train, "_masked_loss", exploding)
    res = _cheap_run(fbase)
    assert res.status == "diverged"
    assert "at step 3" in res.message
    assert res.metrics["curves"]["step"] == [1, 2]


@pytest.mark.parametrize("lr", [10.0, 100.0])
def test_a_huge_learning_rate_diverges_and_is_not_stored(fbase, lr, tmp_path):
    """Issue 13: LoRA at lr 10 or 100 was stored as "completed" with accuracy 0."""
    res = _cheap_run(fbase, lr=lr)
    assert res.status == "diverged", res.metrics.get("control_en_drift")
    assert "learning rate" in res.message
    with pytest.raises(ValueError, match="diverged"):
        RunStore([tmp_path], save_root=tmp_path).save(res)


def _evaluation(drift_en: float, drift_es: float = 0.0) -> ev.Evaluation:
    return ev.Evaluation(
        irregular_accuracy=0.5, irregular_accuracy_per_verb={}, overregularized_rate=0.1,
        regular_accuracy=0.9, control_en_ppl=1.4, control_es_ppl=1.3,
        control_en_drift=drift_en, control_es_drift=drift_es, step=10,
    )  # fmt: skip


def test_evaluation_collapse_is_judged_on_control_perplexity():
    assert evaluation_collapse(_evaluation(0.09)) is None  # full FT's usual drift
    assert evaluation_collapse(_evaluation(0.49, 0.49)) is None
    msg = evaluation_collapse(_evaluation(0.0, 0.6))
    assert msg and "Spanish" in msg and "1.6x" in msg
    assert evaluation_collapse(_evaluation(float("inf"))) is not None


def test_a_collapsed_evaluation_ends_the_run_as_diverged(fbase, monkeypatch):
    real = train.evaluate
    calls = []

    def collapsing(model, tok, corpus, base_metrics=None, sample=None):
        m = real(model, tok, corpus, base_metrics=base_metrics, sample=sample)
        calls.append(1)
        if len(calls) > 1:  # after the base model's: English perplexity tripled
            m = {**m, "control_en_ppl": 3 * m["control_en_ppl"]}
        return m

    monkeypatch.setattr(train, "evaluate", collapsing)
    events: list[ev.Event] = []
    res = finetune(FinetuneConfig(**SMALL), fbase, "cpu", events.append, eval_limit=EVAL_CAP)
    assert res.status == "diverged" and res.model is None
    assert "collapsed" in res.message and "at step 2" in res.message
    assert isinstance(events[-1], ev.Diverged) and events[-1].step == 2


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kw, needles",
    [
        (dict(method="foo"), ["unknown method 'foo'", "full, lora, qlora"]),
        (dict(r=0), ["rank r", ">= 1", "got 0"]),
        (dict(r=-1), ["rank r", "got -1"]),
        (dict(alpha=0), ["alpha", "positive", "got 0"]),
        (dict(lr=-1), ["learning rate", "positive", "got -1"]),
        (dict(lr=float("nan")), ["learning rate", "positive", "nan"]),
        (dict(steps=0), ["steps", ">= 1", "got 0"]),
        (dict(dropout=1.0), ["dropout", "[0, 1)", "1.0"]),
        (dict(targets=()), ["target"]),
    ],
)
def test_bad_config_raises_a_readable_value_error(kw, needles):
    with pytest.raises(ValueError) as e:
        FinetuneConfig(**kw)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_unknown_target_is_rejected_by_the_config():
    with pytest.raises(ValueError, match="q_proj"):
        FinetuneConfig(targets=("zz",))


@pytest.mark.parametrize(
    "kw",
    [
        {"alpha": "x"},
        {"dropout": "x"},
        {"warmup": "x"},
        {"weight_decay": "x"},
        {"grad_clip": "x"},
        {"targets": 5},
        {"alpha": float("inf")},
        {"grad_clip": 0},
    ],
)
def test_non_numeric_settings_raise_value_error(kw):
    with pytest.raises(ValueError):
        FinetuneConfig(**kw)


def test_unknown_target_is_rejected_before_training(fbase, monkeypatch):
    def no_eval(*a, **k):
        raise AssertionError("evaluated before the targets were checked")

    monkeypatch.setattr(train, "evaluate", no_eval)
    with pytest.raises(ValueError) as e:
        finetune(FinetuneConfig(targets=("zz",), **SMALL), fbase, device="cpu")
    msg = str(e.value)
    assert "'zz'" in msg
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"):
        assert name in msg


# ------------------------------------------------------------------ full fine-tuning


@pytest.fixture(scope="module")
def full_run(fbase, base_state):
    return _cheap_run(fbase, method="full", lr=1e-3, warmup=0)


def test_full_finetuning_updates_every_parameter(full_run, fbase, base_state):
    res = full_run
    assert res.ok(), res.message
    named = dict(res.model.named_parameters())
    assert named and all(p.requires_grad for p in named.values())
    for name, p in named.items():
        assert not torch.equal(p.detach(), base_state[name]), f"{name} was not updated"
    total = sum(p.numel() for p in fbase.model.parameters())
    assert res.metrics["trainable_params"] == res.metrics["total_params"] == total
    assert not lora_layers(res.model)
    deltas = weight_delta(res)
    assert deltas and all(k.startswith("blocks.") for k in deltas)
    assert set(full_delta(res)) == set(named)
    for k, v in fbase.model.state_dict().items():  # the base stayed put
        assert torch.equal(v, base_state[k]), k


# ------------------------------------------------------------------ metrics

METRIC_KEYS = (
    "irregular_accuracy",
    "irregular_accuracy_per_verb",
    "overregularized_rate",
    "regular_accuracy",
    "control_en_ppl",
    "control_es_ppl",
    "control_en_drift",
    "control_es_drift",
    "trainable_params",
    "total_params",
    "wall_time_s",
    "device",
    "status",
    "curves",
    "evals",
    "memory",
)
VERBS = {"be", "have", "do", "go", "come", "see", "eat", "write"}


def test_metrics_have_every_key(lora_run, fbase):
    m = lora_run[0].metrics
    missing = [k for k in METRIC_KEYS if k not in m]
    assert not missing, missing
    assert m["status"] == "completed" and m["device"] == "CPU"
    assert set(m["irregular_accuracy_per_verb"]) == VERBS  # the full split has all 8 verbs
    for k in ("irregular_accuracy", "overregularized_rate", "regular_accuracy"):
        assert 0.0 <= m[k] <= 1.0
    for lang in ("en", "es"):
        ppl, base_ppl = m[f"control_{lang}_ppl"], fbase.metrics[f"control_{lang}_ppl"]
        assert m[f"control_{lang}_drift"] == pytest.approx(ppl / base_ppl - 1, abs=1e-12)
    assert m["wall_time_s"] > 0
    assert set(m["memory"]) == {"predicted", "measured"}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_predicted_memory_equals_measured_for_fp32_cpu(method, lora_run, full_run):
    res = lora_run[0] if method == "lora" else full_run
    pred, meas = res.metrics["memory"]["predicted"], res.metrics["memory"]["measured"]
    for key in ("weights", "gradients", "optimizer", "lora", "nf4"):
        assert pred[key] == meas[key], (key, pred[key], meas[key])
    assert pred["states_total"] == meas["total"]
    assert meas["device"] == "cpu"
    n = res.metrics["total_params"]
    if method == "full":
        assert meas["gradients"] == 4 * n and meas["lora"] == 0
        assert meas["optimizer"] >= 8 * n
    else:
        n_lora = res.metrics["trainable_params"]
        assert meas["lora"] == meas["gradients"] == 4 * n_lora
    assert pred["activations_is_estimate"] is True and pred["activations"] > 0
