"""One fine-tuning loop for full fine-tuning, LoRA and QLoRA.

The loop is a generator of events, so the CLI can draw a progress bar and the app can
draw live charts from the very same code::

    for ev in finetune_events(FinetuneConfig(method="lora", r=8)):
        if ev["type"] == "step": ...            # step, steps, loss, lr, tokens_per_s
        elif ev["type"] == "eval": ...          # step + evaluation figures on a sample
        elif ev["type"] == "end": result = ev["result"]   # status completed|diverged|stopped

It can be stopped between steps (``should_stop``). A NaN or exploding loss ends the run
with status "diverged" and a message; its figures are never stored.

Training: AdamW, linear warm-up then cosine decay, gradient clipping, the loss masked
to the answer characters of the cloze pairs, batches drawn (seeded) from
finetune_train. On the CPU a seed gives the same run every time.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import measure, memory, shapes
from .checkpoint import load_model
from .config import FinetuneConfig
from .corpus import CorpusConfig, build_corpus
from .data import IGNORE, encode_cloze
from .evaluate import drift, evaluate
from .lora import add_lora, count_parameters, lora_layers
from .paths import base_dir
from .trainutil import device_name, lr_at, resolve_device, seed_everything

EXPLODE_FACTOR = 20.0  # loss above EXPLODE_FACTOR x the first loss counts as diverged


@dataclass
class Base:
    """The pretrained model a fine-tune starts from (kept on the CPU, never modified)."""

    model: torch.nn.Module
    tok: object
    config: dict
    metrics: dict
    model_id: str
    corpus_config: CorpusConfig = field(default_factory=CorpusConfig)

    @property
    def corpus(self):
        return build_corpus(self.corpus_config)


def load_base(directory: str | Path | None = None) -> Base:
    """Load the base model directory with its metrics (default: the shipped one,
    :func:`minituner.paths.base_dir`).

    Raises:
        ValueError: missing or corrupt files (the message says how to rebuild them).
    """
    import hashlib

    from .io import read_json

    d = Path(directory) if directory is not None else base_dir()
    model, tok, cfg = load_model(d)
    metrics = read_json(d / "metrics.json")
    try:
        corpus_cfg = CorpusConfig(**cfg.get("pretrain", {}).get("corpus", {}))
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{d}/config.json has an unreadable corpus config ({e})") from None
    h = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()[:12]
    if metrics.get("corpus_version") != build_corpus(corpus_cfg).version:
        raise ValueError(
            f"{d}: the base model was trained on corpus {metrics.get('corpus_version')}, but "
            f"this code generates {build_corpus(corpus_cfg).version}; re-run "
            "`python -m minituner pretrain`"
        )
    return Base(model, tok, cfg, metrics, h, corpus_cfg)


@dataclass
class FinetuneResult:
    config: FinetuneConfig
    status: str  # completed | diverged | stopped
    message: str
    model: torch.nn.Module | None
    metrics: dict
    base: Base

    def ok(self) -> bool:
        return self.status == "completed"


def prepare_model(base: Base, cfg: FinetuneConfig, device: torch.device) -> torch.nn.Module:
    """A fresh copy of the base model set up for ``cfg.method`` (trainable parts only)."""
    from .nf4_linear import quantize_model_nf4

    model = copy.deepcopy(base.model).to(device)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "qlora":
        quantize_model_nf4(model, block_size=cfg.nf4_block_size, double_quant=cfg.nf4_double_quant)
    add_lora(
        model, list(cfg.targets), r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, rslora=cfg.rslora
    )
    return model


def _masked_loss(model, x, y) -> torch.Tensor:
    logits = model(x)  # (B, T, vocab)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE)


def finetune_events(
    cfg: FinetuneConfig,
    base: Base | None = None,
    device: str = "auto",
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict]:
    """Fine-tune and yield events (see the module docstring). The last event is
    ``{"type": "end", "result": FinetuneResult}``."""
    from . import distributed

    cfg.validate()
    base = base or load_base()
    dist_info = distributed.from_env()
    dev = distributed.setup(dist_info, resolve_device(device))
    main = dist_info.is_main
    corpus = base.corpus
    tok = base.tok
    seed_everything(cfg.seed)
    t_start = time.perf_counter()

    model = prepare_model(base, cfg, dev)
    train_model = distributed.wrap(model, dist_info, dev)  # DDP when distributed
    params = count_parameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = encode_cloze(tok, corpus.finetune_train).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)

    # the base figures on the periodic-evaluation sample, so curves start at drift 0
    # (on a copy: the shared base model stays on the CPU, untouched, for other users)
    base_on_dev = copy.deepcopy(base.model).to(dev) if main else None
    sample_base = evaluate(base_on_dev, tok, corpus, sample=cfg.eval_sample) if main else {}
    del base_on_dev
    extra: dict = {}
    if cfg.method == "qlora" and main:  # the cost of quantization alone: NF4 base, adapter off
        extra["nf4_base_metrics"] = _without_lists(
            _eval_without_lora(model, tok, corpus, base.metrics)
        )
    yield {
        "type": "start",
        "config": cfg.to_dict(),
        "device": device_name(dev),
        "trainable_params": params["trainable"],
        "total_params": params["total"],
    }

    curves: dict[str, list] = {"step": [], "loss": [], "lr": [], "tokens_per_s": []}
    evals: list[dict] = []
    if main:
        evals.append(
            {
                "step": 0,
                **_without_lists(sample_base),
                "control_en_drift": 0.0,
                "control_es_drift": 0.0,
            }
        )
        yield {"type": "eval", **evals[0]}
    first_loss = None
    status, message = "completed", ""
    memory_measured: dict = {}
    model.train()
    for step in range(cfg.steps):
        if should_stop is not None and should_stop():
            status, message = "stopped", f"stopped by the user after {step} steps"
            break
        t0 = time.perf_counter()
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen).to(dev)
        if step == 0 and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        if dist_info.enabled:  # this rank's share; the loss normalized by the global count
            n_global = int((data.batch(idx)[1] != IGNORE).sum())
            x, y = data.batch(idx[dist_info.rank :: dist_info.world])
            logits = train_model(x)
            loss_sum = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                y.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            loss = loss_sum * dist_info.world / n_global
            loss_v = distributed.all_reduce_sum(loss_sum.detach(), dist_info).item() / n_global
        else:
            x, y = data.batch(idx)
            loss = _masked_loss(train_model, x, y)
            loss_v = loss.item()
        if first_loss is None:
            first_loss = loss_v
        if not math.isfinite(loss_v) or loss_v > EXPLODE_FACTOR * max(first_loss, 1e-3):
            status = "diverged"
            message = (
                f"loss became {loss_v:.4g} at step {step + 1} (started at {first_loss:.4g}); "
                f"try a lower learning rate than {cfg.lr:g}"
            )
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        if step == 0:
            memory_measured = _measure_memory(model, opt, dev)
        dt = time.perf_counter() - t0
        n_tokens = int(x.numel()) * dist_info.world
        curves["step"].append(step + 1)
        curves["loss"].append(loss_v)
        curves["lr"].append(lr)
        curves["tokens_per_s"].append(n_tokens / dt if dt > 0 else 0.0)
        yield {
            "type": "step",
            "step": step + 1,
            "steps": cfg.steps,
            "loss": loss_v,
            "lr": lr,
            "tokens_per_s": curves["tokens_per_s"][-1],
        }
        if main and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            m = evaluate(model, tok, corpus, sample=cfg.eval_sample)
            ev = {"step": step + 1, **_without_lists(m), **drift(m, sample_base)}
            evals.append(ev)
            yield {"type": "eval", **ev}
            model.train()

    metrics: dict = {
        "status": status,
        "message": message,
        "config": cfg.to_dict(),
        "device": device_name(dev),
        "trainable_params": params["trainable"],
        "total_params": params["total"],
        "curves": curves,
        "evals": evals,
        **extra,
    }
    if status == "completed" and main:
        model.eval()
        final = evaluate(model, tok, corpus, base_metrics=base.metrics)
        metrics.update(_without_lists(final))
        metrics["memory"] = {
            "predicted": _predict_memory(base, cfg, x.shape),
            "measured": memory_measured,
        }
    metrics["wall_time_s"] = time.perf_counter() - t_start
    result = FinetuneResult(
        cfg, status, message, model if status == "completed" else None, metrics, base
    )
    yield {"type": "end", "result": result}


def finetune(
    cfg: FinetuneConfig,
    base: Base | None = None,
    device: str = "auto",
    callback: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Run :func:`finetune_events` to the end; ``callback`` sees every event."""
    result = None
    for ev in finetune_events(cfg, base, device, should_stop):
        if callback is not None:
            callback(ev)
        if ev["type"] == "end":
            result = ev["result"]
    assert result is not None
    return result


