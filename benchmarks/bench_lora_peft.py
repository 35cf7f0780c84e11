"""Training-step time of minituner's LoRA against PEFT's LoRA on the same MiniGPT.

Both models are identical copies of a default-preset MiniGPT with LoRA (r=8, alpha=16) on
q_proj and v_proj; each step is forward + cross-entropy + backward + AdamW step on a
batch of 32 x 48 random tokens. A second row times one adapted Linear(128, 128) alone
(forward + backward on a (32, 48, 128) input), where the LoRA branch is a larger share of
the work. After a warm-up the two are timed in alternation (so machine noise hits both
alike) and the medians are compared. Nothing is asserted.

Each ratio line also gives the median of the per-repeat ratios (each minituner step over the
PEFT step timed next to it), which slow drifts of a shared machine affect less.

With ``--floor`` a second pair is timed the same way: PEFT against the same MiniGPT without
LoRA, only the q_proj / v_proj biases trainable (the same backward through the frozen
model, no LoRA work): the ratio no LoRA layer can beat. With ``--profile N`` it then records
N more steps of each (alternating, the no-LoRA model too with ``--floor``) under
torch.profiler and prints, per implementation, the operator counts per step (and CUDA
kernels per step on a GPU) and the table of where the step's time goes, then the self time
per step of each operator with its input shapes side by side, largest differences first.

    PYTHONPATH=. python benchmarks/bench_lora_peft.py [--device cpu|cuda] [--repeats 30] [--warmup 5]
        [--threads N] [--floor] [--profile N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from minituner.lora.inject import add_lora, count_parameters
from minituner.minigpt.model import MiniGPT, preset_config

VOCAB, BATCH, SEQ, R, ALPHA = 60, 32, 48, 8, 16


def make_models(device: torch.device):
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    base = MiniGPT(preset_config("default", vocab_size=VOCAB)).to(device)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    add_lora(ours, "q,v", r=R, alpha=ALPHA)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    theirs = inject_adapter_in_model(cfg, theirs)
    for name, p in theirs.named_parameters():
        p.requires_grad_("lora_" in name)
    return ours, theirs


def make_floor_model(device: torch.device):
    """The benchmark's MiniGPT without LoRA, only q_proj / v_proj biases trainable."""
    torch.manual_seed(0)
    model = MiniGPT(preset_config("default", vocab_size=VOCAB)).to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("q_proj.bias", "v_proj.bias")))
    return model


