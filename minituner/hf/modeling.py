"""MiniGPT as a transformers model: :class:`MiniGPTConfig` + :class:`MiniGPTForCausalLM`.

The model owns MiniGPT's own modules under MiniGPT's own names (``tok_emb``, ``pos_emb``,
``blocks.N.attn.q_proj``, ..., ``lm_head`` tied to ``tok_emb``), so its state dict is the
base model's ``model.safetensors`` key for key and a LoRA adapter's module paths are the
same in both: one adapter file fits MiniGPT and this class. The forward pass is
MiniGPT's (:meth:`minituner.minigpt.model.MiniGPT.forward`), wrapped in transformers'
output type, so ``model.generate`` (greedy by default) continues a prompt exactly as
MiniGPT would. No key/value cache: each step reads the whole context (at most
``block_size`` = 128 characters, a few milliseconds); ``use_cache`` is off in the config.

Token ids are the character tokenizer's (:class:`minituner.minigpt.tokenizer.CharTokenizer`,
saved beside the weights as tokenizer.json): the newline, id 0, is BOS, EOS and padding.
A batch of prompts of different lengths is LEFT-padded, as transformers generates: with an
``attention_mask`` holding zeros, each row's positions count from its first real token and
no real token attends to padding (:func:`_padded_forward`), so a row's logits are those of
the row alone, up to float rounding. :func:`register` makes ``AutoConfig`` and
``AutoModelForCausalLM`` know the classes (importing :mod:`minituner.hf` does it).
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from minituner.minigpt.model import GPTConfig, MiniGPT

MODEL_TYPE = "minigpt"
_FIELDS = tuple(GPTConfig.__dataclass_fields__)  # vocab_size, block_size, n_layer, ...


class MiniGPTConfig(PretrainedConfig):
    """transformers' config for MiniGPT: :class:`GPTConfig`'s fields, and the newline
    (id 0) as BOS, EOS and pad token."""

    model_type = MODEL_TYPE

    def __init__(self, **kwargs):
        gpt = GPTConfig(**{k: kwargs.pop(k) for k in _FIELDS if k in kwargs})
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(k, 0)
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.setdefault("use_cache", False)
        for k, v in gpt.to_dict().items():
            setattr(self, k, v)
        super().__init__(**kwargs)
        self.num_hidden_layers = self.n_layer
        self.hidden_size = self.n_embd
        self.num_attention_heads = self.n_head
        self.max_position_embeddings = self.block_size

    @classmethod
    def from_gpt_config(cls, config: GPTConfig) -> MiniGPTConfig:
        return cls(**config.to_dict())

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(**{k: getattr(self, k) for k in _FIELDS})


class MiniGPTForCausalLM(PreTrainedModel, GenerationMixin):
    """MiniGPT's modules under their own names, with transformers' loading and ``generate``."""

    config_class = MiniGPTConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "tok_emb.weight"}
    _no_split_modules = ["Block"]
    _supports_cache_class = False

    def __init__(self, config: MiniGPTConfig):
        super().__init__(config)
        core = MiniGPT(config.gpt_config())  # builds (and ties) the modules; we adopt them
        for name, child in core.named_children():
            self.add_module(name, child)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        MiniGPT._init_weights(module)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.tok_emb

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.tok_emb = value

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: torch.nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        """Logits (B, T, vocab) for ``input_ids`` (B, T); with ``labels``, the mean
        next-token cross-entropy (labels shifted inside, -100 ignored, as transformers does).

        Raises:
            ValueError: no input_ids, or more than block_size tokens.
        """
        if input_ids is None:
            raise ValueError("MiniGPTForCausalLM needs input_ids (no inputs_embeds)")
        if attention_mask is not None and not bool(attention_mask.all()):
            logits = _padded_forward(self, input_ids, attention_mask.bool())
        else:
            logits = MiniGPT.forward(self, input_ids)  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs) -> dict:
        # no cache: every step reads the whole context (the last block_size tokens)
        keep = slice(-self.config.block_size, None)
        mask = attention_mask[:, keep] if attention_mask is not None else None
        return {"input_ids": input_ids[:, keep], "attention_mask": mask}


def _padded_forward(model, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """MiniGPT's forward for a left-padded batch: logits (B, T, vocab).

    ``keep`` (B, T) is False on padding. Positions restart at each row's first real token;
    attention is causal and skips padded keys (a padded query sees itself only, so no row
    is empty). The layers are the model's own modules (LoRA wrapped by PEFT included).
    """
    B, T = idx.shape
    if T > model.config.block_size:
        raise ValueError(f"{T} tokens are more than block_size ({model.config.block_size})")
    pos = (keep.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    x = model.drop(model.tok_emb(idx) + model.pos_emb(pos))  # (B, T, C)
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=idx.device)
    allowed = (causal & keep[:, None, :]) | eye  # (B, T, T): query row, key column
    for block in model.blocks:
        x = x + _attend(block.attn, block.ln_1(x), allowed[:, None])
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))  # (B, T, vocab)


def _attend(attn, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """CausalSelfAttention's computation with an explicit (B, 1, T, T) boolean mask."""
    B, T, C = x.shape
    hs = C // attn.n_head

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, attn.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)

    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return attn.o_proj(y.transpose(1, 2).contiguous().view(B, T, C))  # (B, T, C)


def register() -> None:
    """Make ``AutoConfig``, ``AutoModelForCausalLM`` and ``AutoTokenizer`` load model_type
    "minigpt" folders."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from minituner.hf.tokenizer import MiniGPTTokenizer

    try:
        AutoConfig.register(MODEL_TYPE, MiniGPTConfig)
        AutoModelForCausalLM.register(MiniGPTConfig, MiniGPTForCausalLM)
        AutoTokenizer.register(MiniGPTConfig, slow_tokenizer_class=MiniGPTTokenizer)
    except ValueError:  # already registered (a second import): nothing to do
        pass
