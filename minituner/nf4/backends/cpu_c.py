"""A fused C loop for blockwise 4-bit dequantization on the CPU, built when first needed.

The PyTorch path (:mod:`minituner.nf4.backends.torch_ops`) dequantizes in separate ops (widen
the codes, gather four values per pair of bytes, scale by absmax, convert), each a pass over
memory.
On a big tensor most of the time goes to the page faults of writing fresh memory, and a
single loop that decodes, scales and writes each element once hides its arithmetic behind
those faults while separate ops add to them. This module compiles such a loop (plain C,
with an AVX-512 version of its inner loop where the compiler targets it) with the
system's C compiler (``$CC`` or ``cc``) into a fresh temporary directory the first time
it is asked for, and calls it through ctypes. With
OpenMP (``-fopenmp``) the loop splits big tensors over torch's threads, on the OpenMP
runtime torch itself loaded.

The arithmetic is the PyTorch path's: ``codebook[code] * absmax`` in float32, rounded
once (to nearest even) to bfloat16 when asked, so the two agree bit for bit
(``tests/nf4/backends/test_cpu_c.py``). Nothing is cached on disk. Without a compiler, if the build
fails, for float16 / float64 output, or with ``MINITUNER_NF4_KERNEL=torch``,
:func:`available` is False and :mod:`minituner.nf4.codec` uses PyTorch.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from minituner.nf4.backends import code_table, fused_wanted

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* the per-block scales: float32 absmax values, or (grid set) double-quantized 8-bit codes
   decoded as grid[code] * scale[block / dq_block] + offset, rounding after the
   multiply and after the add as the PyTorch path does (built with -ffp-contract=off) */
typedef struct {
    const void *absmax;
    const float *grid, *scale, *offset;
    int64_t dq_block;
} scales_t;

static inline float block_scale(const scales_t *S, int64_t b) {
    if (!S->grid) return ((const float *)S->absmax)[b];
    float a = S->grid[((const uint8_t *)S->absmax)[b]] * S->scale[b / S->dq_block];
    return a + *S->offset;
}

static inline uint16_t to_bf16(float f) { /* round to nearest even; the values are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* Elements [e0, e1) of a blockwise 4-bit tensor into dst[0 .. e1 - e0) as float32, or,
   when dst16 is given, into dst16[...] as bfloat16. e0 is even. Two codes per byte, the
   first element in the high nibble; block_size is even, so a byte's two elements share a
   block and only an odd numel leaves a single element at the end. */
static void decode(const uint8_t *codes, const scales_t *S, const float *lut, float *dst,
                   uint16_t *dst16, int64_t e0, int64_t e1, int64_t bs) {
    int64_t e = e0;
    while (e < e1) {
        const int64_t b = e / bs;
        const float s = block_scale(S, b);
        const int64_t end = (b + 1) * bs < e1 ? (b + 1) * bs : e1;
#ifdef __AVX512F__
        /* 32 elements (16 bytes) at a time: the 16 code values sit in one register and
           each nibble picks its lane; the same product, element by element, as below */
        if (end - e >= 32) {
            const __m512 lv = _mm512_loadu_ps(lut), sv = _mm512_set1_ps(s);
            const __m512i low4 = _mm512_set1_epi32(15);
            const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                                   17, 1, 16, 0); /* hi0 lo0 hi1 lo1 ... */
            const __m512i second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11,
                                                    26, 10, 25, 9, 24, 8);
            for (; e + 32 <= end; e += 32) {
                const __m512i c =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + (e >> 1))));
                const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), lv);
                const __m512 lo = _mm512_permutexvar_ps(_mm512_and_si512(c, low4), lv);
                const __m512 v0 = _mm512_mul_ps(_mm512_permutex2var_ps(hi, first, lo), sv);
                const __m512 v1 = _mm512_mul_ps(_mm512_permutex2var_ps(hi, second, lo), sv);
                if (dst16) { /* to_bf16 on 16 lanes, then the low halves of the lanes */
                    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF);
                    __m512i u0 = _mm512_castps_si512(v0), u1 = _mm512_castps_si512(v1);
                    u0 = _mm512_add_epi32(u0, _mm512_add_epi32(half, _mm512_and_si512(
                                                  _mm512_srli_epi32(u0, 16), one)));
                    u1 = _mm512_add_epi32(u1, _mm512_add_epi32(half, _mm512_and_si512(
                                                  _mm512_srli_epi32(u1, 16), one)));
                    uint16_t *d = dst16 + (e - e0);
                    _mm256_storeu_si256((__m256i *)d,
                                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(u0, 16)));
                    _mm256_storeu_si256((__m256i *)(d + 16),
                                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(u1, 16)));
                } else {
                    _mm512_storeu_ps(dst + (e - e0), v0);
                    _mm512_storeu_ps(dst + (e - e0) + 16, v1);
                }
            }
        }
#endif
        if (dst16) {
            for (; e + 1 < end; e += 2) {
                const uint8_t c = codes[e >> 1];
                dst16[e - e0] = to_bf16(lut[c >> 4] * s);
                dst16[e - e0 + 1] = to_bf16(lut[c & 15] * s);
            }
        } else {
            for (; e + 1 < end; e += 2) {
                const uint8_t c = codes[e >> 1];
                dst[e - e0] = lut[c >> 4] * s;
                dst[e - e0 + 1] = lut[c & 15] * s;
            }
        }
        if (e < end) { /* the last element of an odd numel */
            const float v = lut[codes[e >> 1] >> 4] * s;
            if (dst16)
                dst16[e - e0] = to_bf16(v);
            else
                dst[e - e0] = v;
            e++;
        }
    }
}

/* blocks [b0, b1) of a tensor of n elements, as float32 */
static void f32_range(const uint8_t *codes, const scales_t *S, const float *lut, float *out,
                      int64_t n, int64_t bs, int64_t b0, int64_t b1) {
    const int64_t e0 = b0 * bs, e1 = b1 * bs < n ? b1 * bs : n;
    decode(codes, S, lut, out + e0, 0, e0, e1, bs);
}

#define CHUNK 2048 /* even: chunks start on a byte */

/* the same as bfloat16. With AVX-512 in one pass; otherwise float32 in a small buffer,
   then rounded in a second loop that the compiler vectorizes */
static void bf16_range(const uint8_t *codes, const scales_t *S, const float *lut,
                       uint16_t *out, int64_t n, int64_t bs, int64_t b0, int64_t b1) {
    const int64_t end = b1 * bs < n ? b1 * bs : n;
#ifdef __AVX512F__
    decode(codes, S, lut, 0, out + b0 * bs, b0 * bs, end, bs);
#else
    float tmp[CHUNK];
    uint32_t bits[CHUNK];
    for (int64_t e0 = b0 * bs; e0 < end; e0 += CHUNK) {
        const int64_t e1 = e0 + CHUNK < end ? e0 + CHUNK : end;
        decode(codes, S, lut, tmp, 0, e0, e1, bs);
        memcpy(bits, tmp, (size_t)(e1 - e0) * 4);
        for (int64_t i = 0; i < e1 - e0; i++)
            out[e0 + i] = (uint16_t)((bits[i] + 0x7FFFu + ((bits[i] >> 16) & 1u)) >> 16);
    }
#endif
}

/* all n elements, the blocks split evenly over `threads` OpenMP threads. Built with
   -fopenmp this runs on the OpenMP runtime PyTorch already loaded (same soname), so it
   shares torch's thread pool; built without, the pragma is ignored and one thread works. */
void dequant(const uint8_t *codes, const void *absmax, const float *lut, void *out,
             int64_t n, int64_t bs, int64_t bf16, int64_t threads, const float *grid,
             const float *scale, const float *offset, int64_t dq_block) {
    const int64_t nb = (n + bs - 1) / bs;
    const scales_t scales = {absmax, grid, scale, offset, dq_block}, *S = &scales;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < threads; t++) {
        const int64_t b0 = nb * t / threads, b1 = nb * (t + 1) / threads;
        if (bf16)
            bf16_range(codes, S, lut, (uint16_t *)out, n, bs, b0, b1);
        else
            f32_range(codes, S, lut, (float *)out, n, bs, b0, b1);
    }
}
"""

