"""QLoRA on a LLaMA-7B-shaped model: measured peak memory and step time vs the prediction.

    python benchmarks/bench_7b_qlora.py --device cuda --out bench_7b.json
    python benchmarks/bench_7b_qlora.py --device cuda --peft --dequant-bw --out b.json
    python benchmarks/bench_7b_qlora.py --device cpu --shape tiny --steps 2   # smoke test
    python benchmarks/bench_7b_qlora.py --batch 8 --r 8 --peft --liger --torchao \
        --kernels both --profile --out b8.json    # issue 27's comparison at full load

Builds ``minituner.scale.llama.build_nf4_llama`` once (random seeded weights, NF4 block Linears
made one at a time), then for every (r, targets) pair adds LoRA, trains ``--warmup`` +
``--steps`` AdamW steps on random tokens (bf16 compute under autocast, float32 LoRA
parameters) and records: the median step time, tokens/s, the memory held after the steps
(weights + LoRA + grads + Adam: compare with ``states_total``) and the peak
(``torch.cuda.max_memory_allocated``: compare with ``total``), next to
``memory.predict_memory(..., "qlora", activation_checkpointing=...)`` for precision
"bf16" (as asked) and "mixed" (float32 LoRA and Adam states, which is what runs here).
The 7b shape is ``shapes.SHAPES["llama-7b"]``. targets ``qv`` are q_proj and v_proj;
``all`` are the seven Linears of a layer. On CPU no peak is measured (the JSON says so).

Peers, each on the same random weights and batches in the same process, eager as their
users run them, ratios ours / theirs stored beside each of their runs:

* ``--peft``: Hugging Face + bitsandbytes + PEFT (below);
* ``--liger``: the same with Liger-Kernel's ``apply_liger_kernel_to_llama()`` applied
  before the model is built (fused RMSNorm, RoPE, SwiGLU) and the loss through the
  model's ``labels`` so that its fused linear cross-entropy runs (HF scores positions
  0..T-2 on x[t+1]: one position fewer of 512); run last, its patch is process-wide;
* ``--torchao``: this benchmark's LLaMA with torchao's NF4 tensor (``to_nf4``, blocks of
  64, scalers in blocks of 256) + LoRA Linears, each decoder layer under
  ``torch.compile`` (as torchtune does); a failure to build or compile is recorded.

Our step runs with the Triton kernels of ``minituner.scale.fused_*`` (``--kernels
fused``, default), without (``plain``) or both. Every run gets its model FLOPs and MFU
(``minituner.scale.flops``: decoder GEMMs forward + recompute + input gradient, head
forward + input gradient, LoRA 4 passes, causal attention; the card's dense bf16 peak),
and with ``--profile`` the GPU time by kind (GEMM, attention, NF4 dequantize, other):
the GEMM time is the floor the step cannot go under.

``--peft`` repeats each pair with Hugging Face's LlamaForCausalLM, bitsandbytes NF4
(Linear4bit, double quantization, blocks of 64) and PEFT LoRA, and reports the ratios
ours / theirs; it only runs where transformers, peft and bitsandbytes import (bitsandbytes' CPU
backend works for the tiny shape, slowly).
On CUDA our step runs as a CUDA graph (``minituner.scale.graphs.CapturedTrainStep``: warm-up
eager, captured once, then replayed; AdamW with ``capturable=True``); ``--no-graph`` runs it
eagerly, ``--eager-too`` runs it both ways and stores the eager figures as ``runs_eager``.
Each LoRA-wrapped NF4 Linear runs as one fused autograd node (``minituner.lora.qlora``);
``--no-fused-lora`` calls the LoRA modules instead.
PEFT always runs eagerly (as its users run it).
``--profile`` runs one more step of each configuration under torch.profiler and stores the
step's wall time, the time the GPU was busy in it (the union of kernel, memcpy and memset
intervals of the trace, so overlapping streams count once) and the kernels taking the most
time, grouped by name.
``--clocks`` samples the SM clock, power and NVML's clock-limit reasons during each
system's timed steps (``gpu_clocks.py``; needs ``nvidia-ml-py``), and every peer's ratios
get ``same_gemm_kernels``: the cuBLAS kernels both steps ran with the same name and the
same count (the same products), their summed times and the ratio ours / theirs, which
is 1 when a GEMM runs as fast in one step as in the other.
``--dequant-bw`` times dequantizing one 4096 x 11008 NF4 weight to bf16 against cloning
the bf16 weight (a device-to-device copy), both as GB/s of bytes read + written.
Nothing here asserts a number: read the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import re
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_clocks import ClockSampler, ClocksUnavailable, nvml_reader  # noqa: E402
from gpu_clocks import line as clocks_line  # noqa: E402

from minituner.lora.inject import add_lora, lora_layers  # noqa: E402
from minituner.lora.qlora import GemmOrder  # noqa: E402
from minituner.lora.qlora_group import LoRAInK  # noqa: E402
from minituner.memory.predict import predict_memory  # noqa: E402
from minituner.memory.shapes import SHAPES  # noqa: E402
from minituner.nf4.codec import dequantize_nf4, quantize_nf4  # noqa: E402
from minituner.nf4.format import QLORA_DOUBLE_QUANT  # noqa: E402
from minituner.nf4.storage import nf4_storage_bytes  # noqa: E402
from minituner.scale.flops import peak_bf16, step_flops  # noqa: E402
from minituner.scale.graphs import CapturedTrainStep  # noqa: E402
from minituner.scale.llama import (  # noqa: E402
    LLAMA_LINEARS,
    LlamaAttention,
    LlamaConfig,
    LlamaDecoderLayer,
    build_nf4_llama,
)

TARGETS = {"qv": ["q_proj", "v_proj"], "all": list(LLAMA_LINEARS)}
PREDICT_TARGETS = {"qv": ("q", "v"), "all": "all"}  # ModelShape short names
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MiB = 1024**2
# --variants: settings of our fused path timed beside the default, (class, attribute, value)
VARIANTS = {
    "lora_first": [(GemmOrder, "base_first", False)],
    "base_first": [(GemmOrder, "base_first", True)],
    "qkv_one_gemm": [(LlamaAttention, "qkv_one_gemm", True)],
    "base_first_qkv_one_gemm": [
        (GemmOrder, "base_first", True),
        (LlamaAttention, "qkv_one_gemm", True),
    ],
    "lora_in_k": [(LoRAInK, "on", True)],  # the LoRA products inside the base GEMMs' K
    "norm_residual": [(LlamaDecoderLayer, "norm_residual", True)],  # the add in the norm
    "lora_in_k_norm_residual": [
        (LoRAInK, "on", True),
        (LlamaDecoderLayer, "norm_residual", True),
    ],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    p.add_argument("--r", type=int, nargs="+", default=[8, 16])
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), default=["qv", "all"])
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="compute dtype")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument(
        "--no-graph", dest="graph", action="store_false",
        help="run our step eagerly (default on CUDA: captured in a CUDA graph and replayed)",
    )  # fmt: skip
    p.add_argument("--eager-too", action="store_true", help="also time our eager step")
    p.add_argument(
        "--no-fused-lora", dest="fused_lora", action="store_false",
        help="call the LoRA modules instead of the fused QLoRA node (minituner.lora.qlora)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peft", action="store_true", help="also run HF + bitsandbytes + PEFT")
    p.add_argument(
        "--liger", action="store_true",
        help="also run HF + bitsandbytes + PEFT with Liger-Kernel's Llama patches (loss via labels)",
    )  # fmt: skip
    p.add_argument(
        "--torchao", action="store_true",
        help="also run torchao's NF4 + LoRA on this model, each layer under torch.compile",
    )  # fmt: skip
    p.add_argument(
        "--kernels", choices=["fused", "plain", "both"], default="fused",
        help="our step with the fused Triton kernels (RMSNorm, RoPE, SwiGLU, head + loss; "
        "minituner.scale.fused_*), without them, or both (default fused)",
    )  # fmt: skip
    p.add_argument(
        "--qkv-one-gemm", action="store_true",
        help="fused kernels: q, k, v bases as one GEMM instead of three (not yet measured)",
    )  # fmt: skip
    p.add_argument(
        "--variants", nargs="*", choices=list(VARIANTS), default=[],
        help="also time our step with these settings (GEMM order, q, k, v as one GEMM); "
        "stored under 'variants' with the ratio to the default run",
    )  # fmt: skip
    p.add_argument("--dequant-bw", action="store_true", help="NF4 dequantize GB/s vs a clone")
    p.add_argument("--bw-shape", type=int, nargs=2, default=[4096, 11008], metavar=("OUT", "IN"))
    p.add_argument(
        "--profile", action="store_true",
        help="profile one more step of each configuration: GPU busy time vs wall time",
    )  # fmt: skip
    p.add_argument("--top", type=int, default=12, help="kernels listed per profiled step")
    p.add_argument(
        "--clocks", action="store_true",
        help="sample the SM clock, power and clock-limit reasons in the timed steps (NVML)",
    )  # fmt: skip
    p.add_argument(
        "--attention", choices=["auto", "cudnn"], default="auto",
        help="our attention: PyTorch's choice, or cuDNN's first (then flash)",
    )  # fmt: skip
    p.add_argument(
        "--attention-bench", action="store_true",
        help="time causal SDPA forward + backward per backend at this batch's shape (CUDA)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(shape: str) -> LlamaConfig:
    return LlamaConfig() if shape == "7b" else LlamaConfig.tiny()


def _shape(args, cfg: LlamaConfig):
    if args.shape == "7b":
        shape = SHAPES["llama-7b"]
        assert shape.total_params() == cfg.to_shape().total_params()
        return shape
    return cfg.to_shape("llama-tiny")


def _mem(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "peak": torch.cuda.max_memory_allocated(device),
    }


def _reset_peak(device: torch.device) -> None:
    """Free what the last configuration left and restart the peak from what is allocated.

    cuBLAS keeps a workspace per stream in the caching allocator for the life of the
    process; they are freed here too, so that each configuration's peak counts its own
    workspaces and not those of the ones before it.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
            torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def remove_lora(model: torch.nn.Module) -> None:
    """Put every LoRALinear's base back in its place (undo add_lora without merging)."""
    for path, layer in lora_layers(model).items():
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, layer.base)


