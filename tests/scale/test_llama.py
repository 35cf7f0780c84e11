"""The LLaMA-shaped NF4 model (minituner.scale.llama) and its QLoRA benchmark, at tiny size."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from minituner.lora.inject import add_lora
from minituner.nf4.linear import NF4Linear, NF4LinearLowMem
from minituner.scale.llama import (
    INIT_STD,
    LLAMA_LINEARS,
    LlamaConfig,
    LlamaQLoRA,
    RMSNorm,
    _normal,
    apply_rotary,
    build_nf4_llama,
    draws_random_numbers,
    rotary_tables,
)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_7b_qlora.py"
CFG = LlamaConfig.tiny()


def _build(**kw) -> LlamaQLoRA:
    return build_nf4_llama(CFG, "cpu", torch.float32, **kw)


def _tokens(seed: int = 0, batch: int = 2, seq: int = 12):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, CFG.vocab_size, (batch, seq + 1), generator=g)
    return t[:, :-1], t[:, 1:]


def _with_lora(model: LlamaQLoRA, targets, r: int = 4) -> list[str]:
    torch.manual_seed(0)
    paths = add_lora(model, targets, r=r, alpha=8)
    with torch.no_grad():  # B = 0 would leave lora_A without a gradient signal
        for path in paths:
            model.get_submodule(path).lora_B.normal_(0, 0.1)
    return paths


def _loss_and_grads(model: LlamaQLoRA):
    x, y = _tokens()
    model.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_config_defaults_are_llama_7b_and_validate():
    c = LlamaConfig()
    assert (c.vocab_size, c.hidden, c.intermediate, c.n_layers, c.n_heads) == (
        32000,
        4096,
        11008,
        32,
        32,
    )
    assert c.head_dim == 128 and c.max_seq == 512 and c.rms_eps == 1e-5
    # 6,738,415,616 parameters, as shapes.SHAPES["llama-7b"]
    assert c.to_shape().total_params() == 6_738_415_616
    with pytest.raises(ValueError, match="heads"):
        LlamaConfig(hidden=60, n_heads=4)  # head size 15 is odd


def test_tiny_builds_with_every_block_linear_nf4():
    model = _build()
    nf4 = model.nf4_linears()
    assert len(nf4) == CFG.n_layers * len(LLAMA_LINEARS)
    assert {n.rpartition(".")[2] for n in nf4} == set(LLAMA_LINEARS)
    assert all(isinstance(m, NF4LinearLowMem) for m in nf4.values())
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["lm_head"]  # the only dense Linear
    assert not any(p.requires_grad for p in model.parameters())
    mlp = model.layers[0].mlp
    assert (mlp.gate_proj.in_features, mlp.gate_proj.out_features) == (64, 172)
    assert (mlp.down_proj.in_features, mlp.down_proj.out_features) == (172, 64)
    plain = _build(low_mem_backward=False).nf4_linears()
    assert all(type(m) is NF4Linear for m in plain.values())


def test_construction_is_deterministic_per_seed():
    a, b, c = _build(seed=3).state_dict(), _build(seed=3).state_dict(), _build(seed=4).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["layers.0.self_attn.q_proj.weight_codes"], c["layers.0.self_attn.q_proj.weight_codes"]
    )
    # each Linear is its own seeded stream: q and k of a layer differ
    assert not torch.equal(
        a["layers.0.self_attn.q_proj.weight_codes"], a["layers.0.self_attn.k_proj.weight_codes"]
    )


def test_nf4_weight_is_the_seeded_normal_weight_quantized():
    model = _build(seed=5)
    path = "layers.1.mlp.down_proj"
    dense = _normal((64, 172), torch.device("cpu"), torch.float32, 5, path)
    assert dense.std().item() == pytest.approx(INIT_STD, rel=0.1)
    deq = model.get_submodule(path).dequantize_weight()
    rel = ((deq - dense).norm() / dense.norm()).item()
    assert rel < 0.15  # NF4's error on a normal weight is ~10% of its norm


@pytest.mark.parametrize("targets, n_layers", [("q,v", 2), (list(LLAMA_LINEARS), 7)])
def test_lora_forward_backward_trains_only_lora(targets, n_layers, new_paths):
    model = _build()
    paths = _with_lora(model, targets)
    assert len(paths) == CFG.n_layers * n_layers
    assert all(isinstance(model.get_submodule(p).base, NF4Linear) for p in paths)
    loss, grads = _loss_and_grads(model)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(math.log(CFG.vocab_size), rel=0.1)
    expected = {f"{p}.{w}" for p in paths for w in ("lora_A", "lora_B")}
    assert set(grads) == expected
    assert all(g.abs().sum() > 0 for g in grads.values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert all(model.get_submodule(p).lora_A.dtype == torch.float32 for p in paths)


def test_logits_shape_and_causality():
    model = _build()
    x, _ = _tokens(seq=10)
    logits = model(x)
    assert logits.shape == (2, 10, CFG.vocab_size)
    x2 = x.clone()
    x2[:, 7:] = (x2[:, 7:] + 1) % CFG.vocab_size
    torch.testing.assert_close(model(x2)[:, :7], logits[:, :7])
    with pytest.raises(ValueError, match="max_seq"):
        model(torch.zeros(1, CFG.max_seq + 1, dtype=torch.long))


@pytest.mark.parametrize("targets", ["q,v", list(LLAMA_LINEARS)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_in_k_and_norm_residual_keep_loss_and_gradients(targets, checkpointing, monkeypatch):
    """The two settings that are off by default (LoRA products inside the base GEMMs' K,
    the residual's gradient added in the norms' backward) give the default path's loss
    and gradients (float32 rounding): each node's spare columns are really used."""
    from minituner.lora import qlora_group
    from minituner.scale.llama_layers import LlamaDecoderLayer

    model = _build(checkpointing=checkpointing)
    _with_lora(model, targets)
    loss_off, grads_off = _loss_and_grads(model)
    monkeypatch.setattr(qlora_group.LoRAInK, "on", True)
    monkeypatch.setattr(LlamaDecoderLayer, "norm_residual", True)
    calls = []
    in_k = qlora_group._lora_in_k
    monkeypatch.setattr(qlora_group, "_lora_in_k", lambda *a: calls.append(1) or in_k(*a))
    loss_on, grads_on = _loss_and_grads(model)
    assert calls  # the q,k,v (and, with every Linear adapted, gate,up) nodes took it
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-6, atol=1e-6)
    assert grads_on.keys() == grads_off.keys()
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss_chunk", [128, 5])  # one chunk of 12 positions; 5 + 5 + 2
def test_checkpointing_gives_the_same_loss_and_gradients(loss_chunk, new_paths):
    model = _build()
    model.loss_chunk = loss_chunk
    _with_lora(model, list(LLAMA_LINEARS))
    loss_off, grads_off = _loss_and_grads(model)
    model.checkpointing = True
    loss_on, grads_on = _loss_and_grads(model)
    torch.testing.assert_close(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_loss_is_the_mean_cross_entropy_over_labelled_positions(checkpointing):
    model = _build(checkpointing=checkpointing)
    model.loss_chunk = 5
    _with_lora(model, "q,v")
    x, y = _tokens()
    y = y.clone()
    y[0, :7] = -100  # ignored positions span two chunks
    with torch.no_grad():
        logits = model(x).double()
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.reshape(-1), ignore_index=-100)
    loss = model(x, y)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    loss.backward()  # and it is differentiable in the chunked form
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert torch.isnan(model(x, torch.full_like(y, -100)))  # nothing labelled: NaN


