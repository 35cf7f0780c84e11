"""spectrum.json's typed record (minituner.store.spectrum_record): built from
minituner.analysis.spectrum's output, it round-trips through JSON, and a malformed field
is refused with a one-line ValueError naming the file and the field. (The shipped runs'
spectrum.json files, and more malformed fields: the shared table of
tests/store/test_records.py.)"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from record_util import DELETE, assert_refused, set_field

from minituner.analysis import spectrum as analysis
from minituner.store.records import SCHEMA_VERSION
from minituner.store.spectrum_record import SpectrumRecord


def test_spectrum_record_from_analysis():
    import torch

    torch.manual_seed(0)
    spectra = analysis.layer_spectra({"a": torch.randn(6, 4), "b": torch.zeros(3, 5)})
    rec = SpectrumRecord.from_spectra(spectra)
    assert rec.layers["a"].shape == (6, 4) and len(rec.layers["a"].singular_values) == 4
    assert rec.layers["b"].note and rec.layers["b"].stable_rank == 0.0
    assert rec.stable_rank_mean() == pytest.approx(spectra["a"]["stable_rank"] / 2)


# ------------------------------------------------------------------ round trip
LAYER = "blocks.0.attn.q_proj"


def spectra() -> dict[str, dict]:
    torch.manual_seed(1)
    a, b = torch.randn(8, 3), torch.randn(3, 2)
    return analysis.layer_spectra({LAYER: a @ b @ torch.randn(2, 6), "blocks.1.mlp.fc_in": a})


def test_a_record_round_trips_through_json_text():
    rec = SpectrumRecord.from_spectra(spectra())
    text = json.dumps(rec.to_json())
    back = SpectrumRecord.from_json(json.loads(text), "spectrum.json")
    assert back == rec
    assert list(back.layers) == [LAYER, "blocks.1.mlp.fc_in"]  # the order is kept
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert back.layers[LAYER].shape == (8, 6) and back.layers[LAYER].rank_90 <= 2


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1), st.floats(1e-3, 1e3))
def test_any_spectrum_analysis_makes_round_trips(out, inp, seed, scale):
    delta = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * scale
    rec = SpectrumRecord.from_spectra(analysis.layer_spectra({"w": delta}))
    layer = rec.layers["w"]
    assert layer.shape == (out, inp) and len(layer.singular_values) == min(out, inp)
    assert SpectrumRecord.from_json(json.loads(json.dumps(rec.to_json())), "again") == rec


def test_a_note_may_be_null_or_missing():
    data = SpectrumRecord.from_spectra(spectra()).to_json()
    data[LAYER]["note"] = None
    assert SpectrumRecord.from_json(data, "s.json").layers[LAYER].note is None
    del data[LAYER]["note"]
    assert SpectrumRecord.from_json(data, "s.json").layers[LAYER].note is None


def test_the_stable_rank_mean_of_the_layers():
    rec = SpectrumRecord.from_spectra(spectra())
    ranks = [s.stable_rank for s in rec.layers.values()]
    assert rec.stable_rank_mean() == pytest.approx(sum(ranks) / 2)
    assert SpectrumRecord().stable_rank_mean() == 0.0


# ------------------------------------------------------------------ malformed fields
# (change, the field named in the message); more in tests/store/test_records.py
MALFORMED = {
    "version newer": (set_field(["schema_version"], SCHEMA_VERSION + 1), "schema_version"),
    "version a string": (set_field(["schema_version"], "1"), "schema_version"),
    "shape with a zero": (set_field([LAYER, "shape", 1], 0), f"{LAYER}.shape[1]"),
    "shape a string": (set_field([LAYER, "shape"], "8x6"), f"{LAYER}.shape"),
    "sv not a list": (set_field([LAYER, "singular_values"], 1.0), f"{LAYER}.singular_values"),
    "sv NaN": (set_field([LAYER, "singular_values", 1], math.nan), f"{LAYER}.singular_values[1]"),
    "normalized above 1": (set_field([LAYER, "normalized", 0], 1.5), f"{LAYER}.normalized[0]"),
    "energy negative": (set_field([LAYER, "cumulative_energy", 2], -0.1),
                        f"{LAYER}.cumulative_energy[2]"),
    "normalized long": (lambda d: d[LAYER]["normalized"].append(0.0), f"{LAYER}.normalized"),
    "stable rank negative": (set_field([LAYER, "stable_rank"], -1.0), f"{LAYER}.stable_rank"),
    "stable rank missing": (set_field([LAYER, "stable_rank"], DELETE), f"{LAYER}.stable_rank"),
    "rank_90 a float": (set_field([LAYER, "rank_90"], 1.0), f"{LAYER}.rank_90"),
    "frobenius infinite": (set_field([LAYER, "frobenius_norm"], math.inf),
                           f"{LAYER}.frobenius_norm"),
    "spectral norm a string": (set_field([LAYER, "spectral_norm"], "2"), f"{LAYER}.spectral_norm"),
    "unknown layer field": (set_field([LAYER, "colour"], "red"), f"{LAYER}.colour"),
    "layer null": (set_field([LAYER], None), LAYER),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_field_is_refused_by_name(case):
    change, field = MALFORMED[case]
    data = copy.deepcopy(SpectrumRecord.from_spectra(spectra()).to_json())
    change(data)
    assert_refused(SpectrumRecord.from_json, data, "/store/run/spectrum.json", field)
