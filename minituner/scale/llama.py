"""A LLaMA-shaped decoder with every block Linear in NF4, for QLoRA at real scale.

The MiniGPT of ``minituner.minigpt.model`` is for the course experiment; this module exists
to check the memory and speed claims at the size they are made for (LLaMA-7B: 32 layers,
hidden 4096, gated MLP 11008, vocabulary 32000). It has no pretrained weights: every weight
is random (normal, std 0.02) and seeded, which is enough to measure memory and step time.

Layout (names follow Hugging Face's ``LlamaForCausalLM`` so LoRA targets read the same)::

    embed_tokens                       frozen nn.Embedding, compute dtype
    layers[i].input_layernorm          RMSNorm (weight only)
    layers[i].self_attn.{q,k,v,o}_proj NF4Linear, no bias; rotary positions on q and k
    layers[i].post_attention_layernorm RMSNorm
    layers[i].mlp.{gate,up,down}_proj  NF4Linear; gated MLP: down(silu(gate(x)) * up(x))
    norm, lm_head                      final RMSNorm; frozen nn.Linear in compute dtype

Choices worth knowing:

- :func:`build_nf4_llama` makes the quantized model layer by layer: each Linear's weight
  is drawn directly on ``device`` in the compute dtype from a generator seeded by
  (``seed``, module path), quantized by ``NF4Linear.from_linear`` and dropped before the
  next one is drawn. The peak during construction is therefore the NF4 model built so far
  plus ONE dense Linear (and ``quantize_nf4``'s float32 temporaries of that one weight),
  never the dense model. The same seed gives the same model on the same device (CPU and
  CUDA generators draw different numbers).
- Block Linears are :class:`minituner.nf4.linear.NF4LinearLowMem` (a subclass of
  ``NF4Linear``) by default: its forward saves no dequantized weight for the backward pass
  and dequantizes again there (as bitsandbytes' 4-bit matmul does). Plain ``F.linear`` on a
  dequantized weight would keep every layer's dense weight alive until its backward -- the
  whole dense model again without activation checkpointing. ``low_mem_backward=False``
  gives the plain NF4Linear.
- A LoRA-wrapped NF4 Linear is evaluated as one autograd node (``minituner.lora.qlora``:
  the scaling and the add inside the GEMMs, six kernels forward instead of about eleven);
  ``use_fused_lora(False)`` calls the LoRA modules instead (same function, more roundings).
- The projections of one input (q, k, v; gate, up) are one node
  (``minituner.lora.qlora_group``): each LoRA branch's A product reads x once for all of
  them, and their input gradients add up inside the GEMMs. The residual adds ride in
  o_proj's and down_proj's GEMMs (beta = 1), and a checkpoint's recompute skips what only
  the forward pass reads (``minituner.scale.recompute``). All three follow
  ``use_fused_kernels``.
- The memory-bound work around the GEMMs runs in Triton kernels on CUDA (RMSNorm, rotary
  on the projection's layout, SwiGLU, and the head + loss as one node that makes its
  gradient in the forward pass: ``minituner.scale.fused_*``); ``use_fused_kernels(False)``
  gives the eager PyTorch ops (the same function, to the compute dtype's rounding).
- LoRA comes from ``minituner.lora.inject.add_lora``; short names ``q,v`` map to ``q_proj``
  and ``v_proj``. For every Linear pass :data:`LLAMA_LINEARS` (the ``all`` group of
  ``minituner.lora.targets`` names MiniGPT's fc_in/fc_out, which this model lacks). LoRA
  parameters are float32 (``LoRALinear``'s default, as the QLoRA paper keeps adapters in
  higher precision); the LoRA branch runs in bf16 under autocast.
- ``checkpointing=True`` recomputes each decoder layer in the backward pass
  (``torch.utils.checkpoint``, ``use_reentrant=False``): only layer inputs are kept. The
  RNG state is saved for the recompute only for a layer that draws random numbers
  (:func:`draws_random_numbers`), so a dropout-free step can be captured in a CUDA graph
  (``minituner.scale.graphs``), where reading the generator state is not allowed.
- ``forward(idx, labels=None)`` returns logits (B, T, vocab); with ``labels`` (B, T),
  already aligned (``labels[:, t]`` is the target for position t; -100 is ignored) it
  returns the mean cross-entropy, computed in float32 (the sum over positions divided by
  the number of labelled ones; all labels -100 gives NaN, as ``F.cross_entropy`` does).
  With checkpointing the final norm, lm_head and loss also run in chunks of
  ``loss_chunk`` positions (128), each recomputed in the backward pass: the float32 logits
  of 512 positions x 32000 words (64 MiB, and as much again for their gradient) never
  exist whole.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minituner.nf4.format import DEFAULT_BLOCK_SIZE, QLORA_DOUBLE_QUANT
from minituner.nf4.linear import NF4Linear, NF4LinearLowMem
from minituner.scale import fused_ce, recompute
from minituner.scale.fused_rope import apply_rotary as apply_rotary  # re-exported
from minituner.scale.fused_rope import rotary_tables
from minituner.scale.llama_layers import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    RMSNorm,
)

LLAMA_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
LLAMA_LINEARS = LLAMA_ATTN + LLAMA_MLP
INIT_STD = 0.02
LOSS_CHUNK = 128  # positions per chunk of the checkpointed head + loss (LlamaQLoRA.loss_chunk)


@dataclass
class LlamaConfig:
    """LLaMA-7B by default. The MLP is always gated (SwiGLU: gate, up, down); no biases,
    RMSNorm without bias, rotary positions (no learned position table), untied lm_head."""

    vocab_size: int = 32000
    hidden: int = 4096
    intermediate: int = 11008
    n_layers: int = 32
    n_heads: int = 32
    max_seq: int = 512
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "intermediate", "n_layers", "n_heads", "max_seq"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden % self.n_heads or (self.hidden // self.n_heads) % 2:
            raise ValueError(
                f"LlamaConfig.hidden ({self.hidden}) must split into {self.n_heads} heads "
                "of an even size (rotary embeddings rotate pairs)"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @classmethod
    def tiny(cls) -> LlamaConfig:
        """A few-thousand-parameter model for tests (2 layers, hidden 64, 4 heads)."""
        return cls(vocab_size=97, hidden=64, intermediate=172, n_layers=2, n_heads=4, max_seq=32)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_shape(self, name: str = "llama"):
        """The :class:`minituner.memory.shapes.ModelShape` for memory and parameter math."""
        from minituner.memory.shapes import ModelShape

        return ModelShape(
            name=name,
            d_model=self.hidden,
            d_ff=self.intermediate,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            vocab=self.vocab_size,
            gated_mlp=True,
            tie_embeddings=False,
            bias=False,
            n_positions=0,
            norm_bias=False,
        )


# ---------------------------------------------------------------------------- model


def draws_random_numbers(module: nn.Module) -> bool:
    """Whether ``module`` (in training mode) draws random numbers in its forward pass:
    an active ``nn.Dropout`` or a LoRA layer with ``dropout`` > 0 inside it."""
    if not module.training:
        return False
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        rate = getattr(m, "dropout", None)
        if isinstance(rate, float) and rate > 0:
            return True
    return False


def _generator(device: torch.device, seed: int, path: str) -> torch.Generator:
    """A generator seeded by (seed, module path): each weight has its own stream."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(path.encode())) % (1 << 62))
    return g