def test_checkpointing_saves_rng_state_only_for_layers_that_draw_random_numbers():
    model = _build()
    _with_lora(model, "q,v")
    assert not any(draws_random_numbers(layer) for layer in model.layers)
    model = _build(checkpointing=True)
    torch.manual_seed(0)
    add_lora(model, "q,v", r=4, alpha=8, dropout=0.3)
    assert all(draws_random_numbers(layer) for layer in model.layers)
    assert not draws_random_numbers(model.eval()) and draws_random_numbers(model.train())
    for layer in model.layers:  # B = 0 would leave lora_A's gradient zero
        for proj in (layer.self_attn.q_proj, layer.self_attn.v_proj):
            nn.init.normal_(proj.lora_B, 0, 0.1)
    runs = []
    for on in (False, True):  # the recompute must see the forward's dropout masks
        model.checkpointing = on
        torch.manual_seed(7)
        runs.append(_loss_and_grads(model))
    (loss_off, grads_off), (loss_on, grads_on) = runs
    torch.testing.assert_close(loss_on, loss_off)
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-5, atol=1e-7)


def test_rmsnorm_matches_float64_reference():
    g = torch.Generator().manual_seed(3)
    norm = RMSNorm(48, 1e-5, dtype=torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48, generator=g) + 0.5)
    x = (torch.randn(2, 5, 48, generator=g) * 3).to(torch.bfloat16)
    got = norm(x)
    h = x.double()
    ref = norm.weight.double() * (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=1e-2)  # two bf16 roundings
    # the backward agrees with the float64 reference's
    xr = x.float().requires_grad_()
    xd = x.double().requires_grad_()
    up = torch.randn(2, 5, 48, generator=g)
    (RMSNorm(48, 1e-5)(xr) * up).sum().backward()
    (xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * up.double()).sum().backward()
    torch.testing.assert_close(xr.grad.double(), xd.grad, rtol=1e-5, atol=1e-6)


