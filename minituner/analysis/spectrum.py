"""Analysis of runs: the spectrum of a weight update and the rank elbow.

Pure functions over tensors and dicts. Nothing here trains or imports Streamlit; every
output is JSON-friendly (ints, floats, strings, lists, dicts). Parameter and memory math
lives in :mod:`minituner.memory.predict`.

* **Spectrum of ΔW** -- :func:`spectrum`, :func:`low_rank_approx`, :func:`layer_spectra`,
  :func:`lora_deltas`, :func:`weight_deltas`. Singular values are computed in float64.
* **Rank elbow** -- :func:`rank_elbow`, :func:`mean_std`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

# ---------------------------------------------------------------------------------------
# Spectrum of ΔW
# ---------------------------------------------------------------------------------------

ENERGY_TOL = 1e-12  # slack when comparing cumulative energy with a threshold such as 0.90


def as_matrix(delta: torch.Tensor, name: str | None = None, finite: bool = False) -> torch.Tensor:
    """``delta`` as a float64 CPU matrix (detached), the form every analysis computes in.

    Raises:
        TypeError: not a tensor.
        ValueError: not 2-D (or empty), or, with ``finite``, holding NaN or inf. A ``name``
            (such as a layer's) starts the message.
    """
    where = f"{name}: " if name else ""
    if not isinstance(delta, torch.Tensor):
        raise TypeError(f"{where}expected a torch.Tensor, got {type(delta).__name__}")
    if delta.ndim != 2 or (finite and delta.numel() == 0):
        raise ValueError(f"{where}expected a non-empty 2-D update, got {tuple(delta.shape)}")
    m = delta.detach().to(device="cpu", dtype=torch.float64)
    if finite and not torch.isfinite(m).all():
        raise ValueError(f"{where}the update holds NaN or inf")
    return m


def rank_at_energy(singular_values: Sequence[float], fraction: float = 0.90) -> int:
    """Smallest k whose top-k singular values hold at least ``fraction`` of Σσ².

    Returns 0 when every singular value is zero. A slack of ``ENERGY_TOL`` absorbs
    rounding, so k equal singular values give ``rank_at_energy(.., 0.9) == ceil(0.9 k)``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    s = torch.as_tensor(list(singular_values), dtype=torch.float64)
    energy = s.pow(2)
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    return int(torch.nonzero(cumulative >= fraction - ENERGY_TOL)[0, 0]) + 1


def spectrum(delta: torch.Tensor) -> dict:
    """Singular-value spectrum of a weight update ΔW (out, in), computed in float64.

    Returns a JSON-friendly dict:

    * ``singular_values``: σ₁ ≥ σ₂ ≥ … (min(out, in) of them);
    * ``normalized``: σᵢ / σ₁;
    * ``cumulative_energy``: Σ_{j≤i} σⱼ² / Σ σⱼ²;
    * ``stable_rank``: ‖ΔW‖_F² / ‖ΔW‖₂² = Σσ² / σ₁² -- between 1 and rank(ΔW), equal to k
      for k equal non-zero singular values;
    * ``rank_90``: the smallest k whose cumulative energy is ≥ 0.90;
    * ``frobenius_norm``, ``spectral_norm``, ``shape``, and ``note`` (None, or why the
      figures are degenerate).

    An all-zero ΔW (e.g. LoRA before its first step, B = 0) gives zeros everywhere,
    stable rank 0 and rank_90 0, with a note, never NaN.
    """
    m = as_matrix(delta)
    s = torch.linalg.svdvals(m) if m.numel() else torch.zeros(0, dtype=torch.float64)
    energy = s.pow(2)
    total = float(energy.sum())
    top = float(s[0]) if s.numel() else 0.0
    note = None
    if total == 0.0 or top == 0.0:
        normalized = [0.0] * s.numel()
        cumulative = [0.0] * s.numel()
        stable = 0.0
        note = "ΔW is all zeros: stable rank and rank_90 are reported as 0"
    else:
        normalized = (s / top).tolist()
        cumulative = (torch.cumsum(energy, 0) / total).tolist()
        stable = total / top**2
    return {
        "shape": list(m.shape),
        "singular_values": s.tolist(),
        "normalized": normalized,
        "cumulative_energy": cumulative,
        "stable_rank": float(stable),
        "rank_90": rank_at_energy(s.tolist(), 0.90) if total > 0 else 0,
        "frobenius_norm": math.sqrt(total),
        "spectral_norm": top,
        "note": note,
    }


def low_rank_approx(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-k approximation of ``delta`` (Eckart–Young): U_k diag(σ_k) V_kᵀ.

    Computed in float64 and returned in ``delta``'s dtype. Its Frobenius error is
    sqrt(Σ_{i>k} σᵢ²) and its spectral error σ_{k+1}. ``k = 0`` gives zeros; k at or
    above min(out, in) gives ``delta`` back (up to rounding).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    m = as_matrix(delta)
    k = min(k, min(m.shape))
    if k == 0:
        return torch.zeros_like(delta)
    U, S, Vh = torch.linalg.svd(m, full_matrices=False)
    approx = (U[:, :k] * S[:k]) @ Vh[:k]
    return approx.to(dtype=delta.dtype, device=delta.device)


def layer_spectra(deltas: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """:func:`spectrum` of each named ΔW, in the mapping's order."""
    return {name: spectrum(d) for name, d in deltas.items()}


def weight_deltas(
    before: Mapping[str, torch.Tensor],
    after: Mapping[str, torch.Tensor],
    suffix: str = ".weight",
) -> dict[str, torch.Tensor]:
    """ΔW = after − before for every 2-D tensor whose key ends in ``suffix`` in both dicts.

    Embeddings are included when their key matches; pass a narrower ``suffix`` (for
    instance ``"proj.weight"``) to keep only some layers. Shapes must agree.
    """
    out = {}
    for key, b in before.items():
        if not key.endswith(suffix) or key not in after or b.ndim != 2:
            continue
        a = after[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shape {tuple(b.shape)} before, {tuple(a.shape)} after")
        out[key] = a.detach().to(torch.float64) - b.detach().to(torch.float64)
    return out


def lora_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """ΔW = scaling · B · A (float64) of each module with ``lora_A``, ``lora_B``, ``scaling``."""
    out = {}
    for name, module in model.named_modules():
        A, B = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor):
            scaling = float(getattr(module, "scaling", 1.0))
            out[name] = scaling * (B.detach().double() @ A.detach().double())
    return out


# ---------------------------------------------------------------------------------------
# Rank elbow
# ---------------------------------------------------------------------------------------

ELBOW_STD_FLOOR = 0.005

ELBOW_DEFINITION = (
    "elbow = the smallest r whose mean is within one tolerance of the best mean, where "
    "tolerance = max(sample std over seeds of the best r, floor); the floor keeps the rule "
    "meaningful when every seed of the best r scores the same"
)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_std needs at least one value")
    if any(math.isnan(x) for x in v):
        raise ValueError("mean_std got NaN")
    mean = math.fsum(v) / len(v)
    if len(v) == 1:
        return mean, 0.0
    var = math.fsum((x - mean) ** 2 for x in v) / (len(v) - 1)
    return mean, math.sqrt(var)


def rank_elbow(
    results: Mapping[int, Sequence[float]],
    floor: float = ELBOW_STD_FLOOR,
    higher_is_better: bool = True,
) -> dict:
    """The rank beyond which a larger r stops paying off.

    ``results`` maps a rank r to its metric over seeds (e.g. cloze accuracy). Let ``best``
    be the best mean (the smallest r among ties) and ``tol = max(std_best, floor)`` with
    ``std_best`` the sample standard deviation of the best r's seeds. The elbow is the
    smallest r whose mean is ≥ best − tol (≤ best + tol when ``higher_is_better`` is
    False, e.g. for a loss): within one standard deviation of the best, so not
    distinguishable from it by this sweep. ``floor`` (default 0.005, half a point of
    accuracy) makes the rule usable when all seeds agree and the std is 0.

    Returns lists aligned with ``ranks`` (sorted ascending) plus the scalars.
    """
    if not results:
        raise ValueError("rank_elbow needs results for at least one rank")
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    ranks = sorted(int(r) for r in results)
    stats = [mean_std(results[r]) for r in ranks]
    means = [m for m, _ in stats]
    stds = [s for _, s in stats]
    sign = 1.0 if higher_is_better else -1.0
    best_i = max(range(len(ranks)), key=lambda i: (sign * means[i], -ranks[i]))
    tol = max(stds[best_i], floor)
    threshold = means[best_i] - sign * tol
    elbow_i = next(i for i in range(len(ranks)) if sign * (means[i] - threshold) >= 0)
    return {
        "ranks": ranks,
        "mean": means,
        "std": stds,
        "n": [len(results[r]) for r in ranks],
        "best_r": ranks[best_i],
        "best_mean": means[best_i],
        "best_std": stds[best_i],
        "tolerance": tol,
        "threshold": threshold,
        "elbow_r": ranks[elbow_i],
        "higher_is_better": higher_is_better,
        "definition": ELBOW_DEFINITION,
    }
