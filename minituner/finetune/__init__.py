"""Fine-tuning MiniGPT: the config, the loop (an iterator of typed events), the
events themselves, the training child process and data-parallel training."""
