"""The NF4 format (minituner.nf4.format): the codebooks against their construction and
bitsandbytes (a test-only reference), and the NF4Tensor container's checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from nf4_util import NF4, bnbF, needs_bnb

from minituner.nf4.codec import quantize_nf4
from minituner.nf4.format import (
    FP4_CODEBOOK,
    NF4Tensor,
    dynamic_map_8bit,
    nf4_codebook_from_normal,
)

# ---------------------------------------------------------------------------- codebook


def test_computed_codebook_equals_published_table():
    computed = nf4_codebook_from_normal()
    assert computed.shape == (16,)
    torch.testing.assert_close(computed, NF4, rtol=0, atol=1e-6)
    assert computed[7] == 0 and computed[0] == -1 and computed[-1] == 1
    assert (computed > 0).sum() == 8 and (computed < 0).sum() == 7
    assert torch.all(computed[1:] > computed[:-1])


@needs_bnb
def test_codebook_equals_bitsandbytes_table():
    theirs = bnbF.get_4bit_type("nf4", device="cpu")
    torch.testing.assert_close(NF4, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(nf4_codebook_from_normal(), theirs, rtol=0, atol=1e-6)
    pytest.importorskip("scipy")  # bitsandbytes' own construction needs scipy
    normal_map = bnbF.create_normal_map()  # 256 entries: the 15 non-zero values and zeros
    built = torch.cat([normal_map[normal_map != 0], torch.zeros(1)]).sort().values
    torch.testing.assert_close(nf4_codebook_from_normal(), built, rtol=0, atol=1e-6)


@needs_bnb
def test_fp4_and_dynamic_maps_equal_bitsandbytes():
    torch.testing.assert_close(
        torch.tensor(FP4_CODEBOOK), bnbF.get_4bit_type("fp4", device="cpu"), rtol=0, atol=0
    )
    assert torch.equal(dynamic_map_8bit(), bnbF.create_dynamic_map())


def test_an_inconsistent_nf4tensor_cannot_be_made():
    """Every path that reads an NF4Tensor (C loop, Triton, PyTorch) trusts its fields."""
    q = quantize_nf4(torch.ones(128))
    dq = quantize_nf4(torch.ones(128), double_quant=True)
    with pytest.raises(ValueError, match="inconsistent.*code bytes"):
        replace(q, codes=q.codes[:10])
    with pytest.raises(ValueError, match="inconsistent.*code bytes"):
        replace(q, codes=q.codes.to(torch.int8))
    with pytest.raises(ValueError, match="inconsistent.*3 absmax values"):
        replace(q, absmax=torch.ones(3))
    with pytest.raises(ValueError, match="inconsistent.*float32 absmax codes"):
        replace(dq, absmax=q.absmax)
    with pytest.raises(ValueError, match="inconsistent.*uint8 absmax without"):
        replace(q, absmax=dq.absmax)
    with pytest.raises(ValueError, match="inconsistent.*3 double-quantization scales"):
        replace(dq, absmax_scale=torch.ones(3))
    with pytest.raises(ValueError, match="inconsistent.*part of the double"):
        replace(dq, absmax_map=None)
    with pytest.raises(ValueError, match="block_size"):
        replace(q, block_size=7)
    with pytest.raises(ValueError, match="quant_type"):
        replace(q, quant_type="nf3")
    with pytest.raises(ValueError, match="inconsistent.*code bytes"):
        replace(q, shape=(129,))  # the shape decides numel
    for t in (q, dq):
        z = NF4Tensor.zeros(t.shape, t.dtype, t.block_size, t.double_quant)
        assert {k: v.shape for k, v in z.tensors().items()} == {
            k: v.shape for k, v in t.tensors().items()
        }
