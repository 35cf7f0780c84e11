"""The run store: finished fine-tuning runs on disk, found by the hash of their config.

A run directory ``<root>/<run_id>/`` holds

* ``config.json``  — :class:`~minituner.store.records.RunConfig`: the FinetuneConfig, the base
  model id and the corpus version;
* ``metrics.json`` — :class:`~minituner.store.records.MetricsRecord`: status, curves, periodic
  evaluations, final figures, memory;
* ``adapter.safetensors`` + ``adapter_config.json`` (LoRA, QLoRA) or
  ``delta.safetensors`` (full fine-tuning: every parameter's change, in fp16);
* ``spectrum.json`` — :class:`~minituner.store.spectrum_record.SpectrumRecord`: the ΔW
  singular values per adapted layer.

A run saved with ``weights=False`` (the frontier and replay grids of minituner.experiments.run:
many runs read for their figures alone) holds ``config.json`` and ``metrics.json`` only,
with ``weights_saved: false`` in its metrics (``stable_rank_mean`` still computed from its
ΔW before it is dropped). :meth:`RunStore.find` and :meth:`RunStore.lookup` return such a
run (``RunInfo.has_weights`` is False, ``spectrum`` None) unless a copy with weights exists
in any root; :meth:`RunStore.list` leaves them out unless asked, so the pages that load a
model or a spectrum never see one; :meth:`RunStore.load_model` refuses one.

Roots are searched in order: the shipped runs (``runs/`` of the data folder,
:func:`minituner.paths.runs_dir`), then the user
cache (``$MINITUNER_CACHE`` or ``~/.cache/minituner/runs``), where new runs are saved.
Every record is validated when a run is read, and its weights too (read_weights: every
tensor floating point, non-empty, finite; an adapter's shapes as its config says; a
delta's keys and shapes against the base model when loaded). Files are read through
minituner.io's hardened readers: regular files only (a FIFO or a device is refused
without blocking), size-capped, JSON depth-limited, and no symlink may lead outside the
run's root. A run with a missing, corrupt, special or invalid file is skipped with one
warning naming the file, and a broken copy in one root does
not hide a valid copy in a later one. A run is written into a temporary directory and
swapped into place by io.atomic_directory: a crash at any point, or a concurrent save of
the same run, leaves the old run or the new one, complete; readers hold the root's lock
shared while they read a run, so they never see it half-swapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from minituner.analysis import spectrum as analysis
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.result import Base, FinetuneResult, full_delta, prepare_model, weight_delta
from minituner.io import (
    LEFTOVER_RE,
    atomic_directory,
    check_tensors,
    directory_lock,
    load_tensors,
    recover_directory,
    save_tensors,
    write_json,
)
from minituner.lora.adapter_io import load_adapter, read_adapter, save_adapter
from minituner.paths import is_shipped, runs_dir
from minituner.schema import read_record
from minituner.store.records import RUN_ID_RE, Figures, MetricsRecord, RunConfig
from minituner.store.spectrum_record import SpectrumRecord

RUN_FILES = ("config.json", "metrics.json", "spectrum.json")


def default_cache_dir() -> Path:
    env = os.environ.get("MINITUNER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "minituner" / "runs"


def check_writable(root: Path) -> None:
    """Raises ValueError unless runs can be saved under ``root`` (made if missing): the
    pre-flight of the CLI's ``finetune`` and of the app before it starts a training child.
    """
    where = f"the run cache {root} ($MINITUNER_CACHE, default ~/.cache/minituner/runs)"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "it is a file" if root.is_file() else (e.strerror or str(e))
        raise ValueError(f"cannot store runs in {where}: {why}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ValueError(f"cannot store runs in {where}: it is not writable")


def run_id(cfg: FinetuneConfig, base_model_id: str, corpus_version: str) -> str:
    """12 hex digits of the SHA-256 of the whole config, the base model and the corpus."""
    key = json.dumps(
        {"config": cfg.to_dict(), "base": base_model_id, "corpus": corpus_version},
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def check_run_id(rid: str) -> str:
    """Raises ValueError unless ``rid`` is a run id (12 hex digits, nothing after them):
    a path such as ``../x`` can never name a directory outside the store."""
    if not isinstance(rid, str) or not RUN_ID_RE.fullmatch(rid):
        raise ValueError(f"{rid!r} is not a run id (12 hex digits, as `minituner runs` lists)")
    return rid


@dataclass(frozen=True)
class RunInfo:
    """A stored, completed run: its directory and its three records, each validated when
    read (``metrics.final`` and ``metrics.memory`` are always set)."""

    run_id: str
    path: Path
    config: RunConfig
    metrics: MetricsRecord
    spectrum: SpectrumRecord | None  # None: a metrics-only run (has_weights False)
    shipped: bool

    @property
    def has_weights(self) -> bool:
        """Whether the run's adapter or delta and its spectrum are stored."""
        return self.metrics.weights_saved

    @property
    def method(self) -> str:
        return self.config.finetune.method

    @property
    def final(self) -> Figures:
        """The final figures on the full held-out splits."""
        assert self.metrics.final is not None  # a stored run is completed
        return self.metrics.final

    def finetune_config(self) -> FinetuneConfig:
        return self.config.finetune

    def label(self) -> str:
        return f"{self.run_id} {self.finetune_config().label()}"


