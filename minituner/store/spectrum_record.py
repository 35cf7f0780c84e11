"""spectrum.json, the typed, versioned record of a run's ΔW spectrum
(minituner.analysis.spectrum): :class:`SpectrumRecord`, one :class:`LayerSpectrum` per
adapted layer. Validated once, in ``from_json`` (minituner.schema), like the other run
records of minituner.store.records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from minituner.schema import MISSING, JsonObject, as_integer, check_version, describe
from minituner.store.records import SCHEMA_VERSION


@dataclass(frozen=True)
class LayerSpectrum:
    """The singular values of one layer's ΔW (minituner.analysis.spectrum.spectrum)."""

    shape: tuple[int, int]
    singular_values: list[float]
    normalized: list[float]
    cumulative_energy: list[float]
    stable_rank: float
    rank_90: int
    frobenius_norm: float
    spectral_norm: float
    note: str | None = None

    @classmethod
    def from_json(cls, data, source: str, prefix: str) -> LayerSpectrum:
        o = JsonObject(data, source, prefix)
        shape = o.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2):
            raise o.error("shape", f"must be [out, in], not {describe(shape)}")
        shape = tuple(as_integer(s, o, f"shape[{i}]", low=1) for i, s in enumerate(shape))
        note = o.get("note", optional=True)
        if note is not MISSING and note is not None and not isinstance(note, str):
            raise o.error("note", f"must be a string or null, not {describe(note)}")
        sv = o.numbers("singular_values", 0.0)
        rec = cls(
            shape=shape,
            singular_values=sv,
            normalized=o.numbers("normalized", 0.0, 1.0 + 1e-9),
            cumulative_energy=o.numbers("cumulative_energy", 0.0, 1.0 + 1e-9),
            stable_rank=o.number("stable_rank", 0.0),
            rank_90=o.integer("rank_90", 0, len(sv)),
            frobenius_norm=o.number("frobenius_norm", 0.0),
            spectral_norm=o.number("spectral_norm", 0.0),
            note=None if note is MISSING else note,
        )
        o.finish()
        if len(sv) != min(shape):
            raise o.error("singular_values", f"has {len(sv)} values; a {shape[0]}x{shape[1]} "
                          f"matrix has {min(shape)}")  # fmt: skip
        parallel = {"normalized": rec.normalized, "cumulative_energy": rec.cumulative_energy}
        o.check_lengths(parallel, "singular_values", len(sv), "values")
        return rec

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class SpectrumRecord:
    """spectrum.json: the ΔW spectrum of every adapted layer, by module name. In the
    file the layers sit at the top level beside ``schema_version``."""

    FILE: ClassVar[str] = "spectrum.json"
    layers: dict[str, LayerSpectrum] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data, source: str) -> SpectrumRecord:
        """Raises: ValueError naming ``source`` and the layer."""
        o = JsonObject(data, source)
        check_version(o, SCHEMA_VERSION)
        names = [k for k in o.data if k != "schema_version"]
        if not names:
            raise o.error("", "holds no layer")
        return cls({n: LayerSpectrum.from_json(o.get(n), source, n) for n in names})

    @classmethod
    def from_spectra(cls, spectra: dict[str, dict], source: str = "the spectra") -> SpectrumRecord:
        """From minituner.analysis.spectrum.layer_spectra's output."""
        return cls.from_json(spectra, source)

    def stable_rank_mean(self) -> float:
        return sum(s.stable_rank for s in self.layers.values()) / max(1, len(self.layers))

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION,
                **{n: s.to_json() for n, s in self.layers.items()}}  # fmt: skip
