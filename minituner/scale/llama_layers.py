"""The decoder layers of :mod:`minituner.scale.llama`: RMSNorm, attention, the gated MLP.

Their names follow Hugging Face's ``LlamaForCausalLM`` (see :mod:`minituner.scale.llama`
for the layout and the choices behind the fused paths). Each layer takes a
``make_linear(name, in, out)`` so the block Linears can be NF4 (or anything else), and
``cfg``, a :class:`minituner.scale.llama.LlamaConfig` (not imported: llama imports this).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from minituner.lora.qlora import qlora_linear
from minituner.lora.qlora_group import lora_spare, qlora_group
from minituner.nf4.linear import NF4LinearLowMem
from minituner.scale.fused_rmsnorm import rms_norm, rms_norm_residual
from minituner.scale.fused_rope import apply_rotary, rotary
from minituner.scale.fused_swiglu import swiglu
from minituner.scale.recompute import checkpointed, recomputing


class RMSNorm(nn.Module):
    """y = weight * (x / sqrt(mean(x²) + eps)), normalized in float32 (no bias)."""

    fused = True  # one Triton kernel each way where it applies (minituner.scale.fused_rmsnorm)

    def __init__(self, dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, spare: int = 0) -> torch.Tensor:
        # x * rsqrt(mean(x²) + eps) in float32, rounded to x's dtype, then scaled: Hugging
        # Face's LlamaRMSNorm order, eagerly or in one Triton kernel; ``spare`` zero
        # columns after it (``minituner.scale.fused_rmsnorm.rms_norm``)
        return rms_norm(x, self.weight, self.eps, self.fused, spare)

    def with_residual(self, x: torch.Tensor, spare: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x) with ``spare`` free columns after it, x to add back as the residual):
        where the Triton kernel runs, the backward adds the residual's gradient of x in
        the norm's own pass (``minituner.scale.fused_rmsnorm.rms_norm_residual``)."""
        return rms_norm_residual(x, self.weight, self.eps, self.fused, spare)


class LlamaAttention(nn.Module):
    fused_lora = True  # LoRA-wrapped NF4 Linears through minituner.lora.qlora
    fused_kernels = True  # rotary in one Triton kernel (minituner.scale.fused_rope)
    qkv_one_gemm = False  # with fused kernels: q, k, v bases as one GEMM (qlora_group; unmeasured)
    sdpa_backends: tuple = ()  # SDPBackend members to try first; () lets PyTorch choose

    def __init__(self, cfg, make_linear):
        super().__init__()
        C = cfg.hidden
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = make_linear("q_proj", C, C)
        self.k_proj = make_linear("k_proj", C, C)
        self.v_proj = make_linear("v_proj", C, C)
        self.o_proj = make_linear("o_proj", C, C)

    def spare_columns(self, x: torch.Tensor) -> int:
        """Free columns the q, k, v node would fill after its input (``lora_spare``)."""
        if not self.fused_kernels:
            return 0
        qkv = (self.q_proj, self.k_proj, self.v_proj)
        return lora_spare(qkv, x, self.fused_lora, self.qkv_one_gemm)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, residual=None
    ) -> torch.Tensor:
        """o_proj(attention(x)), plus ``residual`` (added inside o_proj's GEMM where it can).
        x may carry :meth:`spare_columns` free columns after its C (the fused path's)."""
        B, T = x.shape[:2]
        C = self.n_heads * self.head_dim
        spare = x.shape[-1] - C
        if spare and not self.fused_kernels:
            x = x[..., :C]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, D)
            return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

        f, H = self.fused_lora, self.n_heads
        if self.fused_kernels:  # one node for q, k, v; rotated in the (B, T, C) layout
            qkv = (self.q_proj, self.k_proj, self.v_proj)
            q, k, v = qlora_group(qkv, x, f, one_gemm=self.qkv_one_gemm, spare=spare)
            q, k, v = heads(rotary(q, cos, sin, H)), heads(rotary(k, cos, sin, H)), heads(v)
        else:
            q = apply_rotary(heads(qlora_linear(self.q_proj, x, f)), cos, sin)
            k = apply_rotary(heads(qlora_linear(self.k_proj, x, f)), cos, sin)
            v = heads(qlora_linear(self.v_proj, x, f))
        if self.sdpa_backends and q.is_cuda:  # e.g. cuDNN's attention, faster on Hopper
            with sdpa_kernel(list(self.sdpa_backends), set_priority=True):
                y = F.scaled_dot_product_attention(q, k, v.to(q.dtype), is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v.to(q.dtype), is_causal=True)
        return qlora_linear(self.o_proj, y.transpose(1, 2).reshape(B, T, C), f, residual)


