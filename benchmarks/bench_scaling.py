"""Data-parallel scaling: tokens/s on one GPU and on N under torchrun, at the same per-GPU batch.

    python benchmarks/bench_scaling.py --device cuda --nproc 1,2 --out benchmarks/results/scaling_h200x2.json
    python benchmarks/bench_scaling.py --device cuda --nproc 1 --out benchmarks/results/scaling_h200.json
    python benchmarks/bench_scaling.py --device cpu --shape tiny --nproc 1,2   # gloo on this CPU

For each model (``--models``, default both) and each N in ``--nproc`` this launches
``python -m torch.distributed.run --standalone --nproc_per_node N`` on this file (nccl on
CUDA, gloo on the CPU, through ``minituner.finetune.distributed``) and trains ``--warmup`` +
``--steps`` AdamW steps with the per-GPU batch fixed, so the global batch is N times it:

* ``llama``: the 7B-shaped QLoRA fine-tune of ``bench_7b_qlora.py`` (random seeded
  Llama-7B shape built straight into NF4, batch 1 x 512 tokens per GPU, bf16 autocast,
  activation checkpointing, LoRA r=8 on q_proj and v_proj, lr 1e-4); ``--shape tiny``
  takes ``LlamaConfig.tiny()`` (seq 32, float32) for a quick check on the CPU;
* ``minigpt``: LoRA on the shipped base MiniGPT with ``FinetuneConfig()``'s defaults
  (r=8 on q,v, batch 32 cloze pairs per GPU, its lr schedule and gradient clipping), the
  loss masked to the answer characters as ``minituner.finetune.loop`` does.

It prints tokens/s on one GPU and on N, the scaling efficiency (N-GPU tokens/s over N x
the one-GPU tokens/s), the peak memory of each GPU (``torch.cuda.max_memory_allocated``,
CUDA only) and its ratio to the one-GPU run, and checks that the losses of the N-GPU run
equal a one-GPU run at the same global batch: the N=1 launch also trains with N
micro-batches of gradient accumulation per step on the same global batches. In N > 1
launches every rank also times one all-reduce of a float32 tensor the size of the
trainable parameters (DDP's gradient traffic per step) and of one scalar (its latency).
One step: every micro-batch's summed loss over the global count of loss tokens, times N
(DDP averages over the N ranks), backward (``no_sync`` on all but the last micro-batch),
AdamW; the step time is the median over the ``--steps`` after ``--warmup``, between
device synchronisations, rank 0's clock.

Every child process gets ``NCCL_NVLS_ENABLE=0`` in its environment (NCCL's NVLink
multicast off, whatever the calling shell says). N larger than the visible GPUs is not
run; the JSON lists it under ``not_run``. Nothing here asserts a time: read the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from minituner.finetune import distributed  # noqa: E402

MODELS = ("llama", "minigpt")
MiB = 1024**2
CHILD_ENV = {"NCCL_NVLS_ENABLE": "0"}  # NCCL's NVLink multicast off in every child


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Every child process is started with NCCL_NVLS_ENABLE=0 in its environment.",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--nproc", default=None, help="process counts, e.g. 1,2 (default: 1 and all GPUs; 1,2 on the CPU)")  # fmt: skip
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--shape", choices=["7b", "tiny"], default="7b", help="the Llama's shape")
    p.add_argument("--seq", type=int, default=None, help="Llama tokens per sequence (512; tiny: 32)")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="Llama sequences per GPU")
    p.add_argument("--minigpt-batch", type=int, default=None, help="MiniGPT pairs per GPU (default: FinetuneConfig's)")  # fmt: skip
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on the CPU")
    p.add_argument("--loss-rtol", type=float, default=None, help="default 1e-3 with bf16, 1e-5 in float32")  # fmt: skip
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per launch")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/scaling_<device>.json)")  # fmt: skip
    # what the parent passes to the processes torchrun starts
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # models, comma-separated
    p.add_argument("--accums", default="1", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seq is None:
        args.seq = 512 if args.shape == "7b" else 32
    for name in ("steps", "batch", "threads", "seq"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def parse_nproc(text: str | None, device: str) -> list[int]:
    """The process counts to launch, 1 first (the reference), each once, ascending.

    Raises:
        ValueError: not a comma-separated list of whole numbers >= 1.
    """
    if text is None:
        gpus = torch.cuda.device_count() if device.startswith("cuda") else 2
        return sorted({1, max(1, gpus)})
    try:
        ns = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        raise ValueError(f"--nproc must be whole numbers such as 1,2; got {text!r}") from None
    if not ns or min(ns) < 1:
        raise ValueError(f"--nproc must be whole numbers >= 1; got {text!r}")
    return sorted(ns | {1})


def child_env(base: dict | None = None, device: str = "cuda", threads: int = 1) -> dict:
    """The environment of every process the benchmark starts: the caller's, with
    NCCL_NVLS_ENABLE=0 (always, overriding the caller's), the repository on PYTHONPATH
    and, on the CPU, ``threads`` OpenMP threads per process."""
    env = dict(os.environ if base is None else base)
    env.update(CHILD_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if not device.startswith("cuda"):
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def torchrun_command(n: int, models: list[str], accums: list[int], out: Path, args) -> list[str]:
    """``torchrun --standalone --nproc_per_node n`` on this file in worker mode: one launch
    trains every model in turn (one start-up of n processes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd += [str(Path(__file__).resolve()), "--worker", ",".join(models)]
    cmd += ["--accums", ",".join(map(str, accums))]
    cmd += ["--worker-out", str(out), "--device", args.device, "--shape", args.shape]
    cmd += ["--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.minigpt_batch is not None:
        cmd += ["--minigpt-batch", str(args.minigpt_batch)]
    return cmd


# ---------------------------------------------------------------------------- worker


@dataclass
class Job:
    """One model to train: ``fresh()`` (re)starts its LoRA and returns the trainable
    parameters; ``micro(step, i)`` is global micro-batch i of a step; ``loss_sum`` the
    summed loss of one micro-batch and ``count`` the tokens it counts."""

    model: torch.nn.Module
    fresh: object
    micro: object
    loss_sum: object
    count: object
    lr: object  # step -> learning rate
    clip: float | None
    weight_decay: float
    dtype: torch.dtype  # autocast dtype (float32: none)
    info: dict


def _micro_seed(seed: int, step: int, i: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + i) % (1 << 62)


def llama_job(args, dev: torch.device) -> Job:
    from bench_7b_qlora import TARGETS, remove_lora

    from minituner.lora.inject import add_lora
    from minituner.scale.llama import LlamaConfig, build_nf4_llama

    cfg = LlamaConfig() if args.shape == "7b" else LlamaConfig.tiny()
    cfg.max_seq = max(cfg.max_seq, args.seq)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = build_nf4_llama(cfg, dev, dtype, seed=0, checkpointing=True)

    def fresh() -> list:
        remove_lora(model)
        torch.manual_seed(0)
        add_lora(model, TARGETS["qv"], r=8, alpha=16.0)
        return [p for p in model.parameters() if p.requires_grad]

    def micro(step: int, i: int):
        g = torch.Generator().manual_seed(_micro_seed(1, step, i))
        t = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=g)
        return t[:, :-1].to(dev), t[:, 1:].to(dev)

    def loss_sum(m, x, y):
        logits = m(x)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), y.reshape(-1), reduction="sum")

    info = {"config": cfg.to_dict(), "r": 8, "targets": TARGETS["qv"], "alpha": 16.0,
            "lr": 1e-4, "checkpointing": True, "batch_per_gpu": [args.batch, args.seq]}  # fmt: skip
    return Job(model, fresh, micro, loss_sum, lambda y: y.numel(), lambda s: 1e-4, None, 0.0,
               dtype, info)  # fmt: skip


