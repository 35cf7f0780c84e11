#!/usr/bin/env bash
# Issue 27's GPU measurements in one go, on one CUDA machine with this repo's requirements
# plus bitsandbytes, liger-kernel, torchao (their versions land in each JSON) and nvidia-ml-py
# (the SM clock and power of --clocks):
#   bash benchmarks/full_load_gpu.sh OUT_DIR
# 1. the GPU tests of every fused kernel (NF4 dequantize and its prepared launch, RMSNorm,
#    RoPE, SwiGLU, head + loss, recompute, q,k,v / gate,up groups, CUDA graphs, bitsandbytes)
# 2. the GEMMs of one QLoRA node in each order at the 7B shapes (bench_gemm_order.py)
# 3. batch 8 x 512 against PEFT + bitsandbytes and PEFT + bitsandbytes + Liger-Kernel, with
#    the LoRA-in-K and norm-residual settings (off by default) timed beside it (--variants)
# 4. where one NF4 dequantize call's host time goes (nf4_host_breakdown.py), then NF4
#    dequantize at the 7B shapes against bitsandbytes and the copy bandwidth
# 5. batch 1 x 512 against PEFT + bitsandbytes
# 6. batch 8 against torchao's NF4 + LoRA under torch.compile (slowest: it compiles)
# 7. where the q,v step's memory peak is (peak_trace.py: live blocks by repository line)
# Nothing here asserts a number: read the JSON (scripts/update_readme.py takes b8.json).
set -uo pipefail
out=${1:?usage: bash benchmarks/full_load_gpu.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python -m pytest -q -rfE tests/nf4/backends/test_triton.py tests/scale tests/lora/test_qlora_group.py \
  tests/nf4/test_bnb.py tests/nf4/test_codec.py -k "not interpreted" | tee "$out/tests.txt"
python benchmarks/bench_gemm_order.py --device cuda --json "$out/gemm.json" | tee "$out/gemm.txt"
python benchmarks/bench_7b_qlora.py --batch 8 --r 8 --targets qv all --steps 3 --kernels fused \
  --profile --top 30 --peft --liger --clocks --variants lora_in_k norm_residual lora_in_k_norm_residual \
  --out "$out/b8.json" | tee "$out/b8.txt"
python benchmarks/nf4_host_breakdown.py --json "$out/host.json" | tee "$out/host.txt"
python benchmarks/bench_nf4.py --device cuda --shapes 4096x4096 4096x11008 11008x4096 --graph \
  --kernel-configs 2048:4 4096:8 8192:8 \
  --json "$out/nf4.json" | tee "$out/nf4.txt"
python benchmarks/bench_7b_qlora.py --batch 1 --r 8 --targets qv all --peft --profile \
  --out "$out/b1.json" | tee "$out/b1.txt"
python benchmarks/bench_7b_qlora.py --batch 8 --r 8 --targets qv all --steps 3 --kernels fused \
  --torchao --out "$out/b8_torchao.json" | tee "$out/b8_torchao.txt"
python benchmarks/peak_trace.py --targets qv --out "$out/peak_qv.json" | tee "$out/peak_qv.txt"
