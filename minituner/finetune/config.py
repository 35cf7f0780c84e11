"""The fine-tuning configuration: one dataclass, validated once when it is made.

:class:`FinetuneConfig` owns every fine-tuning setting (method, rank, alpha, targets,
optimizer, schedule, evaluation, NF4 storage); everything else (the CLI, the app, the
run store) builds one and trusts it.

Targets are normalised when a config is made: groups expanded (``attn`` = q,k,v,o,
``mlp`` = fc_in,fc_out, ``all`` = both), attribute names shortened (``q_proj`` = q),
repeats dropped, and the canonical order q, k, v, o, fc_in, fc_out kept. So ``v,q``,
``q,q,v`` and ``q,v`` are one config with one run id (the run id hashes ``to_dict()``).

The largest rank a model takes depends on the model, not the config: :func:`max_rank`
(min(in, out) of the targeted Linears) and :func:`check_rank` are that one rule, used by
the CLI and the app before training.

Two settings change the training data, and stay out of the run id at their defaults
(so every run stored before they existed keeps its id):

* ``replay`` (0 <= replay < 1): the share of the training pairs that are regular-verb
  cloze pairs replayed from pretraining (:func:`minituner.minigpt.data.training_examples`);
* ``teach`` ("swim:swam"): teach a verb of the user's own (:mod:`minituner.minigpt.teach`);
  normalised to ``lemma:past`` ("Swim / swam" and "swim:swam" are one run id).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from minituner.lora.targets import TARGET_ALIASES, TARGET_GROUPS, check_hparams, target_names
from minituner.methods import check_method
from minituner.minigpt.teach import TeachVerb
from minituner.minigpt.trainutil import check_seed
from minituner.nf4.format import DEFAULT_BLOCK_SIZE, QLORA_DOUBLE_QUANT

# Default learning rates at the default 40-step budget. LoRA/QLoRA: 5e-3, picked by hand
# from a few runs, not a search (1e-2 over 120 steps drifted 7% on control_en; 3e-3
# needed 60 steps for the same accuracy). Full
# fine-tuning: 1e-3, the best of `precompute`'s search over 1e-4..3e-3 (its table is in
# precomputed/README.md), so the default full run is the shipped one.
DEFAULT_LR = {"full": 1e-3, "lora": 5e-3, "qlora": 5e-3}
DEFAULT_DROPOUT = 0.0  # on the LoRA branch; the CLI's --dropout default too


TARGETS = tuple(TARGET_ALIASES)  # the canonical order: q, k, v, o, fc_in, fc_out
_SHORT = {attr: short for short, attr in TARGET_ALIASES.items()}  # q_proj -> q


def normalize_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """MiniGPT's target names in the canonical order (q, k, v, o, fc_in, fc_out), each once.

    Groups are expanded (attn, mlp, all) and attribute names shortened (q_proj -> q).
    Names that are none of MiniGPT's are kept after them, in the order given, so that
    :meth:`FinetuneConfig.validate` can name them.

    Raises:
        ValueError: ``targets`` is not a string or a list of strings.
    """
    wanted = [
        _SHORT.get(t, t) for name in target_names(targets) for t in TARGET_GROUPS.get(name, [name])
    ]
    others = [t for t in dict.fromkeys(wanted) if t not in TARGETS]
    return tuple(t for t in TARGETS if t in wanted) + tuple(others)


def targets_label(targets: Iterable[str]) -> str:
    """``all``, ``attn`` or ``mlp`` when the targets are exactly that group, else ``q,v``."""
    t = normalize_targets(list(targets))
    for group, names in TARGET_GROUPS.items():
        if t == tuple(names):
            return group
    return ",".join(t)


def layer_shapes(model_config) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each target Linear of a MiniGPT (a GPTConfig)."""
    c = model_config.n_embd
    h = model_config.mlp_ratio * c
    return {"q": (c, c), "k": (c, c), "v": (c, c), "o": (c, c), "fc_in": (c, h), "fc_out": (h, c)}


def max_rank(model_config, targets: str | Iterable[str] = TARGETS) -> int:
    """The largest LoRA rank every targeted Linear of the model takes: the smallest
    min(in_features, out_features) among them (a rank-r update of an (out, in) matrix
    needs r <= min(in, out)). ``targets`` defaults to all of them."""
    shapes = layer_shapes(model_config)
    names = [t for t in normalize_targets(targets) if t in shapes] or list(shapes)
    return min(min(shapes[t]) for t in names)


