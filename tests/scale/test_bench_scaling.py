"""benchmarks/bench_scaling.py: its CPU/gloo mode with 2 processes on the tiny Llama and
MiniGPT (losses equal to one process with gradient accumulation, the JSON's fields), and
the environment it builds for its child processes (NCCL_NVLS_ENABLE=0)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_scaling", ROOT / "benchmarks" / "bench_scaling.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_scaling", mod)  # its dataclass looks its module up
    spec.loader.exec_module(sys.modules["bench_scaling"])
    return sys.modules["bench_scaling"]


def test_child_env_turns_nvlink_multicast_off_whatever_the_caller_says():
    bench = _bench()
    env = bench.child_env({"NCCL_NVLS_ENABLE": "1", "PATH": "/bin"}, device="cuda")
    assert env["NCCL_NVLS_ENABLE"] == "0"
    assert env["PATH"] == "/bin"
    assert str(ROOT) in env["PYTHONPATH"].split(":")
    assert bench.child_env({}, device="cpu", threads=3)["OMP_NUM_THREADS"] == "3"


def test_help_says_nvlink_multicast_is_off(capsys):
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    assert "NCCL_NVLS_ENABLE=0" in capsys.readouterr().out


def test_torchrun_command_and_nproc():
    bench = _bench()
    args = bench.parse_args(["--device", "cpu", "--shape", "tiny"])
    cmd = bench.torchrun_command(2, ["llama", "minigpt"], [1], Path("o.json"), args)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=2" in cmd
    assert cmd[cmd.index("--worker") + 1] == "llama,minigpt"
    assert bench.parse_nproc("2", "cpu") == [1, 2]  # the one-process reference always runs
    assert bench.parse_nproc("1,4,2,2", "cpu") == [1, 2, 4]
    with pytest.raises(ValueError):
        bench.parse_nproc("0", "cpu")


def test_losses_equal_sees_a_difference():
    bench = _bench()
    assert bench.losses_equal([2.0, 1.5], [2.0, 1.5], rtol=1e-5)["equal"]
    diff = bench.losses_equal([2.0, 1.5], [2.0, 1.5001], rtol=1e-5)
    assert not diff["equal"] and diff["max_rel_diff"] == pytest.approx(1e-4 / 1.5001, rel=1e-3)
    assert not bench.losses_equal([2.0], [2.0, 1.5], rtol=1e-5)["equal"]


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX")
def test_two_gloo_processes_on_the_cpu(tmp_path):
    bench = _bench()
    out = tmp_path / "scaling.json"
    argv = ["--device", "cpu", "--shape", "tiny", "--nproc", "1,2", "--steps", "2",
            "--warmup", "1", "--minigpt-batch", "4", "--out", str(out)]  # fmt: skip
    bench.main(argv)
    res = json.loads(out.read_text())
    assert res["nproc"] == [1, 2] and res["not_run"] == []
    assert res["child_env_set"] == {"NCCL_NVLS_ENABLE": "0"}
    for launch in res["launches"].values():  # what the child processes saw
        assert launch["child_env"]["NCCL_NVLS_ENABLE"] == "0"
    assert res["launches"]["2"]["world"] == 2 and res["launches"]["2"]["backend"] == "gloo"
    for model in ("llama", "minigpt"):
        m = res["models"][model]
        one, two = m["by_nproc"]["1"]["runs"], m["by_nproc"]["2"]["runs"]
        assert set(one) == {"1", "2"} and set(two) == {"1"}
        # two processes and one process with 2 micro-batches share the global batch
        assert two["1"]["tokens_per_step"] == one["2"]["tokens_per_step"]
        if model == "llama":  # fixed length; MiniGPT pads each micro-batch to its longest
            assert two["1"]["tokens_per_step"] == 2 * one["1"]["tokens_per_step"] == 2 * 32
        ref, ddp = one["2"]["losses"], two["1"]["losses"]
        assert len(ddp) == 3
        assert torch.allclose(torch.tensor(ddp), torch.tensor(ref), rtol=1e-5, atol=1e-6)
        # the one-process run at half the batch is a different curve after the first step
        assert one["1"]["losses"] != ref
        row = m["scaling"]["2"]
        assert row["losses_vs_accumulation"]["equal"] is True
        assert row["efficiency"] == pytest.approx(
            two["1"]["tokens_per_s"] / (2 * one["1"]["tokens_per_s"])
        )
        for key in ("tokens_per_s_1", "tokens_per_s_n", "grad_allreduce_s"):
            assert row[key] > 0
        assert two["1"]["peak_bytes_per_rank"] == [None, None]  # no peak on the CPU
        assert two["1"]["trainable_params"] == one["1"]["trainable_params"] > 0