def _fused_calls(monkeypatch) -> list:
    """The NF4 bases of the adapted Linears evaluated by a fused node (one QLoRA node, or
    a group node of q, k, v or gate, up), one entry per Linear per call."""
    from minituner.lora import qlora as fused_qlora
    from minituner.lora import qlora_group

    calls = []
    apply, group_apply = fused_qlora._QLoRAMatMul.apply, qlora_group._QLoRAGroupMatMul.apply

    def counting(*args):
        calls.append(args[3])
        return apply(*args)

    def counting_group(x, layers, lora, *rest):  # rest: scaling, one_gemm, LoRA params
        calls.extend(layer for layer, has in zip(layers, lora, strict=True) if has)
        return group_apply(x, layers, lora, *rest)

    monkeypatch.setattr(fused_qlora._QLoRAMatMul, "apply", counting)
    monkeypatch.setattr(qlora_group._QLoRAGroupMatMul, "apply", counting_group)
    return calls


def test_fused_qlora_matches_the_lora_modules_in_float32(monkeypatch):
    model = _build(checkpointing=True)
    _with_lora(model, list(LLAMA_LINEARS))
    calls = _fused_calls(monkeypatch)
    loss_f, grads_f = _loss_and_grads(model)
    # every adapted Linear went through the fused node: forward + checkpoint recompute
    assert len(calls) == 2 * CFG.n_layers * len(LLAMA_LINEARS)
    calls.clear()
    loss_m, grads_m = _loss_and_grads(model.use_fused_lora(False))
    assert not calls
    torch.testing.assert_close(loss_f, loss_m, rtol=1e-6, atol=0)
    assert grads_f.keys() == grads_m.keys()
    for k in grads_m:
        torch.testing.assert_close(grads_f[k], grads_m[k], rtol=1e-5, atol=1e-7)


def test_fused_qlora_matches_a_float64_reference():
    from minituner.lora.qlora import qlora_linear

    model = _build()
    _with_lora(model, "q")
    layer = model.layers[0].self_attn.q_proj
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 64, generator=g, requires_grad=True)
    up = torch.randn(3, 5, 64, generator=g)
    (qlora_linear(layer, x) * up).sum().backward()
    w = layer.base.dequantize_weight(torch.float64)
    a = layer.lora_A.detach().double().requires_grad_()
    b = layer.lora_B.detach().double().requires_grad_()
    xd = x.detach().double().requires_grad_()
    ref = xd @ w.T + layer.scaling * (xd @ a.T) @ b.T
    (ref * up.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.lora_A.grad.double(), a.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.lora_B.grad.double(), b.grad, rtol=1e-5, atol=1e-6)
    assert layer.lora_A.grad.dtype == torch.float32 and x.grad.shape == x.shape