def check_rank(cfg: FinetuneConfig, model_config) -> None:
    """Raises ValueError when ``cfg.r`` is larger than :func:`max_rank` allows for its
    targets in a model of ``model_config`` (nothing to check for full fine-tuning)."""
    if cfg.method == "full":
        return
    limit = max_rank(model_config, cfg.targets)
    if cfg.r > limit:
        raise ValueError(
            f"rank r={cfg.r} is too large for this model: the targeted layers "
            f"({targets_label(cfg.targets)}) are {limit} wide on their narrower side, so r "
            f"must be between 1 and {limit}"
        )


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(name: str, v, low: float, allow_low: bool = False) -> None:
    """ValueError unless ``v`` is a finite number above ``low`` (or equal, if allowed)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < low or (v == low and not allow_low):
        if low == 0.0:
            bound = "zero or a positive number" if allow_low else "a positive number"
        else:
            bound = f"a number {'>=' if allow_low else '>'} {low:g}"
        raise ValueError(f"{name} must be {bound}, got {v!r}")


@dataclass
class FinetuneConfig:
    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = DEFAULT_DROPOUT
    rslora: bool = False
    lr: float | None = None  # None: DEFAULT_LR[method]
    steps: int = 40
    batch_size: int = 32
    warmup: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 10
    eval_sample: int = 48
    nf4_block_size: int = DEFAULT_BLOCK_SIZE
    nf4_double_quant: bool = QLORA_DOUBLE_QUANT
    replay: float = 0.0  # share of replayed regular-verb cloze pairs in the training data
    teach: str = (
        ""  # "lemma:past": teach this verb (minituner.minigpt.teach); "" = the 8 irregulars
    )

    def __post_init__(self) -> None:
        self.targets = normalize_targets(self.targets)  # one config, one run id
        if isinstance(self.teach, str):  # one verb, one run id
            self.teach = str(TeachVerb.parse(self.teach)) if self.teach.strip() else ""
        if _is_number(self.replay):
            self.replay = float(self.replay)
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.method, 1e-3)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError, with a message a student understands, for bad settings."""
        check_method(self.method)
        for name in ("steps", "batch_size", "eval_every", "eval_sample"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
        check_seed(self.seed)
        for name in ("rslora", "nf4_double_quant"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        b = self.nf4_block_size  # what nf4.quantize_nf4 takes
        if isinstance(b, bool) or not isinstance(b, int) or b < 2 or b % 2:
            raise ValueError(f"nf4_block_size must be a positive even whole number, got {b!r}")
        if not _is_number(self.replay) or not 0.0 <= self.replay < 1.0:
            raise ValueError(
                f"replay must be a share from 0 (no replay) up to, not including, 1 "
                f"(0.1 = 10% of the training pairs are regular verbs), got {self.replay!r}"
            )
        if not isinstance(self.teach, str):
            raise ValueError(f'teach must be a verb and its past such as "swim:swam", '
                             f"got {self.teach!r}")  # fmt: skip
        _number("learning rate", self.lr, low=0.0)
        _number("warmup", self.warmup, low=0.0, allow_low=True)
        _number("weight_decay", self.weight_decay, low=0.0, allow_low=True)
        _number("grad_clip", self.grad_clip, low=0.0)
        if self.method != "full":
            check_hparams(self.r, self.alpha, self.dropout, self.rslora)  # no model: no r limit
            if not self.targets:
                raise ValueError("choose at least one target module (q, k, v, o, fc_in, fc_out)")
            bad = [t for t in self.targets if t not in TARGETS]
            if bad:
                raise ValueError(
                    f"unknown target module {', '.join(map(repr, bad))}; MiniGPT's are "
                    + ", ".join(f"{k} ({v})" if k != v else k for k, v in TARGET_ALIASES.items())
                    + f" and the groups {', '.join(TARGET_GROUPS)}"
                )

    def to_dict(self) -> dict:
        """The JSON form (targets normalised), without the settings that do not apply to
        the method: this is what a run id hashes."""
        d = asdict(self)
        d["targets"] = list(self.targets)
        if self.method == "full":  # LoRA settings do not apply: keep them out of the id
            for k in ("r", "alpha", "targets", "dropout", "rslora"):
                d.pop(k)
        if self.method != "qlora":
            d.pop("nf4_block_size")
            d.pop("nf4_double_quant")
        if self.replay == 0.0:  # the defaults of later settings: the ids of older runs hold
            d.pop("replay")
        if not self.teach:
            d.pop("teach")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown fine-tuning settings: {sorted(unknown)}")
        return cls(**d)

    def label(self) -> str:
        extra = (f" replay={self.replay:g}" if self.replay else "") + (
            f" teach={self.teach}" if self.teach else ""
        )
        if self.method == "full":
            return f"full lr={self.lr:g} steps={self.steps} seed={self.seed}{extra}"
        return (
            f"{self.method} r={self.r} a={self.alpha:g} {targets_label(self.targets)} "
            f"lr={self.lr:g} steps={self.steps} seed={self.seed}{extra}"
        )
