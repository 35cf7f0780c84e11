"""Our step at full load against its peers, from a ``bench_7b_qlora.py --peft --liger`` file.

:func:`peer_rows` sets our step beside each peer that ran the same configuration (step
and peak ratios, MFU, the GPU's busy share, the mean SM clock where ``--clocks`` sampled
it, and the time of the cuBLAS kernels both ran); :func:`full_load_lines` writes them as
the README's markdown table and the notes under it. Files are read and checked by
:func:`minituner.scale.scaling.load_scaling_result`.
"""

from __future__ import annotations

from collections.abc import Mapping

from minituner.scale.scaling import RUN_KEY, busy_fraction, validate_scaling_result

PEER_NAMES = {  # the benchmark's peer keys, in the order tables show them
    "peft": "PEFT + bitsandbytes",
    "liger": "PEFT + bitsandbytes + Liger-Kernel",
    "torchao": "torchao NF4 + torch.compile",
}


def _peer_runs(result: Mapping, name: str) -> dict:
    holder = result.get("peft") if name == "peft" else result.get("peers", {}).get(name)
    runs = holder.get("runs", {}) if isinstance(holder, dict) else {}
    return {k: v for k, v in runs.items() if isinstance(v, dict) and "step_s_median" in v}


def _gemm_share(run: Mapping) -> float | None:
    cats = run.get("profile", {}).get("categories", {}) if isinstance(run, dict) else {}
    gemm = cats.get("gemm") if isinstance(cats, dict) else None
    return None if not isinstance(gemm, dict) else float(gemm["share_of_busy"])


def peer_rows(result: Mapping) -> list[dict]:
    """One row per configuration: our step against every peer that ran it.

    Each row: ``config``, ``label``, ``step_s``, ``mfu`` (None where the file has none),
    ``gemm_share`` (GEMM kernels' share of our profiled step's GPU busy time, or None),
    ``gemm_s`` (their seconds: the floor the step cannot go under, or None), and
    ``peers``: {peer: {``step_s``, ``step_ratio`` (ours / theirs), ``peak_ratio`` (ours /
    theirs, None without both peaks), ``mfu``}} for each of :data:`PEER_NAMES` that ran
    this configuration; a peer that failed or was skipped is absent, with its note in
    ``skipped`` ({peer: note}).

    Raises ValueError as :func:`validate_scaling_result` does.
    """
    result = validate_scaling_result(result)
    rows = []
    for key, run in result["runs"].items():
        cats = run.get("profile", {}).get("categories", {})
        row = {
            "config": key,
            "label": "r={} {}".format(*RUN_KEY.match(key).groups()),
            "step_s": float(run["step_s_median"]),
            "mfu": run.get("mfu"),
            "gemm_share": _gemm_share(run),
            "gemm_s": cats.get("gemm", {}).get("seconds") if isinstance(cats, dict) else None,
            "busy": busy_fraction(run),
            "mhz": _mhz(run),
            "peers": {},
            "skipped": {},
        }
        for name in PEER_NAMES:
            theirs = _peer_runs(result, name).get(key)
            if theirs is None:
                holder = result.get("peers", {}).get(name, {})
                note = holder.get("skipped") or holder.get("runs", {}).get(key, {}).get("skipped")
                if note:
                    row["skipped"][name] = str(note)
                continue
            both = run.get("peak_bytes") and theirs.get("peak_bytes")
            row["peers"][name] = {
                "step_s": float(theirs["step_s_median"]),
                "step_ratio": row["step_s"] / float(theirs["step_s_median"]),
                "peak_ratio": run["peak_bytes"] / theirs["peak_bytes"] if both else None,
                "mfu": theirs.get("mfu"),
                "busy": busy_fraction(theirs),
                "mhz": _mhz(theirs),
                "same_gemms": theirs.get(f"ratios_ours_over_{name}", {})
                .get("same_gemm_kernels", {})
                .get("time_ours_over_peer"),
            }
        rows.append(row)
    return rows


def _mhz(run: Mapping) -> float | None:  # mean SM clock in the timed steps (--clocks)
    c = run.get("clocks")
    return float(c["sm_mhz_mean"]) if isinstance(c, dict) and c.get("samples") else None