def _without_lists(m: dict) -> dict:
    return {k: v for k, v in m.items() if not isinstance(v, list)}


def _eval_without_lora(model, tok, corpus, base_metrics) -> dict:
    """Evaluate with every LoRA branch switched off (B = 0 has the same effect)."""
    layers = lora_layers(model)
    saved = {p: layer.lora_B.detach().clone() for p, layer in layers.items()}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.zero_()
    try:
        return evaluate(model, tok, corpus, base_metrics=base_metrics)
    finally:
        with torch.no_grad():
            for p, layer in layers.items():
                layer.lora_B.copy_(saved[p])


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


def full_delta(result: FinetuneResult) -> dict[str, torch.Tensor]:
    """Every parameter's change after full fine-tuning (embeddings and norms too), so
    the fine-tuned model can be rebuilt from the base model."""
    base_sd = result.base.model.state_dict()
    return {
        name: (p.detach().cpu() - base_sd[name]).float()
        for name, p in result.model.named_parameters()
    }


def weight_delta(result: FinetuneResult) -> dict[str, torch.Tensor]:
    """ΔW of every adapted Linear (float32, CPU): W_ft - W_base for full fine-tuning,
    scaling·B·A for LoRA/QLoRA."""
    model = result.model
    if model is None:
        raise ValueError("the run did not complete: it has no weight update")
    if result.config.method == "full":
        base_sd = result.base.model.state_dict()
        out = {}
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("blocks."):
                out[name] = (mod.weight.detach().cpu() - base_sd[name + ".weight"]).float()
        return out
    return {
        p: layer.delta_weight().detach().float().cpu() for p, layer in lora_layers(model).items()
    }
