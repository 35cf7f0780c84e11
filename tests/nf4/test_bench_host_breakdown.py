"""benchmarks/nf4_host_breakdown.py off the GPU: its timer counts every call it is given and
refuses a bad count; the script says it needs CUDA rather than timing something else."""

from __future__ import annotations

import pytest
import torch
from bench_util import load_benchmark


def _bench():
    return load_benchmark("nf4_host_breakdown")


def test_per_call_us_times_each_call_after_the_warm_up():
    bench, calls, syncs = _bench(), [], []
    us = bench.per_call_us(lambda: calls.append(1), 200, sync=lambda: syncs.append(1))
    assert len(calls) == 50 + 200 and len(syncs) == 2 and us > 0
    with pytest.raises(ValueError, match="at least 1"):
        bench.per_call_us(lambda: None, 0, sync=lambda: None)


def test_the_script_refuses_bad_arguments_and_a_machine_without_cuda(capsys):
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.main(["--calls", "0"])
    assert "--calls must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA device"):
            bench.main([])
