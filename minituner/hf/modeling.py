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
A padded batch (an ``attention_mask`` with zeros) is refused: MiniGPT has no padding mask,
so generate one prompt at a time. :func:`register` makes ``AutoConfig`` and
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
            ValueError: no input_ids, a padded batch, or more than block_size tokens.
        """
        if input_ids is None:
            raise ValueError("MiniGPTForCausalLM needs input_ids (no inputs_embeds)")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "MiniGPT has no padding mask: generate one prompt at a time "
                "(the attention_mask holds zeros)"
            )
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
        return {"input_ids": input_ids[:, -self.config.block_size :], "attention_mask": None}


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` load model_type "minigpt" folders."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(MODEL_TYPE, MiniGPTConfig)
        AutoModelForCausalLM.register(MiniGPTConfig, MiniGPTForCausalLM)
    except ValueError:  # already registered (a second import): nothing to do
        pass
