#!/usr/bin/env bash
# Issue 27's GPU work in one device call: GPU tests, NF4 dequantize, the 7B step at batch 8
# against its peers, and at batch 1 (B1=1). Logs go to $OUT (the device tool's folder).
# Wheels (.whl/: bitsandbytes 0.50.2 trimmed to its CPU and CUDA 13.0 libraries,
# liger-kernel 0.8.5, torchao 0.18.0) are installed into /tmp/site first.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl > /tmp/pip.txt 2>&1 || { tail /tmp/pip.txt; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
T0=$SECONDS
if [ "${TESTS:-1}" = 1 ]; then
  timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider -x ${TEST_K:+-k "$TEST_K"} ${TEST_FILES:-\
    tests/scale/test_fused_kernels.py tests/scale/test_graphs.py \
    tests/nf4/backends/test_triton.py tests/scale/test_llama.py} > "$OUT/tests.txt" 2>&1; echo "tests rc=$? $((SECONDS-T0)) s"; tail -4 "$OUT/tests.txt"
fi
if [ "${NF4:-1}" = 1 ]; then
  for i in $(seq 1 "${NF4_RUNS:-1}"); do
    timeout "${NF4_TIMEOUT:-90}" python3 benchmarks/bench_nf4.py --device cuda \
      --shapes ${NF4_SHAPES:-4096x4096 4096x11008 11008x4096} --graph ${NF4_ARGS:-} \
      ${NF4_CONFIGS:+--kernel-configs $NF4_CONFIGS} --json "$OUT/nf4_$i.json" \
      > "$OUT/nf4_$i.txt" 2>&1; echo "nf4 run $i rc=$? $((SECONDS-T0)) s"
    grep -E "^(NF4 on|dequantize|device|host)" "$OUT/nf4_$i.txt"
  done
fi
if [ "${B1:-0}" = 1 ]; then
  timeout "${B1_TIMEOUT:-120}" python3 benchmarks/bench_7b_qlora.py --batch 1 --r 8 --targets qv all --peft \
    --profile --out "$OUT/b1.json" > "$OUT/b1.txt" 2>&1; echo "b1 rc=$? $((SECONDS-T0)) s"
  grep -E "step|ours/" "$OUT/b1.txt"
fi
if [ "${B8:-1}" = 1 ]; then
  timeout "${B8_TIMEOUT:-330}" python3 benchmarks/bench_7b_qlora.py --batch 8 --r 8 \
    --targets qv all --steps "${STEPS:-4}" --kernels "${KERNELS:-both}" --profile --attention-bench \
    ${PEERS:---peft --liger --torchao} --out "$OUT/b8.json" > "$OUT/b8.txt" 2>&1
  echo "b8 rc=$? $((SECONDS-T0)) s"; grep -E "step|ours/|by kind|failed|skipped|attention" "$OUT/b8.txt"
fi
