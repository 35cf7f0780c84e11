"""One fine-tuning loop for full fine-tuning, LoRA and QLoRA.

A run is an iterable of typed events (:mod:`minituner.finetune.events`), so the CLI's progress
bar, the app's live charts and the training child process (:mod:`minituner.finetune.worker`) all
read the very same loop::

    run = Training(FinetuneConfig(method="lora", r=8))
    for e in run:
        match e:
            case Step(step=s, loss=loss): ...
            case Evaluation(): ...          # a sample of every held-out split
    run.result                              # FinetuneResult: completed | stopped | diverged

It can be stopped between steps (``should_stop``). A run counts as diverged, and is
never stored, when the loss stops being a finite number or rises far above the base
model's, or when an evaluation shows control perplexity far above the base model's
(:func:`loss_divergence`, :func:`evaluation_collapse`).

Training: AdamW, linear warm-up then cosine decay, gradient clipping, the loss masked
to the answer characters of the cloze pairs, batches drawn (seeded) from
:func:`minituner.minigpt.data.training_examples` (finetune_train, or a taught verb's pairs, plus
the config's share of replayed regular-verb pairs). A teach run checks the taught verb
against the vocabulary before anything trains and evaluates its held-out prompts
(``taught_accuracy``). On the CPU a seed gives the same run every time.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minituner.finetune import events as ev
from minituner.finetune.config import FinetuneConfig, check_eval_limit
from minituner.finetune.result import Base, FinetuneResult, load_base, prepare_model
from minituner.lora.inject import count_parameters, lora_layers
from minituner.memory import measure, shapes
from minituner.memory import predict as memory
from minituner.minigpt.data import IGNORE, encode_cloze, training_examples
from minituner.minigpt.evaluate import drift, evaluate
from minituner.minigpt.trainutil import device_name, lr_at, resolve_device, seed_everything

# What a user would call diverged. The first step's loss is the base model's loss on its
# batch; a fine-tune only lowers it, so 4x that is broken, not noisy. Control perplexity
# 1.5x the base's (+50% drift) is a broken model: full fine-tuning at its best lr drifts
# about +9%, LoRA under 1%; the lr search's 3e-3 run drifted +3815%.
LOSS_FACTOR = 4.0
COLLAPSE_PPL_FACTOR = 1.5


def _masked_loss(model, x, y) -> torch.Tensor:
    logits = model(x)  # (B, T, vocab)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE)


@dataclass
class _Loop:
    """What the loop needs between steps: the model, its optimizer and the data."""

    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, or its DDP wrapper under torchrun
    opt: torch.optim.Optimizer
    trainable: list
    data: object  # ClozeData: tensors on the device
    gen: torch.Generator
    dev: torch.device
    dist: object  # distributed.DistInfo
    batch_shape: tuple[int, int] = (0, 0)  # (B, T) of the last batch, for the memory estimate


class Training:
    """One fine-tuning run as an iterable of typed events (:mod:`minituner.finetune.events`).

    Iterating runs it: ``Phase("preparing")``, ``Started``, an ``Evaluation`` of the base
    model (step 0), one ``Step`` per optimizer step with an ``Evaluation`` every
    ``cfg.eval_every`` steps, ``Phase("final evaluation")`` and one terminal event
    (``Finished``, ``Stopped`` or ``Diverged``). ``result`` holds the
    :class:`FinetuneResult` once the terminal event has been yielded. Errors propagate
    as exceptions (the training child process turns them into ``Failed``).

    ``should_stop`` is checked between steps. ``eval_limit`` caps every evaluation
    (periodic and final) at that many items per split: the cost of evaluation is a
    parameter (None: the full held-out splits at the end).
    """

    def __init__(
        self,
        cfg: FinetuneConfig,
        base: Base | None = None,
        device: str = "auto",
        should_stop: Callable[[], bool] | None = None,
        eval_limit: int | None = None,
    ) -> None:
        check_eval_limit(eval_limit)  # the one rule, the app's pre-flight's too
        self.cfg = cfg
        self.base = base
        self.device = device
        self.should_stop = should_stop or (lambda: False)
        self.eval_limit = eval_limit
        self.result: FinetuneResult | None = None
        self.taught = None  # a teach run's held-out cloze pairs (set up with the model)

    def __iter__(self) -> Iterator[ev.Event]:
        return self._run()

    # ------------------------------------------------------------------ the run
    def _run(self) -> Iterator[ev.Event]:
        cfg = self.cfg
        t_start = time.perf_counter()
        yield ev.Phase("preparing", "copying the base model, evaluating it")
        base = self.base = self.base or load_base()
        loop = self._setup(base)
        main = loop.dist.is_main
        params = count_parameters(loop.model)
        # the base figures on the evaluation sample, so curves start at drift 0 (on a copy:
        # the shared base model stays on the CPU, untouched)
        sample_base = self._evaluate(_copy_to(base.model, loop.dev), sample=True) if main else {}
        extra: dict = {}
        if cfg.method == "qlora" and main:  # the cost of quantization alone: adapter off
            extra["nf4_base_metrics"] = _without_lists(self._eval_without_lora(loop.model))
        yield ev.Started(
            cfg.label(), device_name(loop.dev), params["trainable"], params["total"], cfg.steps
        )
        curves: dict[str, list] = {"step": [], "loss": [], "lr": [], "tokens_per_s": []}
        evals: list[ev.Evaluation] = []
        if main:
            evals.append(
                ev.Evaluation.from_metrics(0, sample_base, drift(sample_base, sample_base))
            )
            yield evals[0]
        yield ev.Phase("training")
        end: ev.Terminal | None = None
        first_loss = None
        memory_measured: dict = {}
        loop.model.train()
        for step in range(cfg.steps):
            if self.should_stop():
                end = ev.Stopped(f"stopped by the user after {step} steps", step)
                break
            t0 = time.perf_counter()
            lr, loss_v, n_tokens = self._step(loop, step)
            first_loss = loss_v if first_loss is None else first_loss
            why = loss_divergence(loss_v, first_loss)
            if why:
                end = ev.Diverged(f"{why} at step {step + 1}; {self._hint()}", step + 1)
                break
            if step == 0:
                memory_measured = _measure_memory(loop.model, loop.opt, loop.dev)
            dt = time.perf_counter() - t0
            curves["step"].append(step + 1)
            curves["loss"].append(loss_v)
            curves["lr"].append(lr)
            curves["tokens_per_s"].append(n_tokens / dt if dt > 0 else 0.0)
            yield ev.Step(step + 1, cfg.steps, loss_v, lr, curves["tokens_per_s"][-1])
            if main and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                m = self._evaluate(loop.model, sample=True)
                evals.append(ev.Evaluation.from_metrics(step + 1, m, drift(m, sample_base)))
                yield evals[-1]
                why = evaluation_collapse(evals[-1])
                if why:
                    end = ev.Diverged(f"{why} at step {step + 1}; {self._hint()}", step + 1)
                    break
                loop.model.train()

        metrics: dict = {
            "device": device_name(loop.dev),
            "trainable_params": params["trainable"],
            "total_params": params["total"],
            "curves": curves,
            "evals": [e.to_json() for e in evals],
            **extra,
        }
        final_ev: ev.Evaluation | None = None  # the final figures, typed (None: not here)
        if end is None and main:
            yield ev.Phase("final evaluation", "the full held-out splits")
            loop.model.eval()
            final = self._evaluate(loop.model, base_metrics=base.metrics)
            metrics.update(_without_lists(final))
            metrics["memory"] = {
                "predicted": _predict_memory(base, cfg, loop.batch_shape),
                "measured": memory_measured,
            }
            final_ev = ev.Evaluation.from_metrics(cfg.steps, final, final)  # drift included
            why = evaluation_collapse(final_ev)
            if why:
                end = ev.Diverged(f"{why} in the final evaluation; {self._hint()}", cfg.steps)
        wall = time.perf_counter() - t_start
        if end is None:
            f = final_ev
            end = ev.Finished(
                wall, f.irregular_accuracy if f else 0.0, f.control_en_drift if f else 0.0
            )
        metrics["status"] = ev.STATUS[type(end)]
        metrics["message"] = getattr(end, "message", "")
        metrics["wall_time_s"] = wall
        if self.eval_limit is not None:
            metrics["eval_limit"] = self.eval_limit
        ok = isinstance(end, ev.Finished)
        self.result = FinetuneResult(
            cfg, metrics["status"], metrics["message"], loop.model if ok else None, metrics, base
        )
        yield end

    # ------------------------------------------------------------------ its steps
    def _setup(self, base: Base) -> _Loop:
        """Device, seeds, the prepared model, its optimizer and the encoded data."""
        from minituner.finetune import distributed

        cfg = self.cfg
        if cfg.teach:  # a character the model cannot read: one line, before any work
            from minituner.minigpt.teach import TeachVerb, check_teach, teach_split

            verb = check_teach(TeachVerb.parse(cfg.teach), base.tok)
            self.taught = teach_split(verb, base.corpus_config).held_out
        dist_info = distributed.from_env()
        dev = distributed.setup(dist_info, resolve_device(self.device))
        seed_everything(cfg.seed)
        model = prepare_model(base, cfg, dev)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return _Loop(
            model=model,
            train_model=distributed.wrap(model, dist_info, dev),  # DDP when distributed
            opt=torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay),
            trainable=trainable,
            data=encode_cloze(base.tok, training_examples(base.corpus, cfg)).to(dev),
            gen=torch.Generator().manual_seed(cfg.seed),
            dev=dev,
            dist=dist_info,
        )

    def _step(self, loop: _Loop, step: int) -> tuple[float, float, int]:
        """One optimizer step on a seeded batch: (lr, loss, tokens in the global batch).
        Under torchrun each process takes its share of the batch and the loss is
        normalised by the global count of answer characters."""
        from minituner.finetune import distributed

        cfg, dist_info = self.cfg, loop.dist
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        for g in loop.opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(loop.data), (cfg.batch_size,), generator=loop.gen).to(loop.dev)
        if step == 0 and loop.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(loop.dev)
        if dist_info.enabled:
            n_global = int((loop.data.batch(idx)[1] != IGNORE).sum())
            x, y = loop.data.batch(idx[dist_info.rank :: dist_info.world])
            logits = loop.train_model(x)  # (B/world, T, vocab)
            loss_sum = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                ignore_index=IGNORE, reduction="sum",
            )  # fmt: skip
            loss = loss_sum * dist_info.world / n_global
            loss_v = distributed.all_reduce_sum(loss_sum.detach(), dist_info).item() / n_global
        else:
            x, y = loop.data.batch(idx)
            loss = _masked_loss(loop.train_model, x, y)
            loss_v = loss.item()
        loop.batch_shape = (int(x.shape[0]), int(x.shape[1]))
        if math.isfinite(loss_v):  # never step on a NaN
            loop.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(loop.trainable, cfg.grad_clip)
            loop.opt.step()
        return lr, loss_v, int(x.numel()) * dist_info.world

    def _evaluate(self, model, base_metrics: dict | None = None, sample: bool = False) -> dict:
        """evaluate() at this run's cost: the periodic sample, or the final splits."""
        limit = self.cfg.eval_sample if sample else None
        if self.eval_limit is not None:
            limit = min(limit or self.eval_limit, self.eval_limit)
        corpus = self.base.corpus
        taught = {"taught": self.taught} if self.taught else {}  # a teach run's held-out
        return evaluate(
            model, self.base.tok, corpus, base_metrics=base_metrics, sample=limit, **taught
        )

    def _eval_without_lora(self, model) -> dict:
        """Evaluate with every LoRA branch switched off (B = 0 has the same effect)."""
        layers = lora_layers(model)
        saved = {p: layer.lora_B.detach().clone() for p, layer in layers.items()}
        with torch.no_grad():
            for layer in layers.values():
                layer.lora_B.zero_()
        try:
            return self._evaluate(model, base_metrics=self.base.metrics)
        finally:
            with torch.no_grad():
                for p, layer in layers.items():
                    layer.lora_B.copy_(saved[p])

    def _hint(self) -> str:
        return f"try a lower learning rate than {self.cfg.lr:g}"


