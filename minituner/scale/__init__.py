"""Beyond MiniGPT: a Llama-shaped model in NF4 for the 7B-scale benchmark, a training
step captured in a CUDA graph, and the 7B measurements."""
