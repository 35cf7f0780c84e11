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

Bounds a user can understand, each in one place (issue 23):

* alpha: positive, finite, and scaling = alpha/r at most 1024
  (:func:`minituner.lora.targets.check_hparams`, whose docstring says why);
* batch_size: 1 to :data:`MAX_BATCH_SIZE` = 1024, the largest power of two whose
  activations :func:`minituner.memory.predict.predict_memory` predicts within
  :data:`MAX_ACTIVATION_BYTES` (4 GiB) for the default MiniGPT at its full 96-character
  context (about 3.9 GiB; a batch of 10^8 would need about 370 TiB). Given the model,
  :func:`check_batch` applies the same 4 GiB to its own prediction (a larger model
  takes a smaller batch);
* eval_limit (not a setting of the run: what the CLI, the app and the training child
  pass to the loop): :func:`check_eval_limit`, 1 to :data:`MAX_EVAL_LIMIT`.

:func:`check_before_training` is every check that needs the base model (rank, batch,
taught verb, eval limit): the CLI runs it before training, and the app before it starts
a training child. Whether the run cache can take the run is the store's question
(:func:`minituner.store.runs.check_writable`).

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


MAX_ACTIVATION_BYTES = 4 * 2**30  # predicted activation memory of one batch, at most
MAX_BATCH_SIZE = 1024  # the largest power of two within it for the default MiniGPT
MAX_EVAL_LIMIT = 1_000_000  # items per split; the held-out splits hold a few hundred


def batch_activation_bytes(cfg: FinetuneConfig, model_config) -> int:
    """The activation memory :func:`minituner.memory.predict.predict_memory` predicts for
    one batch of ``cfg`` on a MiniGPT of ``model_config`` (a GPTConfig), at fp32 and the
    model's full context (the longest sequence it reads)."""
    from minituner.memory.predict import predict_memory
    from minituner.memory.shapes import ModelShape

    shape = ModelShape.from_gpt_config(model_config)
    kw = {} if cfg.method == "full" else {"r": cfg.r, "targets": cfg.targets}
    pred = predict_memory(
        shape, cfg.method, batch=cfg.batch_size, seq=model_config.block_size, precision="fp32",
        **kw,
    )  # fmt: skip
    return pred["activations"]


def check_batch(cfg: FinetuneConfig, model_config) -> None:
    """Raises ValueError when the predicted activations of one batch of ``cfg`` on a
    model of ``model_config`` exceed :data:`MAX_ACTIVATION_BYTES`; the message names the
    largest batch that fits."""
    need = batch_activation_bytes(cfg, model_config)
    if need <= MAX_ACTIVATION_BYTES:
        return
    per_item = need / cfg.batch_size  # activations grow linearly with the batch
    most = max(1, int(MAX_ACTIVATION_BYTES // per_item))
    raise ValueError(
        f"batch_size={cfg.batch_size} is too large for this model: its activations are "
        f"predicted at {need / 2**30:.1f} GiB (minituner.memory.predict), over the "
        f"{MAX_ACTIVATION_BYTES / 2**30:g} GiB limit; use a batch_size of at most {most}"
    )


def check_eval_limit(n) -> int | None:
    """``n`` when it is a valid eval limit: None (no cap: the full held-out splits at the
    end) or a whole number from 1 to :data:`MAX_EVAL_LIMIT` (a run record stores it).

    Raises:
        ValueError: anything else, one line.
    """
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EVAL_LIMIT:
        shown = f"{n!r}" if len(repr(n)) <= 40 else f"{repr(n)[:20]}…"
        raise ValueError(
            f"eval_limit must be a whole number from 1 to {MAX_EVAL_LIMIT:,} (items per "
            f"split; unset: no cap), got {shown}"
        )
    return n


def check_before_training(cfg: FinetuneConfig, base, eval_limit: int | None = None) -> None:
    """Every check of ``cfg`` that needs the base model (a ``finetune.result.Base``):
    :func:`check_rank`, :func:`check_batch`, the taught verb's characters
    (:func:`minituner.minigpt.teach.check_teach`) and :func:`check_eval_limit`. The CLI
    runs it before training; the app before it starts a training child.

    Raises:
        ValueError: the first check that fails, one line.
    """
    check_eval_limit(eval_limit)
    check_rank(cfg, base.model.config)  # a rank the model cannot take
    check_batch(cfg, base.model.config)  # a batch its memory cannot take
    if cfg.teach:  # a character the model cannot read
        from minituner.minigpt.teach import check_teach

        check_teach(TeachVerb.parse(cfg.teach), base.tok)


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


def check_batch_size(n: int) -> None:
    """Raises ValueError unless 1 <= n <= :data:`MAX_BATCH_SIZE` (the model-free bound;
    :func:`check_batch` is the one for a given model)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BATCH_SIZE:
        raise ValueError(
            f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE} (a larger batch "
            f"of the default MiniGPT is predicted to need over "
            f"{MAX_ACTIVATION_BYTES / 2**30:g} GiB of activation memory), got {n!r}"
        )


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
        check_batch_size(self.batch_size)
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