def minigpt_job(args, dev: torch.device) -> Job:
    from minituner.finetune.config import FinetuneConfig
    from minituner.finetune.result import load_base, prepare_model
    from minituner.minigpt.data import IGNORE, encode_cloze
    from minituner.minigpt.trainutil import lr_at

    base = load_base()
    cfg = FinetuneConfig(batch_size=args.minigpt_batch or FinetuneConfig().batch_size)
    data = encode_cloze(base.tok, base.corpus.finetune_train).to(dev)
    holder = {"model": None}
    total = args.warmup + args.steps

    def fresh() -> list:
        torch.manual_seed(cfg.seed)
        holder["model"] = prepare_model(base, cfg, dev)
        return [p for p in holder["model"].parameters() if p.requires_grad]

    def micro(step: int, i: int):
        g = torch.Generator().manual_seed(_micro_seed(cfg.seed, step, i))
        return data.batch(torch.randint(len(data), (cfg.batch_size,), generator=g).to(dev))

    def loss_sum(m, x, y):
        logits = m(x)  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")  # fmt: skip

    info = {"finetune_config": cfg.to_dict(), "base_model": base.config["model"],
            "batch_per_gpu": cfg.batch_size}  # fmt: skip
    job = Job(None, fresh, micro, loss_sum, lambda y: int((y != IGNORE).sum()),
              lambda s: lr_at(s, total, cfg.lr, cfg.warmup), cfg.grad_clip, cfg.weight_decay,
              torch.float32, info)  # fmt: skip
    job.holder = holder
    return job


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _gather(value, info: distributed.DistInfo) -> list:
    if not info.enabled:
        return [value]
    out = [None] * info.world
    torch.distributed.all_gather_object(out, value)
    return out