class LlamaMLP(nn.Module):
    fused_lora = True  # as LlamaAttention
    fused_kernels = True  # silu(gate) * up in one Triton kernel (minituner.scale.fused_swiglu)

    def __init__(self, cfg, make_linear):
        super().__init__()
        self.gate_proj = make_linear("gate_proj", cfg.hidden, cfg.intermediate)
        self.up_proj = make_linear("up_proj", cfg.hidden, cfg.intermediate)
        self.down_proj = make_linear("down_proj", cfg.intermediate, cfg.hidden)
        self.hidden = cfg.hidden

    def spare_columns(self, x: torch.Tensor) -> int:
        """Free columns the gate, up node would fill after its input (``lora_spare``)."""
        if not self.fused_kernels:
            return 0
        return lora_spare((self.gate_proj, self.up_proj), x, self.fused_lora)

    def forward(self, x: torch.Tensor, residual=None) -> torch.Tensor:
        """down(silu(gate(x)) * up(x)), plus ``residual`` (added inside down's GEMM where
        it can). In a checkpoint's recompute (``minituner.scale.recompute``, fused kernels
        on) nothing reads this output, only what its nodes save: a plain low-memory NF4
        down projection saves nothing, so the SwiGLU product is skipped (gate and up are
        still saved) and the recompute stops there; a fused LoRA down projection makes and
        saves its LoRA input but skips its base GEMM. In a checkpointed layer the SwiGLU
        backward also writes its gradients over the recompute's gate and up, which nothing
        else reads."""
        f, cols = self.fused_lora, x.shape[-1] - self.hidden  # cols: x's spare columns
        if self.fused_kernels:  # one node for both (minituner.lora.qlora_group)
            gate, up = qlora_group((self.gate_proj, self.up_proj), x, f, spare=cols)
        else:
            x = x[..., : self.hidden]
            gate, up = qlora_linear(self.gate_proj, x, f), qlora_linear(self.up_proj, x, f)
        spare = self.fused_kernels and recomputing()  # work only the forward pass reads
        # in a checkpointed layer the SwiGLU node's backward gets the recompute's gate and
        # up, which serve it alone: it may write its gradients over them. Decided in the
        # forward pass too: the backward runs that pass's node (minituner.scale.recompute)
        free = self.fused_kernels and checkpointed()
        if spare and type(self.down_proj) is NF4LinearLowMem:
            h = swiglu(gate, up, self.fused_kernels, compute=False, free_inputs=free)
            return h.new_empty((*x.shape[:-1], self.hidden)) if residual is None else residual
        h = swiglu(gate, up, self.fused_kernels, free_inputs=free)
        del gate, up, x  # saved by the nodes whose backward needs them; else freed now
        return qlora_linear(self.down_proj, h, f, residual, base=not spare)


class LlamaDecoderLayer(nn.Module):
    # with fused kernels: each norm's backward adds the residual's gradient (one node);
    # False: autograd adds it. Off: 0.98-1.01x the default's step on one H100 over three
    # runs (bench_7b_qlora.py --variants norm_residual), within their noise; the tests
    # check its values either way
    norm_residual = False

    def __init__(self, cfg, make_linear, device=None, dtype=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps, device, dtype)
        self.self_attn = LlamaAttention(cfg, lambda n, i, o: make_linear(f"self_attn.{n}", i, o))
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps, device, dtype)
        self.mlp = LlamaMLP(cfg, lambda n, i, o: make_linear(f"mlp.{n}", i, o))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.mlp.fused_kernels:  # the residual adds ride in o_proj's and down's GEMMs;
            # with norm_residual their gradients ride in the norms' backward kernels, and
            # with LoRAInK.on each norm leaves room for the LoRA products of its consumer
            xn, x = self._norm(self.input_layernorm, x, self.self_attn.spare_columns(x))
            h = self.self_attn(xn, cos, sin, residual=x)  # (B, T, C)
            del xn  # what a node saved stays; this frame's reference need not
            hn, h = self._norm(self.post_attention_layernorm, h, self.mlp.spare_columns(h))
            return self.mlp(hn, residual=h)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))

    def _norm(self, norm: RMSNorm, x: torch.Tensor, spare: int):
        """(norm(x) with ``spare`` zero columns after it, x for the residual add)."""
        if self.norm_residual:
            return norm.with_residual(x, spare)
        return norm(x, spare), x
