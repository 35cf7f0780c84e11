"""Tests for minituner.lora.targets: target names, groups and the hyper-parameter rule."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lora_util import ALL_NAMES

from minituner.lora.targets import (
    MAX_SCALING,
    check_alpha,
    check_hparams,
    lora_scaling,
    resolve_targets,
    target_names,
)


@pytest.mark.parametrize(
    "targets,expected",
    [
        ("q,v", ["q_proj", "v_proj"]),
        (" q , v ,", ["q_proj", "v_proj"]),
        (["attn"], ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("mlp,q", ["fc_in", "fc_out", "q_proj"]),
        ("all", ALL_NAMES),
        (["q", "q_proj", "attn"], ["q_proj", "k_proj", "v_proj", "o_proj"]),
        (["lm_head", "fc_in"], ["lm_head", "fc_in"]),
    ],
)
def test_resolve_targets(targets, expected):
    assert resolve_targets(targets) == expected


def test_target_names_splits_without_expanding():
    assert target_names(" q , v ,") == ["q", "v"]
    assert target_names(["attn", "fc_in,fc_out"]) == ["attn", "fc_in", "fc_out"]
    assert target_names([]) == []
    with pytest.raises(ValueError, match=r"comma-separated string"):
        target_names(5)


def test_check_hparams_without_a_layer_checks_everything_but_the_rank_limit():
    check_hparams(4096, 16.0, 0.0, False)  # no layer: no upper bound on r
    with pytest.raises(ValueError, match=r"rank r must be a whole number >= 1, got 0"):
        check_hparams(0, 16.0, 0.0, False)
    with pytest.raises(ValueError, match=r"r=9 does not fit fc_in"):
        check_hparams(9, 16.0, 0.0, False, 8, 32, "fc_in")


def test_the_target_table_imports_no_torch():
    code = "import sys, minituner.lora.targets; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- alpha (issue 23, item 9)


@pytest.mark.parametrize(
    ("r", "alpha", "rslora"),
    [(8, 1e30, False), (8, 1e308, False), (1, 1024.5, False), (8, 8192.5, False),
     (4, 2049.0, True), (1, 1e308, True)],
)  # fmt: skip
def test_an_alpha_whose_scaling_is_over_the_limit_is_refused(r, alpha, rslora):
    """issue 23, item 9: scaling = alpha/r (alpha/sqrt(r) with rslora) multiplies every
    update; above MAX_SCALING a run overflows (1e308) or learns nothing (1e30)."""
    with pytest.raises(ValueError, match=r"LoRA alpha") as e:
        check_hparams(r, alpha, 0.0, rslora)
    assert f"{MAX_SCALING:g}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("alpha", [float("inf"), float("nan"), -1.0, 0.0])
def test_alpha_must_be_positive_and_finite(alpha):
    with pytest.raises(ValueError, match=r"LoRA alpha must be"):
        check_hparams(8, alpha, 0.0, False)
    with pytest.raises(ValueError, match=r"LoRA alpha must be"):
        check_alpha(alpha)


@pytest.mark.parametrize(
    ("r", "alpha", "rslora"),
    # the shipped runs (alpha 16, r 1..64), the app's widget range (alpha 0.5..1024, r >= 1),
    # PEFT's habit (alpha = 2r) at a large rank, and the limit itself
    [(1, 16.0, False), (64, 16.0, False), (1, 0.5, False), (1, 1024.0, False),
     (1, 1024.0, True), (4096, 8192.0, False), (8, 8192.0, False), (4, 2048.0, True)],
)  # fmt: skip
def test_the_alphas_in_use_stay_valid(r, alpha, rslora):
    check_hparams(r, alpha, 0.0, rslora)
    check_alpha(alpha)  # no rank: positive and finite
    assert lora_scaling(r, alpha, rslora) <= MAX_SCALING