def test_fused_qlora_under_bf16_autocast_is_about_as_accurate_as_the_lora_modules(monkeypatch):
    # both bf16 paths round, at different points; measured against the same model in
    # float32, the fused path's error must be of the module path's size (about 1% here,
    # most of it from the bf16 base matmuls both share)
    model = build_nf4_llama(CFG, "cpu", torch.bfloat16, checkpointing=True)
    _with_lora(model, list(LLAMA_LINEARS))
    ref_loss, ref_grads = _loss_and_grads(copy.deepcopy(model).float())
    calls = _fused_calls(monkeypatch)
    runs = []
    for fused in (True, False):
        model.use_fused_lora(fused)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(_loss_and_grads(model))
    assert len(calls) == 2 * CFG.n_layers * len(LLAMA_LINEARS)
    (loss_f, grads_f), (loss_m, grads_m) = runs
    assert loss_f.dtype == torch.float32 and grads_f.keys() == ref_grads.keys()

    def error(grads) -> float:  # relative error of all gradients together
        diff = torch.cat([(grads[k] - ref_grads[k]).flatten() for k in ref_grads])
        return (diff.norm() / torch.cat([g.flatten() for g in ref_grads.values()]).norm()).item()

    assert error(grads_m) < 0.05  # bf16 compute: a few percent
    assert error(grads_f) < 1.5 * error(grads_m)
    assert abs(loss_f - ref_loss) < 1e-2 * ref_loss and abs(loss_m - ref_loss) < 1e-2 * ref_loss


def test_fused_qlora_steps_aside_where_it_does_not_apply():
    from minituner.lora.qlora import fused_applies

    model = _build()
    torch.manual_seed(0)
    add_lora(model, "q", r=4, alpha=8, dropout=0.2)
    q = model.layers[0].self_attn.q_proj
    x = torch.randn(2, 3, 64)
    assert not fused_applies(q, x)  # dropout drawn in training
    assert fused_applies(q.eval(), x)  # no dropout in eval
    assert not fused_applies(q, x.to(torch.bfloat16))  # would compute in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_applies(q, x.to(torch.bfloat16)) and not fused_applies(q, x)
    assert not fused_applies(model.layers[0].self_attn.k_proj, x)  # no LoRA


def test_low_memory_nf4_backward_matches_plain_nf4linear():
    runs = []
    for low in (True, False):
        model = _build(low_mem_backward=low)
        _with_lora(model, "q,v")
        runs.append(_loss_and_grads(model))
    (la, ga), (lb, gb) = runs
    torch.testing.assert_close(la, lb)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)


