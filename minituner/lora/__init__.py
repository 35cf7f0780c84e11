"""LoRA as plain PyTorch, one concept a module:

- ``targets``: MiniGPT's target names as data and the r/alpha/dropout/rslora rules (no torch);
- ``layer``: ``LoRALinear``, a frozen Linear-like base plus scaling · B A;
- ``fast_path``: which kernels a float ``LoRALinear`` runs, and its hand-written backward;
- ``inject``: ``add_lora`` / ``merge_lora`` on any ``nn.Module``, parameter counting;
- ``adapter_io``: ``save_adapter`` / ``load_adapter`` (safetensors + JSON, never pickle);
- ``qlora``: the fused NF4 + LoRA node of QLoRA.

Imports nf4 (for a 4-bit base), never minigpt (MiniGPT's target names are data in
``lora.targets``).
"""
