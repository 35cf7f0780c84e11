"""Helpers shared by the NF4 tests (tests/nf4/): the optional bitsandbytes reference,
hypothesis settings and seeded inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

from minituner.nf4.format import NF4_CODEBOOK

try:
    import bitsandbytes.functional as bnbF
except Exception:  # pragma: no cover - the reference is optional where it cannot install
    bnbF = None

needs_bnb = pytest.mark.skipif(bnbF is None, reason="bitsandbytes is not installed")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NF4 = torch.tensor(NF4_CODEBOOK)


def randn(*shape, seed=0, dtype=torch.float32):
    """Seeded standard-normal values of ``shape`` in ``dtype``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