def test_rotary_matches_float64_complex_reference():
    D, T = 16, 9
    cos, sin = rotary_tables(D, T)
    x = torch.randn(2, 3, T, D, generator=torch.Generator().manual_seed(0))
    got = apply_rotary(x, cos, sin).double()
    # reference: pair (i, i + D/2) as a complex number, rotated by pos * theta^(-2i/D)
    inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv  # (T, D/2)
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2 :].double()) * torch.polar(
        torch.ones_like(angle), angle
    )
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], -1), rtol=1e-5, atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    D, shift = 8, 5
    cos, sin = rotary_tables(D, 20)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g)  # positions 0..3

    def scores(offset: int) -> torch.Tensor:
        c, s = cos[offset : offset + 4], sin[offset : offset + 4]
        return apply_rotary(q, c, s) @ apply_rotary(k, c, s).T

    torch.testing.assert_close(scores(shift), scores(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(apply_rotary(q, cos[:4], sin[:4]), q)  # it does rotate


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_7b_qlora", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_tiny_cpu_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--shape", "tiny", "--steps", "2", "--warmup", "1"]
    argv += ["--seq", "32", "--dequant-bw", "--bw-shape", "64", "128", "--profile"]
    argv += ["--out", str(out)]
    result = _load_bench().main(argv)
    data = json.loads(out.read_text())
    assert data["runs"].keys() == {"r8_qv", "r8_all", "r16_qv", "r16_all"}
    assert result["runs"].keys() == data["runs"].keys()
    for key, run in data["runs"].items():
        assert run["step_s_median"] > 0 and len(run["step_s_all"]) == 2
        assert len(run["losses"]) == 3 and all(math.isfinite(v) for v in run["losses"])
        assert run["peak_bytes"] is None and "not measured on CPU" in run["peak_note"]
        assert run["profile"]["wall_s"] > 0 and run["profile"]["device_busy_s"] is None
        for precision in ("bf16", "mixed"):
            pred = run["predicted"][precision]
            assert pred["total"] > pred["states_total"] > pred["nf4"] > 0
        # the measured trainable count is what the prediction counts
        per_elem = run["predicted"]["mixed"]["lora"] // 4
        assert run["trainable_params"] == per_elem, key
    assert (
        data["runs"]["r16_all"]["trainable_params"]
        == 2 * data["runs"]["r8_all"]["trainable_params"]
    )
    bw = data["dequant_bw"]
    assert bw["dequant_gbps"] > 0 and bw["clone_gbps"] > 0 and bw["shape"] == [64, 128]


def test_busy_time_counts_overlapping_intervals_once():
    bench = _load_bench()
    assert bench.busy_time([]) == 0.0
    assert bench.busy_time([(0, 2), (1, 3), (5, 6), (5.5, 5.8)]) == pytest.approx(4.0)
    trace = {
        "traceEvents": [
            {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 10.0, "dur": 30.0},
            {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 20.0, "dur": 30.0},
            {"ph": "X", "cat": "gpu_memcpy", "name": "copy", "ts": 100.0, "dur": 5.0},
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 500.0},
        ]
    }
    s = bench.trace_summary(trace)
    assert s["device_busy_s"] == pytest.approx(45e-6)  # 10..50 and 100..105
    assert s["device_span_s"] == pytest.approx(95e-6)
    assert s["kernels"] == 2
    top = s["top_kernels"]
    assert [t["name"] for t in top] == ["gemm", "copy"] and top[0]["count"] == 2
    assert top[0]["seconds"] == pytest.approx(60e-6)


def test_benchmark_peft_path_tiny_cpu(tmp_path):
    for name in ("transformers", "peft", "bitsandbytes"):
        pytest.importorskip(name)
    argv = ["--device", "cpu", "--shape", "tiny", "--steps", "1", "--warmup", "1", "--seq", "16"]
    argv += ["--r", "8", "--targets", "qv", "--peft", "--out", str(tmp_path / "b.json")]
    _load_bench().main([*argv, "--clocks"])
    data = json.loads((tmp_path / "b.json").read_text())
    theirs = data["peft"]["runs"]["r8_qv"]
    for run in (data["runs"]["r8_qv"], theirs):  # NVML clocks are a CUDA-only figure
        assert run["clocks"] == {"samples": 0, "error": "clocks are sampled on CUDA devices only"}
    assert theirs["lora_layer_type"] == "peft.tuners.lora.bnb.Linear4bit"
    assert theirs["trainable_params"] == data["runs"]["r8_qv"]["trainable_params"]
    assert all(math.isfinite(v) for v in theirs["losses"])
    assert theirs["ratios_ours_over_peft"]["step_time_ours_over_peft"] > 0


def test_low_memory_backward_saves_no_dequantized_weight():
    weight_shapes = {(64, 64), (172, 64), (64, 172)}

    def saved_weights(low: bool) -> int:
        model = _build(low_mem_backward=low)
        _with_lora(model, "q,v")
        count = 0

        def pack(t):
            nonlocal count
            count += tuple(t.shape) in weight_shapes
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*_tokens())
        return count

    assert saved_weights(False) > 0  # plain F.linear keeps the dense weight for backward
    assert saved_weights(True) == 0