def time_allreduce(numel: int, dev: torch.device, repeats: int = 10) -> float:
    """Median seconds of one SUM all-reduce of ``numel`` float32 values (all ranks call)."""
    t = torch.ones(numel, device=dev)
    times = []
    for i in range(repeats + 3):
        _sync(dev)
        t0 = time.perf_counter()
        torch.distributed.all_reduce(t)
        _sync(dev)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_run(job: Job, info: distributed.DistInfo, dev, accum: int, args) -> dict:
    """warmup + steps steps, ``accum`` micro-batches per rank per step; rank 0's figures
    plus every rank's peak memory."""
    params = job.fresh()
    model = job.model if job.model is not None else job.holder["model"]
    ddp = distributed.wrap(model, info, dev)
    opt = torch.optim.AdamW(params, lr=job.lr(0), weight_decay=job.weight_decay)
    n_steps = args.warmup + args.steps
    g_micro = info.world * accum  # micro-batches in a global batch
    mine = range(info.rank * accum, (info.rank + 1) * accum)
    batches, n_global, n_tok = [], [], []
    for s in range(n_steps):
        every = [job.micro(s, i) for i in range(g_micro)]
        n_global.append(sum(job.count(y) for _, y in every))
        n_tok.append(sum(int(x.numel()) for x, _ in every))  # input tokens, global batch
        batches.append([every[i] for i in mine])
    amp = torch.autocast(dev.type, dtype=job.dtype, enabled=job.dtype != torch.float32)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses = [], []
    for s in range(n_steps):
        _sync(dev)
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = job.lr(s)
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=dev)
        for j, (x, y) in enumerate(batches[s]):
            last = j == len(batches[s]) - 1
            sync = contextlib.nullcontext() if last or not info.enabled else ddp.no_sync()
            with sync:
                with amp:
                    ls = job.loss_sum(ddp, x, y)
                (ls * info.world / n_global[s]).backward()
            total += ls.detach().float()
        if job.clip:
            torch.nn.utils.clip_grad_norm_(params, job.clip)
        opt.step()
        loss = distributed.all_reduce_sum(total, info).item() / n_global[s]
        _sync(dev)
        if s >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    tokens = statistics.mean(n_tok[args.warmup :])  # per global batch, timed steps
    step = statistics.median(times)
    out = {
        "accum": accum,
        "micro_batches_per_step": g_micro,
        "tokens_per_step": tokens,
        "step_s_median": step,
        "step_s_all": times,
        "tokens_per_s": tokens / step,
        "losses": losses,
        "peak_bytes_per_rank": _gather(peak, info),
        "trainable_params": sum(p.numel() for p in params),
    }
    if dev.type != "cuda":
        out["peak_note"] = "not measured on the CPU (no allocator statistics); CUDA only"
    if info.enabled:
        out["grad_allreduce_s"] = time_allreduce(out["trainable_params"], dev)
        out["scalar_allreduce_s"] = time_allreduce(1, dev)
    del ddp, opt
    for p in params:
        p.grad = None
    return out


def worker(args) -> None:
    info = distributed.from_env()
    dev = distributed.setup(info, torch.device(args.device))
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    models = {}
    for name in args.worker.split(","):
        t0 = time.perf_counter()
        job = llama_job(args, dev) if name == "llama" else minigpt_job(args, dev)
        _sync(dev)
        built = time.perf_counter() - t0
        runs = {}
        for accum in (int(a) for a in args.accums.split(",")):
            runs[str(accum)] = train_run(job, info, dev, accum, args)
        models[name] = {"build_s": built, "job": job.info, "runs": runs}
        del job  # free the model before the next one: each peak is its own
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if info.is_main:
        res = {
            "world": info.world,
            "backend": torch.distributed.get_backend() if info.enabled else None,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "child_env": {k: os.environ.get(k) for k in (*CHILD_ENV, "OMP_NUM_THREADS")},
            "models": models,
        }
        args.worker_out.write_text(json.dumps(res, indent=2))
    if info.enabled:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------- parent


def losses_equal(a: list, b: list, rtol: float, atol: float = 1e-6) -> dict:
    """Whether two loss curves are equal within ``rtol``/``atol``, with the largest
    relative difference."""
    if len(a) != len(b) or not a:
        return {"equal": False, "max_rel_diff": None, "why": f"lengths {len(a)} and {len(b)}"}
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    rel = ((ta - tb).abs() / tb.abs().clamp_min(atol)).max().item()
    equal = bool(torch.allclose(ta, tb, rtol=rtol, atol=atol))
    return {"equal": equal, "max_rel_diff": rel, "rtol": rtol, "atol": atol}