# compiler flags tried in turn: this CPU's vector instructions (AVX-512 takes the vector
# path in the C source) and OpenMP, then OpenMP alone, then neither
_TRY_FLAGS: tuple[list[str], ...] = (["-march=native", "-fopenmp"], ["-fopenmp"], [])
_ARGTYPES = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
_PARALLEL_MIN = 1 << 16  # elements below which one thread does it all


def _compile(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """Compile and load the C loop once per process; None (with a warning) if that fails."""
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        return None
    with tempfile.TemporaryDirectory(prefix="minituner-nf4-") as tmp:
        src, lib = Path(tmp) / "nf4.c", Path(tmp) / "nf4.so"
        src.write_text(_SOURCE)
        cmd = [
            cc,
            "-O3",
            "-fPIC",
            "-shared",
            "-fno-fast-math",
            "-ffp-contract=off",
            "-o",
            str(lib),
            str(src),
        ]
        try:
            # built where it runs, so it may use this CPU's vector instructions; OpenMP
            # when the compiler has it
            for extra in _TRY_FLAGS:
                try:
                    _compile(cmd[:2] + extra + cmd[2:])
                    break
                except subprocess.CalledProcessError:
                    if not extra:
                        raise
            dll = ctypes.CDLL(str(lib))  # mapped now: the file may go with the directory
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            warnings.warn(f"NF4 C loop not built, using PyTorch ops: {detail}", stacklevel=3)
            return None
    dll.dequant.argtypes = _ARGTYPES
    dll.dequant.restype = None
    return dll


def available(codes: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether :func:`dequantize_packed` runs for ``codes`` into ``dtype``.

    True for CPU tensors and float32 or bfloat16 output once the C loop is built (the
    first call builds it), unless ``MINITUNER_NF4_KERNEL=torch``.
    """
    if codes.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    return fused_wanted() and _library() is not None


def dequantize_packed(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    codebook: tuple[float, ...],
    numel: int,
    block_size: int,
    dtype: torch.dtype,
    *,
    dq_block_size: int,
    dq_grids: torch.Tensor | None = None,
    dq_map: torch.Tensor | None = None,
    dq_scale: torch.Tensor | None = None,
    dq_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize packed 4-bit codes on the CPU into a flat ``(numel,)`` tensor of ``dtype``.

    As :func:`minituner.nf4.backends.triton_dequant.dequantize_packed` (the arguments are
    described in :mod:`minituner.nf4.backends`), with ``dtype`` float32 or bfloat16.

    Raises:
        RuntimeError: the C loop is not available (see :func:`available`).
    """
    if not available(codes, dtype):
        raise RuntimeError(f"the NF4 C loop cannot run on {codes.device} into {dtype}")
    codes = codes.contiguous()
    dq_ptrs = [None, None, None]
    if dq_scale is None:
        absmax = absmax.to(torch.float32).contiguous()
    else:
        absmax = absmax.contiguous()
        grid = dq_grids[int(dq_map)].to(torch.float32).contiguous()  # (256,)
        scale = dq_scale.to(torch.float32).contiguous()
        offset = dq_offset.to(torch.float32).reshape(1).contiguous()
        dq_ptrs = [grid.data_ptr(), scale.data_ptr(), offset.data_ptr()]
    lut = code_table(codebook, codes.device)
    out = torch.empty(numel, dtype=dtype)
    threads = torch.get_num_threads() if numel >= _PARALLEL_MIN else 1
    n_blocks = -(-numel // block_size)
    _library().dequant(
        codes.data_ptr(),
        absmax.data_ptr(),
        lut.data_ptr(),
        out.data_ptr(),
        numel,
        block_size,
        int(dtype == torch.bfloat16),
        max(1, min(threads, n_blocks)),
        *dq_ptrs,
        dq_block_size,
    )
    return out