def _batches(args, cfg: LlamaConfig, device: torch.device, n: int) -> list:
    g = torch.Generator().manual_seed(args.seed + 1)
    toks = torch.randint(0, cfg.vocab_size, (n, args.batch, args.seq + 1), generator=g)
    return [(t[:, :-1].to(device), t[:, 1:].to(device)) for t in toks]


def _optimizer(params, args, graph: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=args.lr, capturable=graph)


def _amp(args, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")


def _eager_runner(model, opt, step_fn, args, device):
    amp = _amp(args, device)

    def run(x, y):
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = step_fn(model, x, y)
        loss.backward()
        opt.step()
        return loss

    return run


def train_steps(model, params, batches, step_fn, args, device, graph: bool = False) -> dict:
    """warmup + timed AdamW steps; memory held after the last step and the peak (CUDA).

    With ``graph`` (CUDA only) the steps go through a :class:`CapturedTrainStep`: the
    first ``warmup - 1`` are eager, the last warm-up step captures the graph (and replays
    it), the timed steps are replays. With ``args.profile``, one more step runs under the
    profiler (:func:`profile_step`).
    """
    if graph and args.warmup < 1:
        raise ValueError("a captured step needs --warmup >= 1 (the capture is a warm-up step)")
    opt = _optimizer(params, args, graph)
    if graph:
        bf16 = torch.bfloat16 if args.dtype == "bf16" else None
        run = CapturedTrainStep(
            model, opt, step_fn, warmup=max(1, args.warmup - 1), autocast_dtype=bf16
        )
    else:
        run = _eager_runner(model, opt, step_fn, args, device)
    times, losses = [], []
    sampler, clocks = _clock_sampler(args, device)
    _reset_peak(device)
    before = _mem(device)
    with contextlib.ExitStack() as sampling:  # stops the sampler however the loop ends
        for i, (x, y) in enumerate(batches):
            _sync(device)
            if i == args.warmup and sampler is not None:
                sampling.enter_context(sampler)  # the timed steps only
            t0 = time.perf_counter()
            loss = run(x, y)
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            losses.append(loss.item())
    after = _mem(device)
    step = statistics.median(times)
    out = {
        "step_s_median": step,
        "step_s_all": times,
        "tokens_per_s": args.batch * args.seq / step,
        "losses": losses,
        "step_mode": "cuda_graph" if graph else "eager",
    }
    if device.type == "cuda":
        out.update(
            allocated_before_bytes=before["allocated"],
            states_after_bytes=after["allocated"],
            peak_bytes=after["peak"],
        )
    else:
        out["peak_bytes"] = None
        out["peak_note"] = "not measured on CPU (no allocator statistics); CUDA only"
    if clocks is not None:
        out["clocks"] = sampler.summary() if sampler is not None else clocks
    if args.profile:
        out["profile"] = profile_step(run, batches[-1], device, args.top)
    del run, opt
    for p in params:
        p.grad = None
    return out


def _clock_sampler(args, device: torch.device) -> tuple[ClockSampler | None, dict | None]:
    """(a :class:`ClockSampler` of this CUDA device or None, the record to store): without
    ``--clocks`` (None, None); where none can run (no pynvml, no NVML, a CPU run) the
    record says why."""
    if not getattr(args, "clocks", False):
        return None, None
    if device.type != "cuda":
        return None, {"samples": 0, "error": "clocks are sampled on CUDA devices only"}
    try:
        read, facts = nvml_reader(device.index or 0)
    except ClocksUnavailable as exc:
        return None, {"samples": 0, "error": str(exc)}
    return ClockSampler(read, facts), {}


def same_gemm_kernels(ours: dict, theirs: dict) -> dict | None:
    """The GEMM kernels two profiled steps both ran under the same name the same number of
    times (the same products with the same cuBLAS kernel), with their summed seconds and
    ratio ours / theirs; None without two profiles or without such a kernel.

    Only kernels in both steps' top lists count (``--top``); a ratio above 1 says the same
    GEMMs ran slower in our step (a lower clock, or other work on the memory system)."""
    mine = {k["name"]: k for k in ours.get("profile", {}).get("top_kernels", [])}
    other = {k["name"]: k for k in theirs.get("profile", {}).get("top_kernels", [])}
    same = [
        (n, k, other[n])
        for n, k in mine.items()
        if n in other and k["count"] == other[n]["count"] and kernel_category(n) == "gemm"
    ]
    if not same:
        return None
    s_ours, s_theirs = sum(a["seconds"] for _, a, _ in same), sum(b["seconds"] for *_, b in same)
    return {
        "kernels": [
            {
                "name": n,
                "count": a["count"],
                "seconds_ours": a["seconds"],
                "seconds_peer": b["seconds"],
            }
            for n, a, b in same
        ],
        "seconds_ours": s_ours,
        "seconds_peer": s_theirs,
        "time_ours_over_peer": s_ours / s_theirs if s_theirs else None,
    }


def busy_time(intervals) -> float:
    """Length of the union of (start, end) intervals: time covered by at least one."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


_DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


_CATEGORIES = (  # first match wins: attention kernels are GEMM-like but counted apart
    ("attention", re.compile(r"flash|fmha|attention|sdpa", re.I)),
    ("gemm", re.compile(r"nvjet|gemm|cutlass|xmma|cublas|wgmma|splitk", re.I)),
    ("nf4_dequantize", re.compile(r"dequant", re.I)),
)


def kernel_category(name: str) -> str:
    """attention, gemm (cuBLAS / CUTLASS matrix products), nf4_dequantize or other."""
    for category, pattern in _CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


def trace_summary(trace: dict, top: int = 12) -> dict:
    """Device activity of a chrome trace (``prof.export_chrome_trace``), times in seconds:
    ``device_busy_s`` (union of kernel, memcpy and memset intervals), ``device_span_s``
    (first start to last end), ``kernels`` (how many ran), ``top_kernels`` (the ``top``
    names by summed time: name cut to 90 characters, count, seconds, share of busy time)
    and ``categories`` (summed kernel seconds and counts by :func:`kernel_category`: the
    GEMM-only floor of the step is ``categories["gemm"]["seconds"]``)."""
    events = [
        e
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in _DEVICE_CATS and "dur" in e
    ]
    spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events]
    busy = busy_time(spans) / 1e6  # us -> s
    by_name: dict[str, list] = {}
    for e in events:
        entry = by_name.setdefault(str(e.get("name", "?"))[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += float(e["dur"]) / 1e6
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    categories: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "kernel":
            c = categories.setdefault(kernel_category(str(e.get("name", ""))), [0, 0.0])
            c[0] += 1
            c[1] += float(e["dur"]) / 1e6
    return {
        "device_busy_s": busy,
        "device_span_s": (max(b for _, b in spans) - min(a for a, _ in spans)) / 1e6
        if spans
        else 0.0,
        "kernels": sum(e.get("cat") == "kernel" for e in events),
        "top_kernels": [
            {"name": n, "count": c, "seconds": t, "share_of_busy": t / busy if busy else 0.0}
            for n, (c, t) in ranked
        ],
        "categories": {
            k: {"count": c, "seconds": t, "share_of_busy": t / busy if busy else 0.0}
            for k, (c, t) in sorted(categories.items())
        },
    }


def _print_top_kernels(res: dict, n: int = 8) -> None:
    prof = res.get("profile", {})
    if not prof.get("top_kernels"):
        return
    print(
        f"    profiled step: wall {prof['wall_s'] * 1e3:.1f} ms, GPU busy "
        f"{prof['device_busy_s'] * 1e3:.1f} ms, {prof['kernels']} kernels; by time:"
    )
    for k in prof["top_kernels"][:n]:
        print(
            f"    {k['seconds'] * 1e3:8.2f} ms {k['share_of_busy']:6.1%} x{k['count']:<5} "
            f"{k['name'][:70]}"
        )
    cats = prof.get("categories", {})
    print("    by kind: " + ", ".join(
        f"{k} {v['seconds'] * 1e3:.1f} ms ({v['share_of_busy']:.0%}, x{v['count']})"
        for k, v in cats.items()
    ))  # fmt: skip


def profile_step(run, batch, device, top: int = 12) -> dict:
    """One more training step (``run(x, y)``, warmed up) under torch.profiler: its wall
    time against the time the GPU was busy (:func:`trace_summary`).

    When ``device_busy_fraction`` is far below 1 the step waits on the CPU launching work,
    not on the GPU.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    x, y = batch
    with profile(activities=activities) as prof:
        _sync(device)
        t0 = time.perf_counter()
        run(x, y).item()
        _sync(device)
        wall = time.perf_counter() - t0
    if not cuda:
        return {"wall_s": wall, "device_busy_s": None, "note": "no device timeline on CPU"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        summary = trace_summary(json.loads(path.read_text()), top)
    return {"wall_s": wall, **summary, "device_busy_fraction": summary["device_busy_s"] / wall}


def _prediction(shape, r: int, targets: str, args) -> dict:
    out = {}
    for precision in ("bf16", "mixed"):
        out[precision] = predict_memory(
            shape,
            "qlora",
            r=r,
            targets=PREDICT_TARGETS[targets],
            batch=args.batch,
            seq=args.seq,
            precision=precision,
            activation_checkpointing=args.checkpointing,
        )
    return out


def _ratios(measured: dict, predicted: dict) -> dict:
    out = {}
    for precision, pred in predicted.items():
        if measured.get("peak_bytes") is not None:
            out[f"peak_over_total_{precision}"] = measured["peak_bytes"] / pred["total"]
        if measured.get("states_after_bytes") is not None:
            out[f"states_over_states_total_{precision}"] = (
                measured["states_after_bytes"] / pred["states_total"]
            )
    return out


def _ours_loss(model, x, y):
    return model(x, y)


def _hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.reshape(-1))


# ---------------------------------------------------------------------------- PEFT


def _hf_labels_loss(model, x, y):
    """The model's own loss through ``labels`` (Hugging Face shifts them: position t is
    scored on x[t + 1] = y[t], the last position unscored), so that Liger-Kernel's fused
    linear cross-entropy runs instead of materializing the logits."""
    return model(input_ids=x, labels=x).loss


def build_peft_llama(cfg: LlamaConfig, device, r: int, targets: list, args, liger=False):
    """HF LlamaForCausalLM, NF4 via bitsandbytes Linear4bit (made one at a time), PEFT LoRA.

    With ``liger`` Liger-Kernel's ``apply_liger_kernel_to_llama()`` (RMSNorm, RoPE,
    SwiGLU, fused linear cross-entropy) patches transformers' Llama classes first. The
    patch is global to the process: run the plain PEFT peer before this one.
    """
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from minituner.scale.llama import _normal

    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(
            rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
            fused_linear_cross_entropy=True,
        )  # fmt: skip
    dtype = DTYPES[args.dtype]
    hf = HFLlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_seq,
        rms_norm_eps=cfg.rms_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
        use_cache=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(hf)
    for name, module in list(model.named_modules()):
        if name.rpartition(".")[2] in LLAMA_LINEARS:
            lin = bnb.nn.Linear4bit(
                module.in_features,
                module.out_features,
                bias=False,
                compute_dtype=dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            w = _normal(tuple(module.weight.shape), device, dtype, args.seed, name)
            lin.weight = bnb.nn.Params4bit(
                w, requires_grad=False, blocksize=64, compress_statistics=True, quant_type="nf4"
            )
            lin.weight = lin.weight.to(device)  # quantizes
            del w
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, lin)
    for name, module in model.named_modules():  # embedding, norms, lm_head: still on meta
        for pname, p in list(module.named_parameters(recurse=False)):
            if p.is_meta:
                data = (
                    torch.ones(p.shape, device=device, dtype=dtype)
                    if "norm" in name
                    else _normal(tuple(p.shape), device, dtype, args.seed, name)
                )
                setattr(module, pname, torch.nn.Parameter(data, requires_grad=False))
    model.model.rotary_emb = LlamaRotaryEmbedding(config=hf).to(device)
    if args.checkpointing:
        with warnings.catch_warnings():  # renamed in transformers 5; the old name still works
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    model.is_loaded_in_4bit = True  # PEFT picks its bitsandbytes LoRA layer only with this
    lcfg = LoraConfig(
        r=r, lora_alpha=args.alpha, target_modules=targets, lora_dropout=0.0, bias="none"
    )
    model = get_peft_model(model, lcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params


def _peft_layer_type(model) -> str:
    for name, m in model.named_modules():
        if name.endswith("q_proj"):
            return f"{type(m).__module__}.{type(m).__name__}"
    return "?"


def _versions(*names: str) -> dict:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


PEERS = {  # name: (the packages it needs, what it is)
    "peft": (("bitsandbytes", "peft", "transformers"), "HF Llama + bitsandbytes NF4 + PEFT LoRA"),
    "liger": (
        ("bitsandbytes", "peft", "transformers", "liger_kernel"),
        "the same + Liger-Kernel's Llama patches, loss through labels (fused linear CE)",
    ),
    "torchao": (("torchao",), "this model's layers with torchao NF4 + LoRA, torch.compile"),
}


def run_peer(name: str, cfg, device, args, batches) -> dict:
    """One peer (:data:`PEERS`) for every (r, targets): eager steps as its users run them."""
    needs, what = PEERS[name]
    try:
        for module in needs:
            __import__(module)
    except Exception as exc:  # ImportError, or bitsandbytes failing to load its library
        note = f"--{name} skipped: {type(exc).__name__}: {exc}"
        print(note)
        return {"skipped": note, "what": what}
    pkgs = {"liger_kernel": "liger-kernel"}
    runs = {}
    for r in args.r:
        for t in args.targets:
            _reset_peak(device)
            try:
                if name == "torchao":
                    model, params = build_torchao_llama(cfg, device, r, TARGETS[t], args)
                    loss_fn = _ours_loss
                else:
                    model, params = build_peft_llama(
                        cfg, device, r, TARGETS[t], args, liger=name == "liger"
                    )
                    loss_fn = _hf_labels_loss if name == "liger" else _hf_loss
                res = train_steps(model, params, batches, loss_fn, args, device)
            except Exception as exc:  # a peer that does not build or run here: say so
                note = f"{name} r={r} {t} failed: {type(exc).__name__}: {str(exc)[:400]}"
                print(note)
                runs[f"r{r}_{t}"] = {"skipped": note}
                model = params = None
                _reset_peak(device)
                continue
            res["trainable_params"] = sum(p.numel() for p in params)
            if name != "torchao":
                res["lora_layer_type"] = _peft_layer_type(model)
            _report_run(f"{name} r={r:<3} {t:<4}", res, cfg, args)
            runs[f"r{r}_{t}"] = res
            del model, params
    versions = _versions(*(pkgs.get(n, n) for n in needs))
    return {"runs": runs, "what": what, "versions": versions}


def _report_run(label: str, res: dict, cfg, args) -> None:
    busy = res.get("profile", {}).get("device_busy_fraction")
    mfu = res.get("mfu")
    print(
        f"{label} step {res['step_s_median'] * 1e3:8.1f} ms  "
        f"peak {res['peak_bytes'] / MiB if res.get('peak_bytes') else float('nan'):.1f} MiB"
        + ("" if mfu is None else f"  MFU {mfu:.1%}")
        + ("" if busy is None else f"  GPU busy {busy:.0%}")
    )
    if res.get("clocks") is not None:
        print("    " + clocks_line(res["clocks"]))
    _print_top_kernels(res, args.top)


# ---------------------------------------------------------------------------- torchao


def _torchao_nf4():
    """(to_nf4, linear_nf4) from wherever this torchao keeps them (moved in 0.1x)."""
    try:
        from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor as m
    except ImportError:
        from torchao.dtypes import nf4tensor as m
    return m.to_nf4, m.linear_nf4


class TorchaoLoRALinear(torch.nn.Module):
    """A frozen torchao NF4 weight (blocks of 64, scalers quantized in blocks of 256, as
    torchtune's QLoRA) plus float32 LoRA A, B: y = linear_nf4(x, W) + s·(x Aᵀ) Bᵀ."""

    def __init__(self, weight: torch.Tensor, r: int, alpha: float):
        to_nf4, _ = _torchao_nf4()
        super().__init__()
        out_f, in_f = weight.shape
        self.in_features, self.out_features, self.r = in_f, out_f, r
        scalers = math.gcd(256, weight.numel() // 64)  # 256 at every 7B shape; tiny: fewer
        self.weight = torch.nn.Parameter(to_nf4(weight, 64, scalers), requires_grad=False)
        if r:
            dev = weight.device
            self.lora_A = torch.nn.Parameter(torch.empty(r, in_f, device=dev))
            torch.nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
            self.lora_B = torch.nn.Parameter(torch.zeros(out_f, r, device=dev))
            self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _torchao_nf4()[1](x, self.weight)
        if not self.r:
            return y
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        return y + (x @ a.t()) @ b.t() * self.scaling


def build_torchao_llama(cfg: LlamaConfig, device, r: int, targets: list, args):
    """This benchmark's LlamaQLoRA with torchao NF4 + LoRA Linears, every decoder layer
    wrapped in ``torch.compile`` (as torchtune compiles per layer)."""
    from minituner.scale.llama import LlamaQLoRA, _normal

    dtype = DTYPES[args.dtype]

    def make_linear(path: str, in_f: int, out_f: int):
        w = _normal((out_f, in_f), device, dtype, args.seed, path)
        return TorchaoLoRALinear(w, r if path.rpartition(".")[2] in targets else 0, args.alpha)

    torch.manual_seed(args.seed)
    model = LlamaQLoRA(cfg, make_linear, device, dtype, args.seed, args.checkpointing)
    model.use_fused_kernels(False)
    for m in model.modules():
        if isinstance(m, LlamaAttention):
            m.sdpa_backends = ()  # PyTorch's choice, whatever --attention says for ours
        if isinstance(m, TorchaoLoRALinear) and m.r:
            m.lora_A.requires_grad_(True)
            m.lora_B.requires_grad_(True)
    for i, layer in enumerate(model.layers):
        model.layers[i] = torch.compile(layer)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params


# ---------------------------------------------------------------------------- attention


def attention_backends(cfg: LlamaConfig, args, device, repeats: int = 10) -> dict:
    """Milliseconds of one causal SDPA forward + backward (bf16, this batch's shape) per
    backend PyTorch has here, timed with CUDA events; a backend that refuses is noted."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, T, D = args.batch, cfg.n_heads, args.seq, cfg.head_dim
    g = torch.Generator(device=device).manual_seed(0)
    qkv = [
        torch.randn(B, T, H, D, generator=g, device=device, dtype=torch.bfloat16)
        .transpose(1, 2)
        .requires_grad_()
        for _ in range(3)
    ]  # (B, H, T, D) views of (B, T, H, D) memory, as the model passes them
    grad = torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16)
    out = {}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        try:
            with sdpa_kernel([backend]):
                for _ in range(3):
                    y = torch.nn.functional.scaled_dot_product_attention(*qkv, is_causal=True)
                    y.backward(grad)
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    y = torch.nn.functional.scaled_dot_product_attention(*qkv, is_causal=True)
                    y.backward(grad)
                end.record()
                end.synchronize()
            out[name] = {"ms_fwd_bwd": start.elapsed_time(end) / repeats}
        except Exception as exc:  # not built in, or refuses these inputs
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(f"attention {name}: {out[name]}")
    return out


# ---------------------------------------------------------------------------- bandwidth


def dequant_bandwidth(device: torch.device, shape, repeats: int = 20) -> dict:
    """GB/s (read + written) of NF4 dequantize to bf16 vs cloning the bf16 weight."""
    g = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(tuple(shape), generator=g, device=device, dtype=torch.bfloat16)
    q = quantize_nf4(w, double_quant=QLORA_DOUBLE_QUANT)  # as build_nf4_llama stores it

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        ts = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    t_deq = timed(lambda: dequantize_nf4(q, torch.bfloat16))
    t_copy = timed(lambda: w.clone())
    dense = w.numel() * w.element_size()
    deq_bytes = nf4_storage_bytes(q) + dense
    return {
        "shape": list(shape),
        "dequant_s": t_deq,
        "clone_s": t_copy,
        "dequant_bytes_moved": deq_bytes,
        "clone_bytes_moved": 2 * dense,
        "dequant_gbps": deq_bytes / t_deq / 1e9,
        "clone_gbps": 2 * dense / t_copy / 1e9,
        "gbps_ratio_dequant_over_clone": (deq_bytes / t_deq) / (2 * dense / t_copy),
        "time_ratio_dequant_over_clone": t_deq / t_copy,
    }


MFU_FORMULA = (
    "model FLOPs / (median step time x peak), model FLOPs from minituner.scale.flops."
    "step_flops: decoder Linears 3 passes (forward, recompute, input gradient) of "
    "2*N*in*out, lm_head 2 passes, LoRA 4 passes of 2*N*r*(in+out), causal attention "
    "4 x 2*B*T^2*C per layer; peak = the dense bf16 Tensor Core figure of the card"
)


def _add_mfu(res: dict, cfg: LlamaConfig, args, r: int, targets: str, peak) -> None:
    flops = step_flops(
        cfg.hidden, cfg.intermediate, cfg.n_layers, cfg.vocab_size, args.batch, args.seq,
        r, TARGETS[targets],
    )  # fmt: skip
    res["model_flops"] = flops.total
    res["mfu"] = flops.mfu(res["step_s_median"], peak) if peak else None
    gemm = res.get("profile", {}).get("categories", {}).get("gemm")
    if gemm and res.get("profile", {}).get("device_busy_s"):
        res["gemm_share_of_busy"] = gemm["share_of_busy"]
        res["gemm_seconds"] = gemm["seconds"]


def train_ours(model, r: int, t: str, fused: bool, graph: bool, batches, args, device):
    """(train_steps' record, the trainable parameters) of our model with a fresh seeded
    LoRA of rank r on TARGETS[t], with or without the fused kernels."""
    remove_lora(model)
    torch.manual_seed(args.seed)
    add_lora(model, TARGETS[t], r=r, alpha=args.alpha)
    model.use_fused_kernels(fused)
    params = [p for p in model.parameters() if p.requires_grad]
    return train_steps(model, params, batches, _ours_loss, args, device, graph=graph), params


def run_variant(name, model, batches, shape, cfg, args, device, peak, runs) -> dict:
    """Our fused step under VARIANTS[name] for every (r, targets), then the defaults back."""
    saved = [(c, a, getattr(c, a)) for c, a, _ in VARIANTS[name]]
    out: dict = {}
    try:
        for c, a, v in VARIANTS[name]:
            setattr(c, a, v)
        for r in args.r:
            for t in args.targets:
                graph, key = args.graph and device.type == "cuda", f"r{r}_{t}"
                try:
                    res, _ = train_ours(model, r, t, True, graph, batches, args, device)
                except Exception as exc:  # a setting that fails here: say so, keep the rest
                    out[key] = {"failed": f"{type(exc).__name__}: {str(exc)[:400]}"}
                    print(f"ours ({name}) r={r} {t} failed: {type(exc).__name__}: {exc}")
                    _reset_peak(device)
                    continue
                _add_mfu(res, cfg, args, r, t, peak)
                if key in runs:
                    res["step_time_over_default"] = (
                        res["step_s_median"] / runs[key]["step_s_median"]
                    )
                out[key] = res
                _report_run(f"ours ({name}) r={r:<3} {t:<4}", res, cfg, args)
    finally:
        for c, a, v in saved:
            setattr(c, a, v)
    return out


def _write_partial(result: dict, args) -> None:
    """The JSON so far (a run stopped by a time limit keeps what it measured)."""
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "partial": True}, indent=2))


def _ratio(ours: dict, theirs: dict) -> dict:
    ratio = {"step_time_ours_over_peer": ours["step_s_median"] / theirs["step_s_median"]}
    if ours.get("peak_bytes") and theirs.get("peak_bytes"):
        ratio["peak_ours_over_peer"] = ours["peak_bytes"] / theirs["peak_bytes"]
    if "device_busy_fraction" in ours.get("profile", {}):
        ratio["ours_device_busy_fraction"] = ours["profile"]["device_busy_fraction"]
    same = same_gemm_kernels(ours, theirs)
    if same is not None:
        ratio["same_gemm_kernels"] = same
    return ratio


# ---------------------------------------------------------------------------- main


def _measured_on(device_name: str) -> str:
    """The device, the library versions that ran and the UTC date, in one line."""
    from importlib import metadata

    parts = [device_name, f"torch {torch.__version__}"]
    for name in ("bitsandbytes", "peft", "transformers", "liger-kernel", "torchao", "triton"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts) + time.strftime(", %Y-%m-%d", time.gmtime())


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = _config(args.shape)
    if args.seq > cfg.max_seq:
        cfg.max_seq = args.seq
    shape = _shape(args, cfg)
    result: dict = {
        "command": shlex.join(["python", "benchmarks/bench_7b_qlora.py", *sys.argv[1:]])
        if argv is None
        else shlex.join(["python", "benchmarks/bench_7b_qlora.py", *argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": cfg.to_dict(),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "lora_dtype": "float32",
        "prediction_shape": shape.name,
    }
    _reset_peak(device)
    t0 = time.perf_counter()
    model = build_nf4_llama(
        cfg, device, DTYPES[args.dtype], seed=args.seed, checkpointing=args.checkpointing
    )
    model.use_fused_lora(args.fused_lora)
    _sync(device)
    result["build"] = {"seconds": time.perf_counter() - t0, **_mem(device)}
    print(f"built {args.shape} on {device} in {result['build']['seconds']:.1f} s")
    if args.attention_bench and device.type == "cuda":
        result["attention_backends"] = attention_backends(cfg, args, device)
    if args.attention == "cudnn":
        from torch.nn.attention import SDPBackend

        LlamaAttention.sdpa_backends = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION)
    batches = _batches(args, cfg, device, args.warmup + args.steps)
    graph = args.graph and device.type == "cuda"
    peak = peak_bf16(result["device_name"])
    result["mfu_peak_flops"] = peak
    result["mfu_formula"] = MFU_FORMULA
    LlamaAttention.qkv_one_gemm = args.qkv_one_gemm
    kernels = ["fused", "plain"] if args.kernels == "both" else [args.kernels]
    modes = [(k, graph) for k in kernels] + (
        [(kernels[0], False)] if args.eager_too and graph else []
    )
    runs, runs_eager, runs_plain = {}, {}, {}
    for r in args.r:
        for t in args.targets:
            for kind, mode in modes:
                res, params = train_ours(model, r, t, kind == "fused", mode, batches, args, device)
                res["kernels"] = kind
                res["trainable_params"] = sum(p.numel() for p in params)
                res["predicted"] = _prediction(shape, r, t, args)
                res["ratios"] = _ratios(res, res["predicted"])
                _add_mfu(res, cfg, args, r, t, peak)
                where = runs_eager if mode != graph else runs if kind == kernels[0] else runs_plain
                where[f"r{r}_{t}"] = res
                _report_run(f"ours ({kind}, {res['step_mode']}) r={r:<3} {t:<4}", res, cfg, args)
                print(
                    f"    predicted total {res['predicted']['bf16']['total'] / MiB:.1f} MiB "
                    f"(bf16), {res['predicted']['mixed']['total'] / MiB:.1f} MiB (mixed)"
                )
    result["runs"] = runs
    result["defaults"] = {
        f"{c.__name__}.{a}": getattr(c, a) for v in VARIANTS.values() for c, a, _ in v
    }
    for name in args.variants:
        result.setdefault("variants", {})[name] = run_variant(
            name, model, batches, shape, cfg, args, device, peak, runs
        )
        _write_partial(result, args)
    if runs_eager:
        result["runs_eager"] = runs_eager
    if runs_plain:
        result["runs_plain"] = runs_plain
    result["measured_on"] = _measured_on(result["device_name"])
    _write_partial(result, args)
    # Liger's patch is process-wide but only touches transformers: torchao (slowest: it
    # compiles) can come after it
    peers = [n for n in ("peft", "liger", "torchao") if getattr(args, n)]
    if peers:
        del model, params
        _reset_peak(device)
    for name in peers:
        res_peer = run_peer(name, cfg, device, args, batches)
        for key, theirs in res_peer.get("runs", {}).items():
            if "step_s_median" not in theirs:
                continue
            r, t = key[1:].split("_", 1)
            _add_mfu(theirs, cfg, args, int(r), t, peak)
            theirs[f"ratios_ours_over_{name}"] = ratio = _ratio(runs[key], theirs)
            if key in runs_plain:
                plain = runs_plain[key]["step_s_median"] / theirs["step_s_median"]
                ratio["plain_kernels_step_time_ours_over_peer"] = plain
            if key in runs_eager:
                eager = runs_eager[key]["step_s_median"] / theirs["step_s_median"]
                ratio["eager_step_time_ours_over_peer"] = eager
            shown = {k: v for k, v in ratio.items() if k != "same_gemm_kernels"}
            print(f"{key}: ours/{name} {shown}")
            if "same_gemm_kernels" in ratio:
                same = ratio["same_gemm_kernels"]
                print(
                    f"    the same GEMM kernels ({len(same['kernels'])} names, same counts): "
                    f"ours {same['seconds_ours'] * 1e3:.2f} ms, {name} "
                    f"{same['seconds_peer'] * 1e3:.2f} ms, {same['time_ours_over_peer']:.3f}x"
                )
        if name == "peft":
            result["peft"] = res_peer
            for theirs in res_peer.get("runs", {}).values():  # the name scaling.py reads
                if "ratios_ours_over_peft" in theirs:
                    old = theirs["ratios_ours_over_peft"]
                    old["step_time_ours_over_peft"] = old["step_time_ours_over_peer"]
                    if "peak_ours_over_peer" in old:
                        old["peak_ours_over_peft"] = old["peak_ours_over_peer"]
        else:
            result.setdefault("peers", {})[name] = res_peer
        _write_partial(result, args)
    result["measured_on"] = _measured_on(result["device_name"])
    if args.dequant_bw:
        result["dequant_bw"] = dequant_bandwidth(device, args.bw_shape)
        print(f"dequant bandwidth: {result['dequant_bw']}")
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return result


if __name__ == "__main__":
    main()
