"""How the pages write sizes: bytes in KiB / MiB / GiB, and memory breakdowns as rows
for a table or a stacked bar chart (:func:`app.charts.memory.memory_stacked`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(n: float, digits: int = 1, binary: bool = True) -> str:
    """Human-readable size: ``format_bytes(98304) == "96.0 KiB"``; ``binary=False`` gives
    powers of 1000 (kB, MB, GB)."""
    base, units = (1024, _BINARY) if binary else (1000, _DECIMAL)
    sign = "-" if n < 0 else ""
    v = abs(float(n))
    i = 0
    while v >= base and i < len(units) - 1:
        v /= base
        i += 1
    if i == 0:
        return f"{sign}{int(v)} B"
    return f"{sign}{v:.{digits}f} {units[i]}"


CATEGORIES = ("weights", "nf4", "lora", "gradients", "optimizer", "activations")


def breakdown_table(
    predicted: Mapping | None = None,
    measured: Mapping | None = None,
    categories: Sequence[str] = CATEGORIES,
) -> list[dict]:
    """Long-format rows for a stacked bar chart: one row per (source, category) present.

    Each row: ``source`` ("predicted"/"measured"), ``category``, ``bytes``, ``label``
    (:func:`format_bytes`), ``fraction`` of that source's total over ``categories`` and
    ``estimate`` (True for predicted activations).
    """
    rows = []
    for source, d in (("predicted", predicted), ("measured", measured)):
        if d is None:
            continue
        total = sum(int(d.get(c, 0)) for c in categories)
        for c in categories:
            if c not in d:
                continue
            b = int(d[c])
            rows.append(
                {
                    "source": source,
                    "category": c,
                    "bytes": b,
                    "label": format_bytes(b),
                    "fraction": b / total if total else 0.0,
                    "estimate": source == "predicted" and c == "activations",
                }
            )
    return rows