def make_step(model, device: torch.device):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(inputs)  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def make_layer_steps(device: torch.device):
    """Forward + backward of one adapted Linear(128, 128) alone, where LoRA is not drowned out."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("q_proj", torch.nn.Linear(128, 128))
    ours, theirs = copy.deepcopy(base).to(device), copy.deepcopy(base).to(device)
    add_lora(ours, "q", r=R, alpha=ALPHA)
    theirs = inject_adapter_in_model(
        LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj"]), theirs
    )
    x = torch.randn(BATCH, SEQ, 128, device=device)

    def timed(model):
        def step() -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x).square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        return step

    return {"minituner": timed(ours), "peft": timed(theirs)}


def interleaved(steps: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(repeats):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))  # alternate who goes first
        for name in order:
            times[name].append(steps[name]())
    return times


def profile(steps: dict, device: torch.device, n: int, rows: int = 18) -> None:
    """Per implementation: aten ops (and CUDA kernels) per step and the profiler table; then
    one table of the operators (with input shapes) side by side, self time per step, those
    whose time differs most between the implementations first.

    The n profiled steps alternate between the implementations, one step per profiler session.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    self_time = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    sessions: dict[str, list] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for i in range(n):
        for name in list(steps) if i % 2 == 0 else list(reversed(steps)):
            with torch_profile(activities=acts, record_shapes=True) as prof:
                steps[name]()
            sessions[name].append(prof)
    per_op: dict[str, dict[str, list[float]]] = {}  # impl -> "op shapes" -> [calls, ms] per step
    for name, profs in sessions.items():
        ops: dict[str, list[float]] = {}
        aten = kernels = 0
        for prof in profs:
            for e in prof.key_averages(group_by_input_shape=True):
                key = f"{e.key} {str(e.input_shapes)[:48]}" if e.input_shapes else e.key
                acc = ops.setdefault(key, [0.0, 0.0])
                acc[0] += e.count / n
                acc[1] += getattr(e, self_time) / n / 1e3
                aten += e.count if e.key.startswith("aten::") else 0
                kernels += e.count if e.device_type == torch.autograd.DeviceType.CUDA else 0
        per_op[name] = ops
        more = f", CUDA kernels per step {kernels / n:.0f}" if device.type == "cuda" else ""
        print(f"\n== profile {name}: {n} steps, aten ops per step {aten / n:.0f}{more}")
        print(
            profs[-1].key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=40)
        )
    names = list(per_op)
    keys = set().union(*per_op.values())

    def ms(name: str, key: str) -> float:
        return per_op[name].get(key, [0.0, 0.0])[1]

    spread = {k: max(ms(m, k) for m in names) - min(ms(m, k) for m in names) for k in keys}
    print(
        f"\n== self time per step (ms) and calls per step, by operator and input shapes, {n} steps"
    )
    print(f"{'operator [input shapes]':<70}" + "".join(f"{m[:16]:>22}" for m in names))
    for key in sorted(keys, key=lambda k: -spread[k])[: 2 * rows]:
        cells = "".join(
            f"{ms(m, key):>12.3f} ({per_op[m].get(key, [0.0])[0]:>5.0f})" for m in names
        )
        print(f"{key[:70]:<70}{cells}")
    total = "".join(f"{sum(v[1] for v in per_op[m].values()):>22.3f}" for m in names)
    print(f"{'all operators (self time)':<70}{total}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--floor", action="store_true", help="also time PEFT against no LoRA")
    ap.add_argument("--profile", type=int, default=0, help="profile N steps of each (0: no)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    ours, theirs = make_models(device)
    n_ours = count_parameters(ours)["trainable"]
    n_theirs = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    steps = {"minituner": make_step(ours, device), "peft": make_step(theirs, device)}
    times = interleaved(steps, args.warmup, args.repeats)
    layer_times = interleaved(make_layer_steps(device), args.warmup, 3 * args.repeats)
    floor_times = None
    if args.floor:
        floor_steps = {"no LoRA": make_step(make_floor_model(device), device)}
        floor_steps["peft"] = make_step(theirs, device)
        floor_times = interleaved(floor_steps, args.warmup, args.repeats)

    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"batch={BATCH}x{SEQ} r={R} alpha={ALPHA} targets=q,v repeats={args.repeats}"
    )
    print(f"{'what':<34} {'impl':<10} {'trainable':>10} {'median ms':>10} {'min ms':>9}")
    layer_params = R * (128 + 128)
    rows = (
        ("MiniGPT train step (fwd+bwd+AdamW)", times, {"minituner": n_ours, "peft": n_theirs}),
        ("one LoRA Linear(128,128) fwd+bwd", layer_times, dict.fromkeys(times, layer_params)),
    )
    if floor_times is not None:
        floor_times = {"minituner": floor_times["no LoRA"], "peft": floor_times["peft"]}
        n_floor = {"minituner": 2 * ours.config.n_layer * ours.config.n_embd, "peft": n_theirs}
        rows += (("floor: q,v biases only, no LoRA", floor_times, n_floor),)
    for what, t, trainable in rows:
        for name in ("minituner", "peft"):
            med, best = statistics.median(t[name]) * 1e3, min(t[name]) * 1e3
            label = "no LoRA" if what.startswith("floor") and name == "minituner" else name
            print(f"{what:<34} {label:<10} {trainable[name]:>10,} {med:>10.3f} {best:>9.3f}")
    for what, t, _ in rows:
        ratio = statistics.median(t["minituner"]) / statistics.median(t["peft"])
        paired = statistics.median(a / b for a, b in zip(t["minituner"], t["peft"], strict=True))
        who = "no LoRA/peft" if what.startswith("floor") else "minituner/peft"
        print(f"ratio {who}, {what}: {ratio:.3f} (median of paired ratios {paired:.3f})")
    if args.profile:
        if args.floor:
            steps["no LoRA"] = floor_steps["no LoRA"]
        profile(steps, device, args.profile)


if __name__ == "__main__":
    main()
