"""Data-parallel LoRA fine-tuning (2 processes, gloo on the CPU) equals one process at
the same global batch."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import load_base
from minituner.io import load_tensors, save_tensors
from minituner.lora.adapter_io import lora_state_dict

CFG = dict(method="lora", r=4, alpha=8, targets=("q", "v"), steps=4, batch_size=8,
           eval_every=1000, eval_sample=4, lr=5e-3)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    res = finetune(FinetuneConfig(**CFG), load_base(), device="cpu")
    if rank == 0:
        sd = {k: v.detach().clone() for k, v in lora_state_dict(res.model).items()}
        sd["loss"] = torch.tensor(res.metrics["curves"]["loss"], dtype=torch.float64)
        save_tensors(out, sd)
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo test uses fork/spawn on POSIX")
def test_two_gloo_processes_equal_one_process(tmp_path):
    out = str(tmp_path / "ddp.safetensors")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = load_tensors(out)

    single = finetune(FinetuneConfig(**CFG), load_base(), device="cpu")
    ref = lora_state_dict(single.model)
    losses = torch.tensor(single.metrics["curves"]["loss"], dtype=torch.float64)
    assert torch.allclose(ddp.pop("loss"), losses, rtol=1e-5, atol=1e-6)
    assert set(ddp) == set(ref)
    for k, v in ref.items():
        # same math, different summation order: equal to float32 rounding
        assert torch.allclose(ddp[k], v, rtol=1e-4, atol=1e-6), k
    # and the update really happened (B starts at zero)
    assert any(k.endswith("lora_B") and v.abs().max() > 0 for k, v in ref.items())
