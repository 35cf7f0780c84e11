"""Rewrite the generated blocks of README.md from the shipped files:

* ``base-table``: the base model's figures (scripts/base_table.py);
* ``findings`` and ``claims``: the experiments' table and claims, from
  precomputed/experiments.json (minituner.experiments.report, .claims);
* ``scaling``: the 7B QLoRA measurements, from precomputed/scaling/ (minituner.scale.scaling);
* ``nf4-gpu``: NF4 quantize/dequantize on the GPU against bitsandbytes, from
  benchmarks/results/nf4_h200_*.json (benchmarks/bench_nf4.py --device cuda);
* ``nf4-7b``: dequantize at the 7B layer shapes, from
  benchmarks/results/nf4_h200_7b_shapes_run10.json (bench_nf4.py --shapes ... --graph).

    python scripts/update_readme.py          # rewrite README.md
    python scripts/update_readme.py --check  # exit 1 if README.md is stale (used by a test)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from base_table import BASE, table  # noqa: E402

from minituner.experiments.claims import claims_text  # noqa: E402
from minituner.experiments.record import read_experiments  # noqa: E402
from minituner.experiments.report import findings_table  # noqa: E402
from minituner.paths import experiments_file  # noqa: E402
from minituner.scale.full_load import full_load_lines  # noqa: E402
from minituner.scale.scaling import (  # noqa: E402
    load_scaling_result,
    qlora_7b_full_load,
    scaling_rows,
)
from minituner.schema import read_record  # noqa: E402
from minituner.store.base_record import BaseMetrics  # noqa: E402


def _profile_lines(result: dict) -> list[str]:
    """GPU busy time of one profiled step (``--profile``), ours against PEFT's, if stored."""
    ours = {k: r["profile"] for k, r in result["runs"].items() if "profile" in r}
    peft = {
        k: r["profile"] for k, r in result.get("peft", {}).get("runs", {}).items() if "profile" in r
    }
    both = sorted(ours.keys() & peft.keys())
    if not both:
        return []
    ratio = [ours[k]["device_busy_s"] / peft[k]["device_busy_s"] for k in both]
    frac = [ours[k]["device_busy_fraction"] for k in both]
    pfrac = [peft[k]["device_busy_fraction"] for k in both]
    return [
        f"In one profiled step of each configuration the GPU was busy {min(frac):.0%}-"
        f"{max(frac):.0%} of the step's wall time with our code and {min(pfrac):.0%}-"
        f"{max(pfrac):.0%} with PEFT's; our GPU busy time was {min(ratio):.2f}-"
        f"{max(ratio):.2f}x PEFT's.",
        "",
    ]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def scaling_table() -> str:
    """The 7B measurements as a markdown table (sizes in GiB, ratios as measured)."""
    result = load_scaling_result()
    lines = [
        "| LoRA | trainable | measured peak | predicted | measured / predicted "
        "| PEFT + bnb peak | ours / PEFT peak | ours / PEFT step time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in scaling_rows(result):
        row = (
            f"| r={r['r']} on {r['targets']} | {r['trainable_params']:,} "
            f"| {_gib(r['peak_bytes'])} "
            f"| {_gib(r['predicted_mixed_bytes'])} | {r['peak_over_mixed']:.3f} "
        )
        if r["peft_peak_bytes"] is None:
            row += "| - | - | - |"
        else:
            row += (
                f"| {_gib(r['peft_peak_bytes'])} | {r['peak_ours_over_peft']:.3f} "
                f"| {r['step_ours_over_peft']:.2f} |"
            )
        lines.append(row)
    lines.append("")
    lines.extend(_profile_lines(result))
    lines.append(
        f"({result['device_name']}; predicted: `memory.predict_memory` with float32 LoRA and "
        "AdamW state, as the benchmark trains; *qv*: q_proj and v_proj, *all*: the seven "
        "Linears of every layer.)"
    )
    if qlora_7b_full_load().is_file():  # issue 27: batch 8 x 512, ours against every peer
        lines += ["", "At full load (the GPU busy):", ""]
        lines += full_load_lines(load_scaling_result(qlora_7b_full_load()))
    return "\n".join(lines)


NF4_GPU_SIZES = (16384, 4096)  # benchmarks/results/nf4_h200_{size}.json


def nf4_gpu_table() -> str:
    """bench_nf4.py's CUDA figures: ms, ratio to bitsandbytes, dequantize GB/s vs copy."""
    runs = [
        json.loads((ROOT / "benchmarks" / "results" / f"nf4_h200_{n}.json").read_text("utf-8"))
        for n in NF4_GPU_SIZES
    ]
    lines = [
        "| size | operation | ours ms | bitsandbytes ms | ours / bnb | ours, % of copy "
        "| bnb, % of copy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        for op, d in r["median_s"].items():
            out = {"dequantize fp32": "fp32", "dequantize bf16": "bf16"}.get(op, "")
            frac = r.get("copy_fraction", {})
            pct = [f"{100 * frac[f'{i} {out}']:.0f}%" if out else "" for i in ("ours", "bnb")]
            lines.append(
                f"| {r['size']}x{r['size']} | {op} | {1e3 * d['ours']:.3f} | "
                f"{1e3 * d['bnb']:.3f} | {d['ours'] / d['bnb']:.2f} | {pct[0]} | {pct[1]} |"
            )
    copy = ", ".join(f"{r['copy_gbs'] / 1e3:.2f} TB/s" for r in runs)
    lines += [
        "",
        f"({runs[0]['device_name']}, torch {runs[0]['torch']}, bitsandbytes "
        f"{runs[0]['bitsandbytes']}; CUDA events around a call issued right behind another "
        f"(bench_nf4.py's docstring); median of {runs[0]['repeats']}; "
        f"block {runs[0]['block_size']}; % of copy: bytes read + written over time, against a "
        f"1 GiB device-to-device clone timed the same way in the same run ({copy}).)",
    ]
    return "\n".join(lines)


NF4_7B_SHAPES = ROOT / "benchmarks" / "results" / "nf4_h200_7b_shapes_run10.json"
NF4_7B_OPS = ("dequantize fp32", "dequantize bf16", "dequantize +DQ fp32", "dequantize +DQ bf16")


def nf4_7b_table() -> str:
    """Dequantize at the 7B layer shapes (bench_nf4.py --shapes ... --graph): time against
    bitsandbytes, % of copy bandwidth back to back and inside a CUDA graph, host time."""
    run = json.loads(NF4_7B_SHAPES.read_text("utf-8"))
    lines = [
        "| shape | operation | ours ms | bitsandbytes ms | ours / bnb | ours, % of copy "
        "| bnb, % of copy | ours in a CUDA graph, % of copy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["shapes"]:
        frac = r["copy_fraction"]
        for op in NF4_7B_OPS:
            d, kind = r["median_s"][op], op.removeprefix("dequantize ")
            lines.append(
                f"| {r['shape'][0]}x{r['shape'][1]} | {op} | {1e3 * d['ours']:.3f} "
                f"| {1e3 * d['bnb']:.3f} | {d['ours'] / d['bnb']:.2f} "
                f"| {100 * frac[f'ours {kind}']:.0f}% | {100 * frac[f'bnb {kind}']:.0f}% "
                f"| {100 * frac[f'ours graph {kind}']:.0f}% |"
            )
    first = run["shapes"][0]
    host = ", ".join(f"{k} {v:.1f} us" for k, v in run.get("host_us", {}).items())
    lines += [
        "",
        f"({first['device_name']}, torch {first['torch']}, triton {first['triton']}, "
        f"bitsandbytes {first['bitsandbytes']}; `{NF4_7B_SHAPES.relative_to(ROOT)}`; "
        f"{first['repeats']} repeats of 10 back-to-back calls between CUDA events; copy: a 1 GiB "
        f"clone timed the same way ({first['copy_gbs'] / 1e3:.2f} TB/s). Host time per call "
        f"(64x64 bf16, 2000 calls, one sync): {host}.)",
    ]
    return "\n".join(lines)


def blocks() -> dict[str, str]:
    base = read_record(BASE / BaseMetrics.FILE, BaseMetrics)
    exp = read_experiments(experiments_file())
    return {
        "base-table": table(base),
        "findings": findings_table(exp),
        "claims": claims_text(exp),
        "scaling": scaling_table(),
        "nf4-gpu": nf4_gpu_table(),
        "nf4-7b": nf4_7b_table(),
    }


def render(text: str) -> str:
    for name, body in blocks().items():
        pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start/end --> block")
        text = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main() -> int:
    readme = ROOT / "README.md"
    old = readme.read_text(encoding="utf-8")
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            print("README.md is stale: run `python scripts/update_readme.py`")
            return 1
        return 0
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
