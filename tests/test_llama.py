"""The LLaMA-shaped NF4 model (minituner.llama) and its QLoRA benchmark, at tiny size."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from minituner.llama import (
    INIT_STD,
    LLAMA_LINEARS,
    LlamaConfig,
    LlamaQLoRA,
    NF4LinearLowMem,
    _normal,
    apply_rotary,
    build_nf4_llama,
    rotary_tables,
)
from minituner.lora import add_lora
from minituner.nf4_linear import NF4Linear

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_7b_qlora.py"
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
def test_lora_forward_backward_trains_only_lora(targets, n_layers):
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


def test_checkpointing_gives_the_same_loss_and_gradients():
    model = _build()
    _with_lora(model, list(LLAMA_LINEARS))
    loss_off, grads_off = _loss_and_grads(model)
    model.checkpointing = True
    loss_on, grads_on = _loss_and_grads(model)
    torch.testing.assert_close(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-5, atol=1e-7)


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


def test_benchmark_peft_path_tiny_cpu(tmp_path):
    for name in ("transformers", "peft", "bitsandbytes"):
        pytest.importorskip(name)
    argv = ["--device", "cpu", "--shape", "tiny", "--steps", "1", "--warmup", "1", "--seq", "16"]
    argv += ["--r", "8", "--targets", "qv", "--peft", "--out", str(tmp_path / "b.json")]
    _load_bench().main(argv)
    data = json.loads((tmp_path / "b.json").read_text())
    theirs = data["peft"]["runs"]["r8_qv"]
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
