"""benchmarks/bench_gemm_order.py: the forms it times compute the products they name (so a
ratio compares like with like), its JSON's fields, and clear errors for bad arguments."""

from __future__ import annotations

import json

import pytest
import torch
from bench_util import load_benchmark


def _bench():
    return load_benchmark("bench_gemm_order")


def test_each_node_form_computes_the_same_product_as_the_two_orders_in_float64():
    bench = _bench()
    cases = bench.node_cases(12, 10, 6, 3, torch.device("cpu"), torch.float64)
    fwd, bwd = cases["forward"], cases["backward"]
    # the two orders are x Wᵀ + hs Bᵀ, whichever GEMM writes first
    torch.testing.assert_close(fwd["lora_first"](), fwd["base_first"]())
    torch.testing.assert_close(fwd["residual"](), fwd["add"]())
    torch.testing.assert_close(bwd["lora_first"](), bwd["base_first"]())
    assert not torch.allclose(fwd["lora_first"](), fwd["base"]())  # the LoRA term is there
    # the LoRA product inside the base GEMM's K: the same sums, one GEMM
    torch.testing.assert_close(fwd["kcat"](), fwd["lora_first"]())
    torch.testing.assert_close(bwd["kcat"](), bwd["lora_first"]())
    torch.testing.assert_close(fwd["strided"](), fwd["base"]())
    torch.testing.assert_close(bwd["strided"](), bwd["base"]())
    torch.testing.assert_close(fwd["swapped"]().t(), fwd["base"]())
    torch.testing.assert_close(bwd["swapped"]().t(), bwd["base"]())
    assert fwd["base"]().shape == (12, 10) and bwd["base"]().shape == (12, 6)


def test_qkv_one_gemm_equals_the_three_products():
    bench = _bench()
    cases = bench.qkv_cases(5, 4, torch.device("cpu"), torch.float64)
    three = torch.cat(cases["forward"]["base"](), 1)  # (N, 3C)
    torch.testing.assert_close(cases["forward"]["one_gemm"](), three)
    torch.testing.assert_close(cases["backward"]["one_gemm"](), cases["backward"]["base"]())


def test_gate_up_in_one_gemm_equals_the_two_products():
    bench = _bench()
    cases = bench.pair_cases(5, 4, 6, torch.device("cpu"), torch.float64)
    two = torch.cat(cases["forward"]["base"](), 1)  # (N, 2I)
    torch.testing.assert_close(cases["forward"]["one_gemm"](), two)
    torch.testing.assert_close(cases["forward"]["swapped"]().t(), two)
    torch.testing.assert_close(cases["backward"]["one_gemm"](), cases["backward"]["base"]())


def test_the_json_has_every_form_against_the_base_gemm(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "gemm.json"
    argv = [
        "--tokens",
        "8",
        "--shapes",
        "12x6",
        "--qkv-hidden",
        "4",
        "--calls",
        "1",
        "--pair",
        "4x6",
    ]
    assert bench.main([*argv, "--repeats", "1", "--dtype", "float32", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["shape"], r["direction"]): r for r in data["rows"]}
    assert set(rows) == {
        ("12x6 r=8", "forward"),
        ("12x6 r=8", "backward"),
        ("qkv 4", "forward"),
        ("qkv 4", "backward"),
        ("gate,up 4x6", "forward"),
        ("gate,up 4x6", "backward"),
    }
    fwd = rows[("12x6 r=8", "forward")]
    assert set(fwd["seconds"]) == {
        *(
            "base",
            "badd",
            "lora_first",
            "base_first",
            "residual",
            "add",
            "kcat",
            "strided",
            "swapped",
        )
    }
    assert fwd["over_base"]["base"] == 1.0
    assert "ratio to the beta = 0 base GEMM" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shapes", "4096x"], "expected OUTxIN"),
        (["--shapes", "0x4096"], "expected OUTxIN"),
        (["--r", "0"], "must be positive"),
        (["--r", "8", "--pad", "4"], "must be at least --r"),
        (["--pair", "4096"], "expected OUTxIN"),
    ],
)
def test_bad_arguments_get_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _bench().main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