def launch(n: int, models: list[str], accums: list[int], args, tmp: Path) -> dict:
    """Run one torchrun launch; its rank 0's JSON.

    Raises:
        RuntimeError: the launch failed (its output's tail in the message).
    """
    out = tmp / f"n{n}.json"
    cmd = torchrun_command(n, models, accums, out, args)
    env = child_env(device=args.device, threads=args.threads)
    print(f"launch: NCCL_NVLS_ENABLE=0 {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{n} processes failed (exit {proc.returncode}):\n{tail}")
    res = json.loads(out.read_text())
    res["launch_wall_s"] = time.perf_counter() - t0
    return res


def summarize(model: str, launches: dict, rtol: float) -> dict:
    """Scaling of every N > 1 launch against the one-process launch."""
    one = launches[1]["runs"]["1"]
    out = {}
    for n, res in sorted(launches.items()):
        if n == 1:
            continue
        run = res["runs"]["1"]
        row = {
            "tokens_per_s_1": one["tokens_per_s"],
            "tokens_per_s_n": run["tokens_per_s"],
            "efficiency": run["tokens_per_s"] / (n * one["tokens_per_s"]),
            "losses_vs_accumulation": losses_equal(
                run["losses"], launches[1]["runs"][str(n)]["losses"], rtol
            ),
            "grad_allreduce_s": run["grad_allreduce_s"],
            "scalar_allreduce_s": run["scalar_allreduce_s"],
            "grad_allreduce_over_one_step": run["grad_allreduce_s"] / one["step_s_median"],
        }
        peaks, peak1 = run["peak_bytes_per_rank"], one["peak_bytes_per_rank"][0]
        if peak1 is not None and None not in peaks:
            row["peak_ratio_per_rank"] = [p / peak1 for p in peaks]
        out[str(n)] = row
    return out


def _report(model: str, launches: dict, scaling: dict) -> None:
    for n, res in sorted(launches.items()):
        for accum, run in res["runs"].items():
            peaks = run["peak_bytes_per_rank"]
            mem = "n/a" if peaks[0] is None else " ".join(f"{p / MiB:.0f}" for p in peaks) + " MiB"
            print(f"{model:<8} N={n} accum={accum}: {run['tokens_per_s']:12.1f} tokens/s  "
                  f"step {run['step_s_median'] * 1e3:8.2f} ms  peak/GPU {mem}")  # fmt: skip
    for n, row in scaling.items():
        eq = row["losses_vs_accumulation"]
        print(f"{model:<8} N={n}: efficiency {row['efficiency']:.3f}  "
              f"peak ratio {row.get('peak_ratio_per_rank', 'n/a')}  "
              f"losses equal to 1 process x {n} accumulation: {eq['equal']} "
              f"(max rel diff {eq['max_rel_diff']:.2e})  all-reduce of the gradients "
              f"{row['grad_allreduce_s'] * 1e3:.3f} ms = {row['grad_allreduce_over_one_step']:.3f} "
              "of a one-GPU step")  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return {}
    wanted = parse_nproc(args.nproc, args.device)
    cuda = args.device.startswith("cuda")
    gpus = torch.cuda.device_count() if cuda else None
    ns = [n for n in wanted if not cuda or n <= gpus]
    not_run = [f"N={n}: only {gpus} GPU(s) visible" for n in wanted if n not in ns]
    for line in not_run:
        print(f"not run: {line}")
    result: dict = {
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
        if argv is None
        else "python benchmarks/bench_scaling.py " + " ".join(argv),
        "args": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("worker", "accums", "worker_out")
        },  # fmt: skip
        "torch": torch.__version__,
        "gpus_visible": gpus,
        "child_env_set": CHILD_ENV,
        "nproc": ns,
        "not_run": not_run,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as d:
        raw = {}
        for n in ns:  # the one-process launch also trains with n micro-batches per step
            accums = [1] + ([m for m in ns if m > 1] if n == 1 else [])
            raw[n] = launch(n, args.models, accums, args, Path(d))
    result["device_name"] = raw[1]["device_name"]
    result["launches"] = {
        str(n): {k: v for k, v in r.items() if k != "models"} for n, r in raw.items()
    }
    for model in args.models:
        launches = {n: r["models"][model] for n, r in raw.items()}
        rtol = args.loss_rtol or (1e-3 if model == "llama" and cuda else 1e-5)  # bf16: 1e-3
        scaling = summarize(model, launches, rtol)
        _report(model, launches, scaling)
        result["models"][model] = {
            "by_nproc": {str(n): r for n, r in launches.items()},
            "scaling": scaling,
        }
    out = args.out or ROOT / "benchmarks" / "results" / f"scaling_{'cuda' if cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