def _normal(shape, device, dtype, seed: int, path: str) -> torch.Tensor:
    g = _generator(device, seed, path)
    return torch.randn(shape, generator=g, device=device, dtype=dtype).mul_(INIT_STD)


class LlamaQLoRA(nn.Module):
    """LLaMA-style decoder; block Linears come from ``make_linear(path, in, out)``.

    Use :func:`build_nf4_llama` to get one with NF4 block Linears. Embedding, norms and
    lm_head are frozen and in ``dtype``; ``checkpointing`` turns activation checkpointing
    per decoder layer on.
    """

    fused_kernels = True  # head + loss as one node (minituner.scale.fused_ce)

    def __init__(
        self,
        cfg: LlamaConfig,
        make_linear,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.bfloat16,
        seed: int = 0,
        checkpointing: bool = False,
    ):
        super().__init__()
        device = torch.device(device or "cpu")
        self.config, self.checkpointing = cfg, checkpointing
        self.loss_chunk = LOSS_CHUNK
        emb = _normal((cfg.vocab_size, cfg.hidden), device, dtype, seed, "embed_tokens")
        self.embed_tokens = nn.Embedding.from_pretrained(emb, freeze=True)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(
                cfg, lambda n, i, o, li=li: make_linear(f"layers.{li}.{n}", i, o), device, dtype
            )
            for li in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.hidden, cfg.rms_eps, device, dtype)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False, device="meta")
        self.lm_head.weight = nn.Parameter(
            _normal((cfg.vocab_size, cfg.hidden), device, dtype, seed, "lm_head")
        )
        cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq, cfg.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.requires_grad_(False)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.config.max_seq:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq={self.config.max_seq}")
        cos, sin = self.rope_cos[:T].float(), self.rope_sin[:T].float()
        x = self.embed_tokens(idx)  # (B, T, C)
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                # RNG state is saved (and restored for the recompute) only where the layer
                # draws random numbers: reading it is not allowed while a CUDA graph captures
                rng = draws_random_numbers(layer)
                x = checkpoint(
                    layer, x, cos, sin, use_reentrant=False, preserve_rng_state=rng,
                    context_fn=recompute.contexts,
                )  # fmt: skip
            else:
                x = layer(x, cos, sin)
        if labels is None:
            return self.lm_head(self.norm(x))  # (B, T, V)
        if self.fused_kernels and fused_ce.fused_applies(x, self.lm_head.weight):
            # head + loss as one node: its gradient is made in the forward pass, chunk by
            # chunk, so nothing is recomputed and no float32 logits exist
            h = self.norm(x).flatten(0, 1)  # (B*T, C)
            total = fused_ce.linear_cross_entropy_sum(h, self.lm_head.weight, labels.reshape(-1))
            return total / (labels != -100).sum()
        if not (self.checkpointing and torch.is_grad_enabled()):
            return self._loss_sum(x, labels) / (labels != -100).sum()
        # the head in chunks of loss_chunk positions, each recomputed in the backward pass:
        # only one chunk's float32 logits and their gradient exist at a time
        total = x.new_zeros((), dtype=torch.float32)
        chunks = zip(x.split(self.loss_chunk, 1), labels.split(self.loss_chunk, 1), strict=True)
        for xs, ys in chunks:
            total = total + checkpoint(
                self._loss_sum, xs, ys, use_reentrant=False, preserve_rng_state=False
            )
        return total / (labels != -100).sum()

    def _loss_sum(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy (float32) of the head's logits for x (B, t, C), labels (B, t)."""
        logits = self.lm_head(self.norm(x))  # (B, t, V)
        return F.cross_entropy(
            logits.float().flatten(0, 1), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )

    def use_fused_lora(self, on: bool = True) -> LlamaQLoRA:
        """Evaluate LoRA-wrapped NF4 Linears as one fused autograd node each (default) or
        module by module (``minituner.lora.qlora``)."""
        for m in self.modules():
            if isinstance(m, LlamaAttention | LlamaMLP):
                m.fused_lora = bool(on)
        return self

    def use_fused_kernels(self, on: bool = True) -> LlamaQLoRA:
        """RMSNorm, rotary, SwiGLU and head + loss in Triton kernels (default) where they
        apply (CUDA; ``minituner.scale.fused_*``), or the eager PyTorch ops everywhere."""
        self.fused_kernels = bool(on)
        for m in self.modules():
            if isinstance(m, LlamaAttention | LlamaMLP):
                m.fused_kernels = bool(on)
            elif isinstance(m, RMSNorm):
                m.fused = bool(on)
        return self

    def nf4_linears(self) -> dict[str, NF4Linear]:
        return {n: m for n, m in self.named_modules() if isinstance(m, NF4Linear)}


def build_nf4_llama(
    cfg: LlamaConfig,
    device: torch.device | str = "cpu",
    compute_dtype: torch.dtype = torch.bfloat16,
    block_size: int = DEFAULT_BLOCK_SIZE,
    double_quant: bool = QLORA_DOUBLE_QUANT,
    seed: int = 0,
    checkpointing: bool = False,
    low_mem_backward: bool = True,
) -> LlamaQLoRA:
    """A :class:`LlamaQLoRA` whose block Linears are NF4, quantized one at a time.

    Each weight (out, in) is drawn on ``device`` in ``compute_dtype`` (normal, std 0.02,
    seeded by ``seed`` and its module path), quantized, and freed before the next: peak
    memory is the quantized model so far plus one dense Linear. Deterministic per device.
    """
    device = torch.device(device)
    cls = NF4LinearLowMem if low_mem_backward else NF4Linear

    def make_linear(path: str, in_f: int, out_f: int) -> NF4Linear:
        dense = nn.Linear(in_f, out_f, bias=False, device="meta")
        dense.weight = nn.Parameter(
            _normal((out_f, in_f), device, compute_dtype, seed, path), requires_grad=False
        )
        q = cls.from_linear(dense, block_size=block_size, double_quant=double_quant)
        del dense  # the only reference to the dense weight: freed here
        return q

    return LlamaQLoRA(cfg, make_linear, device, compute_dtype, seed, checkpointing)
