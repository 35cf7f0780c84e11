"""The run store: finished fine-tuning runs on disk, found by the hash of their config.

A run directory ``<root>/<run_id>/`` holds

* ``config.json``  — the full FinetuneConfig, the base model id and the corpus version;
* ``metrics.json`` — curves, periodic evaluations, final figures, memory, status;
* ``adapter.safetensors`` + ``adapter_config.json`` (LoRA, QLoRA) or
  ``delta.safetensors`` (full fine-tuning: every parameter's change, in fp16);
* ``spectrum.json`` — the ΔW singular values per adapted layer.

Roots are searched in order: the shipped runs (``runs/`` of the data folder,
:func:`minituner.paths.runs_dir`), then the user
cache (``$MINITUNER_CACHE`` or ``~/.cache/minituner/runs``), where new runs are saved.
A run is written into a temporary directory and renamed into place as the last step,
so an interrupted save never looks finished. A corrupt or foreign directory is skipped
with a warning, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import analysis
from .config import FinetuneConfig
from .io import atomic_directory, load_tensors, read_json, save_tensors, write_json
from .lora import load_adapter, save_adapter
from .paths import is_shipped, runs_dir
from .train import Base, FinetuneResult, full_delta, prepare_model, weight_delta

RUN_ID_RE = re.compile(r"^[0-9a-f]{12}$")
RUN_FILES = ("config.json", "metrics.json", "spectrum.json")


def default_cache_dir() -> Path:
    env = os.environ.get("MINITUNER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "minituner" / "runs"


def run_id(cfg: FinetuneConfig, base_model_id: str, corpus_version: str) -> str:
    """12 hex digits of the SHA-256 of the whole config, the base model and the corpus."""
    key = json.dumps(
        {"config": cfg.to_dict(), "base": base_model_id, "corpus": corpus_version},
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def check_run_id(rid: str) -> str:
    """Raises ValueError unless ``rid`` is a run id (12 hex digits): a path such as
    ``../x`` can never name a directory outside the store."""
    if not isinstance(rid, str) or not RUN_ID_RE.match(rid):
        raise ValueError(f"{rid!r} is not a run id (12 hex digits, as `minituner runs` lists)")
    return rid


@dataclass
class RunInfo:
    run_id: str
    path: Path
    config: dict
    metrics: dict
    shipped: bool

    @property
    def method(self) -> str:
        return self.config["finetune"]["method"]

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig.from_dict(self.config["finetune"])

    def label(self) -> str:
        return f"{self.run_id} {self.finetune_config().label()}"


class RunStore:
    def __init__(self, roots: list[Path] | None = None, save_root: Path | None = None):
        self.roots = [Path(r) for r in (roots or [runs_dir(), default_cache_dir()])]
        self.save_root = Path(save_root) if save_root else self.roots[-1]

    # ---------------------------------------------------------------- reading
    def _read(self, path: Path) -> RunInfo:
        try:
            return self._read_files(path)
        except (TypeError, KeyError, AttributeError, OSError) as e:  # foreign JSON shapes
            raise ValueError(f"{path} is not a readable minituner run ({e})") from None

    def _read_files(self, path: Path) -> RunInfo:
        cfg = read_json(path / "config.json")
        metrics = read_json(path / "metrics.json")
        if "finetune" not in cfg or metrics.get("status") != "completed":
            raise ValueError(f"{path} is not a finished minituner run")
        FinetuneConfig.from_dict(cfg["finetune"])  # validates
        weights = ("delta.safetensors",) if cfg["finetune"]["method"] == "full" else (
            "adapter.safetensors", "adapter_config.json")  # fmt: skip
        for f in weights:
            if not (path / f).is_file():
                raise ValueError(f"{path} lacks {f}")
        return RunInfo(path.name, path, cfg, metrics, is_shipped(path))

    def list(self) -> list[RunInfo]:
        """Every readable finished run; broken entries are skipped with a warning."""
        seen: dict[str, RunInfo] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for path in sorted(root.iterdir()):
                if path.name.startswith(".") or not path.is_dir() or path.name in seen:
                    continue
                if not RUN_ID_RE.match(path.name):
                    warnings.warn(f"skipping {path}: not a run directory", stacklevel=2)
                    continue
                try:
                    seen[path.name] = self._read(path)
                except ValueError as e:
                    warnings.warn(f"skipping broken run {path.name}: {e}", stacklevel=2)
        return list(seen.values())

    def find(self, rid: str) -> RunInfo | None:
        """The run with id ``rid``, or None. Raises ValueError for a malformed id or a
        run whose files are broken."""
        check_run_id(rid)
        for root in self.roots:
            path = root / rid
            if path.is_dir():
                return self._read(path)
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
        if info.config.get("base_model_id") != base.model_id:
            raise ValueError(
                f"run {info.run_id} was trained from base model {info.config.get('base_model_id')}, "
                f"not from the current one ({base.model_id})"
            )
        cfg = info.finetune_config()
        model = prepare_model(base, cfg, torch.device("cpu"))
        if cfg.method == "full":
            delta = load_tensors(info.path / "delta.safetensors")
            sd = model.state_dict()
            with torch.no_grad():
                for key, d in delta.items():
                    if key not in sd or sd[key].shape != d.shape:
                        raise ValueError(f"run {info.run_id}: delta {key} does not fit the base")
                    sd[key].add_(d.float())
        else:
            load_adapter(info.path, model)
        return model.eval()

    # ---------------------------------------------------------------- writing
    def save(self, result: FinetuneResult) -> RunInfo:
        """Store a completed run (atomically) and return it.

        Raises:
            ValueError: a run that did not complete (diverged or stopped runs, and any
                NaN, never reach the store).
        """
        if not result.ok():
            raise ValueError(f"run {result.status}: {result.message}; nothing was stored")
        base = result.base
        rid = run_id(result.config, base.model_id, base.metrics["corpus_version"])
        final = self.save_root / rid
        with atomic_directory(final) as tmp:
            config = {
                "run_id": rid,
                "finetune": result.config.to_dict(),
                "base_model_id": base.model_id,
                "corpus_version": base.metrics["corpus_version"],
            }
            deltas = weight_delta(result)
            if result.config.method == "full":
                full = {k: v.half() for k, v in full_delta(result).items()}
                save_tensors(tmp / "delta.safetensors", full)
            else:
                save_adapter(tmp, result.model, {"run_id": rid})
            spec = analysis.layer_spectra(deltas)
            write_json(tmp / "spectrum.json", spec)
            metrics = dict(result.metrics)
            metrics["stable_rank_mean"] = sum(s["stable_rank"] for s in spec.values()) / max(
                1, len(spec)
            )
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / "config.json", config)
        return self._read(final)

    def spectrum(self, info: RunInfo) -> dict:
        return read_json(info.path / "spectrum.json")