def _copy_to(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    return copy.deepcopy(model).to(dev)


def loss_divergence(loss: float, first_loss: float) -> str | None:
    """Why a training loss counts as diverged, or None: not a finite number, or more
    than ``LOSS_FACTOR`` times the first step's loss (the base model's loss on its batch,
    before any update)."""
    if not math.isfinite(loss):
        return f"the loss became {loss}"
    if loss > LOSS_FACTOR * max(first_loss, 1e-3):
        return f"the loss rose to {loss:.4g} from {first_loss:.4g}"
    return None


def evaluation_collapse(e: ev.Evaluation) -> str | None:
    """Why an evaluation shows a broken model, or None: control perplexity more than
    ``COLLAPSE_PPL_FACTOR`` times the base model's on either language."""
    for lang, d in (("English", e.control_en_drift), ("Spanish", e.control_es_drift)):
        if not math.isfinite(d) or d + 1.0 > COLLAPSE_PPL_FACTOR:
            return (
                f"the model collapsed: {lang} control perplexity is {d + 1.0:.3g}x the base model's"
            )
    return None


def finetune(
    cfg: FinetuneConfig,
    base: Base | None = None,
    device: str = "auto",
    callback: Callable[[ev.Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    eval_limit: int | None = None,
) -> FinetuneResult:
    """Run :class:`Training` to the end; ``callback`` sees every event."""
    run = Training(cfg, base, device, should_stop, eval_limit)
    for e in run:
        if callback is not None:
            callback(e)
    assert run.result is not None
    return run.result


def _without_lists(m: dict) -> dict:
    return {k: v for k, v in m.items() if not isinstance(v, list)}


def _measure_memory(model, opt, dev: torch.device) -> dict:
    m = measure.measured_memory_cpu(model, opt)
    out = {
        k: int(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    out["device"] = dev.type
    if dev.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(dev))
        out["cuda_peak_allocated"] = peak
        # what the peak holds beyond the tensors counted above: activations and workspace
        out["activations"] = max(0, peak - out.get("total", 0))
    return out


def _predict_memory(base: Base, cfg: FinetuneConfig, batch_shape) -> dict:
    shape = shapes.ModelShape.from_gpt_config(base.model.config)
    kw = {} if cfg.method == "full" else {"r": cfg.r, "targets": tuple(cfg.targets)}
    pred = memory.predict_memory(
        shape,
        cfg.method,
        batch=int(batch_shape[0]),
        seq=int(batch_shape[1]),
        precision="fp32",
        double_quant=cfg.nf4_double_quant,
        block_size=cfg.nf4_block_size,
        **kw,
    )
    return {
        k: (int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        for k, v in pred.items()
    }
