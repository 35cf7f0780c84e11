"""MiniGPT and its world: the verb corpus, tokenizer, model, batches, pretraining,
checkpoints, evaluation and teaching a verb of your own. Imports nothing above it."""
