"""The learning-forgetting frontier: Pareto fronts and comparisons at matched learning.

A run (or a config's mean over seeds) is a point (learning, forgetting): learning is the
irregular-verb accuracy (higher is better); forgetting is a control drift (lower is
better) or the regular-verb accuracy (higher is better: ``lower_is_better=False``).

* :func:`pareto_front` — the points no other point beats on both axes, by learning;
* :func:`attainable` — the best forgetting a front reaches with at least a given learning
  (a step function: the first front point at or above that level; no extrapolation above
  the front's highest learning);
* :func:`matched_levels` — evenly spaced learning levels that both methods' points span;
* :func:`compare` — two methods' fronts at those levels, and how much less the first
  forgets.

As in Biderman et al. 2024 ("LoRA Learns Less and Forgets Less", Fig. 4): compare methods
by the best forgetting each reaches at a given amount of learning, not at one setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]  # (learning, forgetting)


def _check(points: Sequence[Point]) -> None:
    for i, p in enumerate(points):
        if len(p) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in p):
            raise ValueError(
                f"point {i} must be two finite numbers (learning, forgetting), got {p!r}"
            )


def pareto_front(points: Sequence[Point], lower_is_better: bool = True) -> list[int]:
    """Indices of the non-dominated points, by increasing learning.

    A point is dominated when another learns at least as much and forgets at most as
    much, and is better on one of the two. Of identical points the first is kept. Along
    the front learning and forgetting both increase (more learning costs more
    forgetting), strictly.

    Raises:
        ValueError: a point that is not two finite numbers.
    """
    _check(points)
    sign = 1.0 if lower_is_better else -1.0
    cost = [(float(x), sign * float(y)) for x, y in points]
    front = []
    for i, (x, c) in enumerate(cost):
        beaten = any(
            (x2 >= x and c2 <= c and (x2 > x or c2 < c)) or ((x2, c2) == (x, c) and j < i)
            for j, (x2, c2) in enumerate(cost)
            if j != i
        )
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: cost[i][0])


def attainable(front: Sequence[Point], level: float) -> float | None:
    """The best forgetting a front (its points by increasing learning, as
    :func:`pareto_front` orders them) reaches with learning at least ``level``: the
    forgetting of its first point at or above ``level``, a step function of the level.
    None above the front's highest learning.

    Raises:
        ValueError: a point that is not two finite numbers, or learning not increasing.
    """
    _check(front)
    xs = [float(p[0]) for p in front]
    if any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
        raise ValueError(f"a front's learning must increase strictly, got {xs}")
    return next((float(y) for x, y in front if x >= level), None)


def matched_levels(a: Sequence[Point], b: Sequence[Point], n: int = 5) -> list[float]:
    """``n`` evenly spaced learning levels from the higher of the two sets' lowest
    learning to the lower of their highest (one level if that range is a single point,
    none if the sets' learning ranges do not overlap).

    Raises:
        ValueError: n < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not a or not b:
        return []
    lo = max(min(p[0] for p in a), min(p[0] for p in b))
    hi = min(max(p[0] for p in a), max(p[0] for p in b))
    if lo > hi:
        return []
    if lo == hi:
        return [float(lo)]
    if n == 1:
        return [float((lo + hi) / 2)]
    # the last level is hi itself: lo + (hi - lo) could round above the highest learning
    return [lo + (hi - lo) * k / (n - 1) for k in range(n - 1)] + [float(hi)]


def front_points(points: Sequence[Point], lower_is_better: bool = True) -> list[Point]:
    """The points of :func:`pareto_front`, by increasing learning.

    Raises:
        ValueError: a point that is not two finite numbers.
    """
    return [(float(points[i][0]), float(points[i][1]))
            for i in pareto_front(points, lower_is_better)]  # fmt: skip


def compare(
    a: Sequence[Point], b: Sequence[Point], lower_is_better: bool = True, n: int = 5
) -> dict:
    """Method ``a`` against method ``b`` (each given by its points) at matched learning:
    each method's :func:`attainable` forgetting on its Pareto front at the
    :func:`matched_levels` of their points.

    Returns ``levels``, ``a`` and ``b`` (each method's best forgetting there),
    ``advantage`` (how much less ``a`` forgets than ``b`` at each level, in the measure's
    units: b - a for a drift, a - b for an accuracy), ``mean_advantage`` (None when the
    learning ranges do not overlap), ``wins`` (levels where ``a`` forgets strictly less)
    and the fronts ``front_a``, ``front_b``.

    Raises:
        ValueError: a point that is not two finite numbers, or n < 1.
    """
    fa, fb = front_points(a, lower_is_better), front_points(b, lower_is_better)
    levels = matched_levels(a, b, n)
    ya = [attainable(fa, x) for x in levels]
    yb = [attainable(fb, x) for x in levels]
    sign = 1.0 if lower_is_better else -1.0
    # every level is at most each set's highest learning, so both fronts reach it
    adv = [sign * (q - p) for p, q in zip(ya, yb, strict=True)]  # type: ignore[operator]
    return {
        "levels": levels,
        "a": ya,
        "b": yb,
        "advantage": adv,
        "mean_advantage": sum(adv) / len(adv) if adv else None,
        "wins": sum(1 for v in adv if v > 0),
        "front_a": fa,
        "front_b": fb,
    }
