"""Tests for minituner.lora.targets: target names, groups and the hyper-parameter rule."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lora_util import ALL_NAMES

from minituner.lora.targets import check_hparams, resolve_targets, target_names


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
