"""The experiment's claims (minituner.experiments.claims) as the shipped figures record
them: LoRA learns the verbs and keeps control perplexity, full fine-tuning drifts, the
rank sweep saturates; and the claim lines the READMEs quote."""

from __future__ import annotations

from minituner.experiments.claims import Claim, claims, claims_text
from minituner.experiments.plan import RANKS


def test_lora_keeps_control_perplexity_and_learns_the_verbs(shipped):
    r8 = shipped.rank_sweep.summary[8]
    assert r8.irregular_accuracy.mean >= 0.95
    assert r8.control_en_drift.mean <= 0.05 and r8.control_es_drift.mean <= 0.05
    assert shipped.base.irregular_accuracy < 0.5  # the base model over-regularizes
    assert shipped.base.overregularized_rate > 0.5
    for r in RANKS:
        a = shipped.rank_sweep.summary[r]
        assert a.n == 3
        assert a.irregular_accuracy.mean >= 0.9, r
        assert a.control_en_drift.mean <= 0.05, r
    for name, a in shipped.targets.items():
        assert a.control_en_drift.mean <= 0.05, name
    assert shipped.targets["q,v"] == shipped.rank_sweep.summary[8]


def test_full_finetuning_drifts_more_than_lora(shipped):
    full = shipped.rank_sweep.full
    r8 = shipped.rank_sweep.summary[8]
    assert full.irregular_accuracy.mean >= 0.95
    assert full.control_en_drift.mean > 0.05  # measured: about +9%
    assert full.control_en_drift.mean > 5 * r8.control_en_drift.mean
    assert full.regular_accuracy.mean < r8.regular_accuracy.mean
    assert full.trainable_params == 816_000 > 40 * r8.trainable_params


def test_trainable_params_grow_linearly_with_rank(shipped):
    for r in RANKS:
        # 4 layers x (q, v) x r x (128 + 128)
        assert shipped.rank_sweep.summary[r].trainable_params == 4 * 2 * r * 256


def test_elbow_is_a_swept_rank(shipped, shipped_json):
    assert shipped.rank_sweep.elbow.elbow_r in RANKS
    el = shipped_json["rank_sweep"]["elbow"]
    assert el["elbow"] == el["elbow_r"] == shipped.rank_sweep.elbow.elbow_r


def test_claims_are_lines_of_the_readme(shipped):
    found = claims(shipped)
    assert all(isinstance(c, Claim) for c in found) and len(found) == 7
    text = claims_text(shipped)
    assert text.splitlines() == [c.line() for c in found]
    assert found[0].held and text.startswith("- held: LoRA (r=8 on q,v) fixes the irregular")
