"""Model shapes: the parameter layout of a decoder-only transformer, without weights.

A :class:`ModelShape` lists every parameter tensor (embeddings, norms, the Linears of
each layer, an untied lm_head) so that parameter and memory math (:mod:`minituner.memory.predict`)
can run on shapes far larger than anything built here. :data:`SHAPES` holds MiniGPT's
default, GPT-2 small and LLaMA-7B; :meth:`ModelShape.from_gpt_config` gives the shape of
any ``MiniGPT``. Target names (q, k, v, o, fc_in, fc_out and the groups attn / mlp / all)
are those of :mod:`minituner.lora.targets`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from minituner.lora.targets import TARGET_ALIASES, TARGET_GROUPS, resolve_targets
from minituner.minigpt.model import GPTConfig


@dataclass(frozen=True)
class LinearShape:
    """One Linear of a transformer layer: attribute name, short target name, in, out."""

    name: str
    target: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor of a model shape. ``kind``: embedding|norm|linear|bias|lm_head."""

    name: str
    numel: int
    kind: str
    target: str | None = None


@dataclass
class ModelShape:
    """The parameter layout of a decoder-only transformer, enough for parameter/memory math.

    Each layer has ``n_norms_per_layer`` norms (LayerNorm: weight + bias; RMSNorm when
    ``norm_bias`` is False: weight only), attention q, k, v, o (d_model → d_model) and an
    MLP: fc_in (d_model → d_ff) and fc_out, or for a gated (LLaMA) MLP gate_proj and up_proj
    (d_model → d_ff) and down_proj. ``layer_linears`` is derived from these unless given.
    Token embeddings (vocab × d_model), learned positions (``n_positions`` × d_model; 0
    for rotary), a final norm, and an lm_head that is either tied to the embedding or a
    separate Linear(d_model, vocab) without bias.
    """

    name: str
    d_model: int
    d_ff: int
    n_layers: int
    n_heads: int
    vocab: int
    gated_mlp: bool = False
    tie_embeddings: bool = True
    bias: bool = False
    n_positions: int = 0
    norm_bias: bool = True
    n_norms_per_layer: int = 2
    layer_linears: tuple[LinearShape, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layer_linears:
            C, F = self.d_model, self.d_ff
            attn = [LinearShape(TARGET_ALIASES[t], t, C, C) for t in TARGET_GROUPS["attn"]]
            if self.gated_mlp:
                mlp = [
                    LinearShape("gate_proj", "gate", C, F),
                    LinearShape("up_proj", "up", C, F),
                    LinearShape("down_proj", "down", F, C),
                ]
            else:
                fc_in, fc_out = TARGET_GROUPS["mlp"]
                mlp = [LinearShape(fc_in, fc_in, C, F), LinearShape(fc_out, fc_out, F, C)]
            self.layer_linears = tuple(attn + mlp)

    @classmethod
    def from_gpt_config(cls, cfg, name: str = "minigpt") -> ModelShape:
        """The shape of ``MiniGPT(cfg)`` (a :class:`minituner.minigpt.model.GPTConfig`)."""
        return cls(
            name=name,
            d_model=cfg.n_embd,
            d_ff=cfg.mlp_ratio * cfg.n_embd,
            n_layers=cfg.n_layer,
            n_heads=cfg.n_head,
            vocab=cfg.vocab_size,
            gated_mlp=False,
            tie_embeddings=True,
            bias=cfg.bias,
            n_positions=cfg.block_size,
            norm_bias=True,
        )

    def short_targets(self, targets: Iterable[str] | str) -> tuple[str, ...]:
        """The short names (``lin.target``) of the layer Linears that ``targets`` selects,
        in layer order.

        ``targets`` is read as :func:`minituner.lora.targets.resolve_targets` reads it for
        ``add_lora``: short names, the groups attn / mlp / all, attribute names, or one
        comma-separated string (``"q,v"``). On a gated MLP, ``fc_in`` stands for gate and
        up and ``fc_out`` for down, so a choice made for MiniGPT carries over to LLaMA.

        Raises:
            ValueError: for an empty selection, or a name this shape lacks (the message
                lists the choices).
        """
        short = [lin.target for lin in self.layer_linears]
        by_name = {lin.name: (lin.target,) for lin in self.layer_linears}
        by_name.update({s: (s,) for s in short})
        if self.gated_mlp:
            by_name.update({"fc_in": ("gate", "up"), "fc_out": ("down",)})
        chosen: set[str] = set()
        for name in resolve_targets(targets):
            if name not in by_name:
                names = sorted(set(by_name) | set(TARGET_GROUPS))
                raise ValueError(f"unknown target {name!r} for {self.name}; choose from {names}")
            chosen.update(by_name[name])
        return tuple(s for s in short if s in chosen)

    def linears(self) -> list[tuple[str, int, int]]:
        """Every Linear weight as (name, in, out); lm_head last when it is not tied."""
        out = [
            (f"layers.{i}.{lin.name}", lin.in_features, lin.out_features)
            for i in range(self.n_layers)
            for lin in self.layer_linears
        ]
        if not self.tie_embeddings:
            out.append(("lm_head", self.d_model, self.vocab))
        return out

    def param_tensors(self) -> list[ParamTensor]:
        """Every parameter tensor (a tied lm_head is the embedding, listed once)."""
        C = self.d_model
        norm = ["weight", "bias"] if self.norm_bias else ["weight"]
        ts = [ParamTensor("tok_emb", self.vocab * C, "embedding")]
        if self.n_positions:
            ts.append(ParamTensor("pos_emb", self.n_positions * C, "embedding"))
        for i in range(self.n_layers):
            for j in range(self.n_norms_per_layer):
                ts += [ParamTensor(f"layers.{i}.norm_{j}.{p}", C, "norm") for p in norm]
            for lin in self.layer_linears:
                prefix = f"layers.{i}.{lin.name}"
                ts.append(
                    ParamTensor(
                        f"{prefix}.weight", lin.in_features * lin.out_features, "linear", lin.target
                    )
                )
                if self.bias:
                    ts.append(ParamTensor(f"{prefix}.bias", lin.out_features, "bias", lin.target))
        ts += [ParamTensor(f"norm_f.{p}", C, "norm") for p in norm]
        if not self.tie_embeddings:
            ts.append(ParamTensor("lm_head.weight", C * self.vocab, "lm_head"))
        return ts

    def total_params(self) -> int:
        return sum(t.numel for t in self.param_tensors())


SHAPES: dict[str, ModelShape] = {
    # GPTConfig()'s defaults (the "default" preset, vocab 64, block 96). For a trained model
    # use ModelShape.from_gpt_config(model.config): its vocabulary and block size can differ.
    "minigpt": ModelShape.from_gpt_config(GPTConfig()),
    "gpt2-small": ModelShape(
        name="gpt2-small",
        d_model=768,
        d_ff=3072,
        n_layers=12,
        n_heads=12,
        vocab=50257,
        tie_embeddings=True,
        bias=True,
        n_positions=1024,
        norm_bias=True,
    ),
    "llama-7b": ModelShape(
        name="llama-7b",
        d_model=4096,
        d_ff=11008,
        n_layers=32,
        n_heads=32,
        vocab=32000,
        gated_mlp=True,
        tie_embeddings=False,
        bias=False,
        n_positions=0,
        norm_bias=False,
    ),
}