class RunStore:
    def __init__(self, roots: list[Path] | None = None, save_root: Path | None = None):
        self.roots = [Path(r) for r in (roots or [runs_dir(), default_cache_dir()])]
        self.save_root = Path(save_root) if save_root else self.roots[-1]

    # ---------------------------------------------------------------- reading
    def _read(self, path: Path) -> RunInfo:
        """The run in ``path``, every record validated.

        Raises:
            ValueError: a missing, unreadable or invalid file (the message names it).
        """
        root = path.parent  # no file of the run may lead outside its store
        try:
            config = read_record(path / RunConfig.FILE, RunConfig, root)
            if config.run_id != path.name:
                raise ValueError(
                    f"{path / RunConfig.FILE}: run_id {config.run_id} does not match its "
                    f"directory {path.name}"
                )
            metrics = read_record(path / MetricsRecord.FILE, MetricsRecord, root)
            if not metrics.completed:
                raise ValueError(f"{path / MetricsRecord.FILE}: the run {metrics.status}")
            if metrics.stable_rank_mean is None:
                raise ValueError(f"{path / MetricsRecord.FILE}: stable_rank_mean is missing")
            if not metrics.weights_saved:  # a metrics-only run: nothing else to read
                return RunInfo(path.name, path, config, metrics, None, is_shipped(path))
            spectrum = read_record(path / SpectrumRecord.FILE, SpectrumRecord, root)
            read_weights(path, config.finetune.method, root)
        except OSError as e:  # a file that is a directory, unreadable permissions
            raise ValueError(f"{path} cannot be read ({e})") from None
        return RunInfo(path.name, path, config, metrics, spectrum, is_shipped(path))

    def _read_locked(self, path: Path) -> RunInfo | None:
        """:meth:`_read` under the folder's shared lock, so that no save swaps the run
        while its files are read; None when there is no such directory (a save that
        died between its renames is put back first).

        Raises:
            ValueError: the run is broken (the message names the file).
        """
        for attempt in (0, 1):
            with directory_lock(path.parent, shared=True):
                if path.is_dir():
                    return self._read(path)
            if attempt or not recover_directory(path):
                return None
        return None

    def list(self, metrics_only: bool = False) -> list[RunInfo]:
        """Every readable finished run with weights, each id once (the first root that
        holds a valid copy wins); each broken entry is skipped with one warning naming its
        file. ``metrics_only``: also the runs stored without weights (where no copy with
        weights exists)."""
        seen: dict[str, RunInfo] = {}
        lean: dict[str, RunInfo] = {}  # metrics-only copies: a later copy with weights wins
        for root in self.roots:
            try:
                entries = sorted(root.iterdir()) if root.is_dir() else []
            except OSError as e:
                warnings.warn(f"skipping {root}: {e}", stacklevel=2)
                continue
            names = {p.name for p in entries}
            for name in sorted(_lost_runs(entries) - names):  # died between two renames
                if recover_directory(root / name):
                    entries.append(root / name)
            for path in sorted(entries):
                if path.name.startswith(".") or path.name in seen or not path.is_dir():
                    continue
                if not RUN_ID_RE.fullmatch(path.name):
                    warnings.warn(f"skipping {path}: not a run directory", stacklevel=2)
                    continue
                try:
                    info = self._read_locked(path)
                except ValueError as e:
                    warnings.warn(f"skipping run {path.name}: {e}", stacklevel=2)
                    continue
                if info is not None and info.has_weights:
                    seen[path.name] = info
                elif info is not None:
                    lean.setdefault(path.name, info)
        if metrics_only:
            seen.update({rid: i for rid, i in lean.items() if rid not in seen})
        return list(seen.values())

    def find(self, rid: str) -> RunInfo | None:
        """The run with id ``rid``, or None. A broken copy does not hide a valid one in
        a later root, nor a metrics-only copy one with weights.

        Raises:
            ValueError: a malformed id, or every copy of the run is broken (the first
                problem, naming its file).
        """
        check_run_id(rid)
        problem, lean = None, None
        for root in self.roots:
            try:
                info = self._read_locked(root / rid)
            except ValueError as e:
                problem = problem or e
                continue
            if info is not None and info.has_weights:
                return info
            lean = lean or info
        if lean is not None:
            return lean
        if problem is not None:
            raise problem
        return None

    def get(self, rid: str) -> RunInfo:
        info = self.find(rid)
        if info is None:
            raise ValueError(f"no run {rid} in the store; `python -m minituner runs` lists them")
        return info

    def lookup(self, cfg: FinetuneConfig, base: Base) -> RunInfo | None:
        """The stored run for this exact config and base model, if any."""
        try:
            return self.find(run_id(cfg, base.model_id, base.metrics["corpus_version"]))
        except ValueError as e:
            warnings.warn(str(e), stacklevel=2)
            return None

    def load_model(self, info: RunInfo, base: Base) -> torch.nn.Module:
        """The fine-tuned model of a run, rebuilt from the base model and its adapter or
        delta (CPU, eval mode).

        Raises:
            ValueError: files that do not fit the base model.
        """
        if not info.has_weights:
            raise ValueError(
                f"run {info.run_id} was stored with its figures only (no adapter or delta); "
                "train it again to get its model"
            )
        if info.config.base_model_id != base.model_id:
            raise ValueError(
                f"run {info.run_id} was trained from base model {info.config.base_model_id}, "
                f"not from the current one ({base.model_id})"
            )
        cfg = info.finetune_config()
        model = prepare_model(base, cfg, torch.device("cpu"))
        if cfg.method == "full":
            delta = read_weights(info.path, "full", info.path.parent)
            file = info.path / "delta.safetensors"
            params = dict(model.named_parameters())  # tied weights once, as saved
            missing = sorted(set(params) - set(delta))
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise ValueError(f"{file} lacks the change of {', '.join(missing[:3])}{more}")
            with torch.no_grad():
                for key, d in delta.items():
                    if key not in params or params[key].shape != d.shape:
                        got, want = tuple(d.shape), params.get(key)
                        want = "no such parameter" if want is None else tuple(want.shape)
                        raise ValueError(
                            f"{file}: {key} {got} does not fit the base model ({want})"
                        )
                for key, d in delta.items():
                    params[key].add_(d.float())
        else:
            load_adapter(info.path, model, root=info.path.parent)
        return model.eval()

    # ---------------------------------------------------------------- writing
    def save(self, result: FinetuneResult, weights: bool = True) -> RunInfo:
        """Store a completed run and return it. The save is atomic against a crash at
        any point and against a concurrent save of the same run (io.atomic_directory):
        the store shows the old run or the new one, complete. ``weights=False`` keeps
        config.json and metrics.json only (a metrics-only run, see the module docstring).

        Raises:
            ValueError: a run that did not complete (diverged or stopped runs, and any
                NaN, never reach the store), or metrics that are not a valid record.
        """
        if not result.ok():
            raise ValueError(f"run {result.status}: {result.message}; nothing was stored")
        base = result.base
        rid = run_id(result.config, base.model_id, base.metrics["corpus_version"])
        config = RunConfig(rid, result.config, base.model_id, base.metrics["corpus_version"])
        deltas = weight_delta(result)
        spectrum = SpectrumRecord.from_spectra(analysis.layer_spectra(deltas))
        metrics = as_metrics_record(result.metrics)
        metrics = metrics.replace(
            stable_rank_mean=spectrum.stable_rank_mean(), weights_saved=weights
        )
        if not metrics.completed:
            raise ValueError(f"run {metrics.status}: {metrics.message}; nothing was stored")
        with atomic_directory(self.save_root / rid) as tmp:
            if weights and result.config.method == "full":
                full = {k: v.half() for k, v in full_delta(result).items()}
                save_tensors(tmp / "delta.safetensors", full)
            elif weights:
                save_adapter(tmp, result.model, {"run_id": rid})
            if weights:
                write_json(tmp / SpectrumRecord.FILE, spectrum.to_json())
            write_json(tmp / MetricsRecord.FILE, metrics.to_json())
            write_json(tmp / RunConfig.FILE, config.to_json())
        # the records just written, not read back: another save may already replace them
        final = self.save_root / rid
        kept = spectrum if weights else None
        return RunInfo(rid, final, config, metrics, kept, is_shipped(final))

    def spectrum(self, info: RunInfo) -> SpectrumRecord | None:
        return info.spectrum


