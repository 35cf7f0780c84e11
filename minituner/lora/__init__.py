"""LoRA as plain PyTorch: the LoRALinear layer, putting it into any model, merging,
adapter files, and the fused NF4 + LoRA node of QLoRA. Imports nf4 (for a 4-bit base), never
minigpt (MiniGPT's target names are data in lora.targets)."""