def _x(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def _variant_text(config: str, run: dict) -> str | None:  # its step over the default's
    if "step_time_over_default" in run:
        return f"{config} {run['step_time_over_default']:.3f}x"
    return f"{config} failed" if "failed" in run else None


def full_load_lines(result: Mapping) -> list[str]:
    """A markdown table of :func:`peer_rows` (ours / peer step time and peak, MFU, GEMM
    share) and the notes under it: the command, card, versions, MFU formula and peak."""
    rows = peer_rows(result)
    names = [n for n in PEER_NAMES if any(n in r["peers"] or n in r["skipped"] for r in rows)]
    head = "| LoRA | our step | MFU | GEMM share of GPU time |" + "".join(
        f" ours / {PEER_NAMES[n]}: step, peak |" for n in names
    )
    lines = [head, "|---" + "|---:" * (3 + len(names)) + "|"]
    for r in rows:
        cells = [
            f"r={r['config'][1:].replace('_', ' on ')}",
            f"{r['step_s'] * 1e3:.0f} ms",
            "-" if r["mfu"] is None else f"{r['mfu']:.0%}",
            "-" if r["gemm_share"] is None else f"{r['gemm_share']:.0%}",
        ]
        for n in names:
            p = r["peers"].get(n)
            cells.append(
                "did not run"
                if p is None
                else f"{_x(p['step_ratio'], 3)}, {_x(p['peak_ratio'], 3)}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    gaps = [
        f"{r['label']}: {1e3 * (r['step_s'] - r['gemm_s']):.0f} ms of {1e3 * r['step_s']:.0f}"
        for r in rows
        if r["gemm_s"]
    ]
    versions = "; ".join(
        f"{n}: " + ", ".join(f"{k} {v}" for k, v in sorted(holder.get("versions", {}).items()) if v)
        for n, holder in [("peft", result.get("peft", {}))] + list(result.get("peers", {}).items())
        if isinstance(holder, dict) and holder.get("versions")
    )
    skipped = sorted({f"{n}: {note}" for r in rows for n, note in r["skipped"].items()})

    def at(v: dict) -> str:  # the SM clock and, for a peer, its GEMMs' time under ours
        return ("" if v.get("mhz") is None else f" at {v['mhz']:.0f} MHz") + (
            "" if v.get("same_gemms") is None else f" (same GEMMs {v['same_gemms']:.3f}x)"
        )

    busy = [f"{r['label']}: ours {r['busy']:.0%}{at(r)}" + "".join(
        f", {n} {p['busy']:.0%}{at(p)}" for n, p in r["peers"].items() if p["busy"]
    ) for r in rows if r["busy"]]  # fmt: skip
    variants = [
        f"{name}: " + ", ".join(said)
        for name, runs in result.get("variants", {}).items()
        if (said := [t for k, v in runs.items() if (t := _variant_text(k, v))])
    ]
    plain = result.get("runs_plain", {})
    unfused = [
        f"{r['label']}: {1e3 * plain[r['config']]['step_s_median']:.0f} ms"
        + "".join(
            f", {plain[r['config']]['step_s_median'] / p['step_s']:.2f}x {n}"
            for n, p in r["peers"].items()
        )
        for r in rows
        if isinstance(plain.get(r["config"]), dict) and "step_s_median" in plain[r["config"]]
    ]
    peak = result.get("mfu_peak_flops")
    notes = [  # (text, shown only where its list is not empty)
        ("Left between our step and its GEMM kernels' time: {}.", gaps),
        ("Our step without the fused kernels, same run: {}.", unfused),
        ("GPU busy over the step's wall time in that step (a step far below 100% waits on "
         "the host, and its time follows the host's speed), the mean SM clock of the timed "
         "steps where sampled, and the cuBLAS kernels both steps ran (same names and "
         "counts) as our time over the peer's: {}.", busy),
        ("Our step under other settings, same run, over the default: {}.", variants),
        ("Versions: {}.", [versions] if versions else []),
        ("Not measured: {}.", skipped),
    ]  # fmt: skip
    lines += [
        "",
        f"({result['device_name']}, batch {result['args']['batch']} x {result['args']['seq']}; "
        f"`{result['command']}`. MFU: {result.get('mfu_formula', 'model FLOPs / (step x peak)')}"
        + (f", peak {peak / 1e12:.1f} TFLOP/s" if peak else "")
        + ". GEMM share: cuBLAS/CUTLASS matrix-product kernels over the GPU's busy time in one "
        "profiled step."
        + "".join(" " + text.format("; ".join(items)) for text, items in notes if items)
        + ")",
    ]
    return lines
