"""The Spectrum page's subspace-similarity section under AppTest (no browser): heatmaps
of the shipped precomputed/subspace.json, a sentence generated from its numbers, and a
note or a warning (never an exception) for a missing or malformed file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from minituner.analysis import subspace_record  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180


def spectrum_page() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/spectrum.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def heatmaps(at: AppTest) -> list[dict]:
    """The figures (plotly JSON) of the page's charts that hold heatmaps."""
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [f for f in figs if any(t.get("type") == "heatmap" for t in f["data"])]


def texts(elements) -> str:
    """What the elements show (the app's escapes of outside text taken out)."""
    from app_util import shown

    return "\n".join(shown(str(e.value)) for e in elements)


def excess(pair: subspace_record.Pair, i: int, j: int) -> float:
    """Mean over kinds of (mean over layers of φ(i, j)) − max(i, j)/d, from the raw grids."""
    out = []
    for kind in sorted({n.rsplit(".", 1)[-1] for n in pair.layers}):
        grids = [g for n, g in pair.layers.items() if n.endswith(kind)]
        out.append(
            np.mean([np.array(g.phi)[i - 1, j - 1] - max(i, j) / g.in_features for g in grids])
        )
    return float(np.mean(out))


def test_spectrum_page_shows_the_shipped_heatmaps_and_what_they_say(empty_cache):
    record = subspace_record.read_subspace()
    at = spectrum_page()
    figs = heatmaps(at)
    assert len(figs) == 1
    traces = [t for t in figs[0]["data"] if t["type"] == "heatmap"]
    pairs = [record.pair(n) for n in ("r8_vs_r64", "r8_vs_r64_other_seed", "r8_vs_full")]
    assert [t["name"] for t in traces] == [p.label for p in pairs]  # the default comparisons
    layer = sorted({n for p in record.pairs for n in p.layers})[0]
    assert np.allclose(traces[0]["z"], pairs[0].layers[layer].phi)
    assert np.array(traces[0]["z"]).shape == (8, 64)
    # the sentence carries the file's numbers, recomputed here from the grids
    same, other = pairs[0], pairs[1]
    said = texts(at.markdown)
    assert "What the numbers say" in said
    assert f"by {excess(same, 8, 64):+.2f} with the same seed" in said
    assert f"{excess(other, 8, 64):+.2f} with another" in said
    vs_full = record.pair("r8_vs_full")
    assert f"top 8 inside the top 64 {excess(vs_full, 8, 64):+.2f} above chance" in said
    captions = texts(at.caption)
    q = np.mean([g.at(1, 1) for n, g in same.layers.items() if n.endswith("q_proj")])
    assert f"{same.label}: the top direction overlaps with mean φ(1,1) = {q:.2f}" in captions

    at.selectbox(key="spec_sub_layer").set_value("blocks.3.attn.v_proj").run()
    seeds = record.pair("r8_seed0_vs_seed1")
    at.multiselect(key="spec_sub_pairs").set_value([seeds.label]).run()
    assert not at.exception
    (fig,) = heatmaps(at)
    (trace,) = fig["data"]
    assert trace["name"] == seeds.label
    assert np.array(trace["z"]).shape == (8, 8)  # two rank-8 updates
    assert np.allclose(trace["z"], seeds.layers["blocks.3.attn.v_proj"].phi)


def test_the_sentence_follows_the_data(empty_cache, tmp_path, monkeypatch):
    """A file where another seed keeps the overlap: the page says so (not a fixed text)."""
    record = subspace_record.read_subspace()
    same = record.pair("r8_vs_r64")
    other = subspace_record.Pair(
        "r8_vs_r64_other_seed", "other seed, same grids", same.a, same.b, same.max_i,
        same.max_j, same.layers,
    )  # fmt: skip
    path = subspace_record.write_subspace(
        subspace_record.SubspaceRecord(record.base_model_id, (same, other)), tmp_path / "s.json"
    )
    monkeypatch.setattr(subspace_record, "subspace_file", lambda: path)
    at = spectrum_page()
    said = texts(at.markdown)
    assert "survives a change of seed" in said and "goes away" not in said
    assert len(heatmaps(at)) == 1


def test_missing_or_malformed_file_is_a_note_not_a_crash(empty_cache, tmp_path, monkeypatch):
    path = tmp_path / "subspace.json"
    monkeypatch.setattr(subspace_record, "subspace_file", lambda: path)
    at = spectrum_page()
    assert subspace_record.COMMAND in texts(at.info)
    assert not heatmaps(at)

    data = subspace_record.read_subspace(REPO_ROOT / "precomputed" / "subspace.json").to_json()
    data["pairs"][0]["layers"]["blocks.0.attn.q_proj"]["phi"][0][0] = 7.0
    path.write_text(json.dumps(data))
    at = spectrum_page()
    warning = texts(at.warning)
    assert "subspace.json cannot be read" in warning and "pairs[0].layers" in warning
    assert not heatmaps(at)
    assert len(at.get("plotly_chart")) >= 3  # the rest of the page still works