def weight_files(method: str) -> tuple[str, ...]:
    """The weight files a run of ``method`` holds."""
    if method == "full":
        return ("delta.safetensors",)
    return ("adapter.safetensors", "adapter_config.json")


def read_weights(path: Path, method: str, root: Path) -> dict[str, torch.Tensor]:
    """The weights of the run in ``path``: the delta (full) or the adapter's tensors, each
    checked: regular files inside ``root``, at least one tensor, every tensor floating
    point, non-empty and finite (minituner.io.check_tensors), and an adapter's shapes as
    its config gives them. Whether they fit the base model is checked on loading.

    Raises:
        ValueError: a missing, special or damaged file (naming it).
    """
    if method == "full":
        file = path / "delta.safetensors"
        return check_tensors(load_tensors(file, root), str(file))
    return read_adapter(path, root)[1]


def as_metrics_record(metrics: MetricsRecord | dict) -> MetricsRecord:
    """A training result's metrics as a record (validated when given as a dict).

    Raises:
        ValueError: an invalid field (the message names it).
    """
    if isinstance(metrics, MetricsRecord):
        return metrics
    return MetricsRecord.from_json(metrics, "the run's metrics")


def _lost_runs(entries: list[Path]) -> set[str]:
    """Run ids whose directory only exists as a save's ``.old`` copy."""
    out = set()
    for p in entries:
        m = LEFTOVER_RE.fullmatch(p.name)
        if m and m["kind"] == "old" and RUN_ID_RE.fullmatch(m["name"]):
            out.add(m["name"])
    return out
