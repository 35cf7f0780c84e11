"""The README's "Using it on your own model" example runs as written, and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import minituner
from minituner import LoRALinear, NF4Linear

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using it on your own model"


def readme_example(text: str) -> str:
    """The first ```python block of the section (ValueError when there is none)."""
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"README.md has no section {SECTION!r}")
    end = text.find("\n## ", start + 1)
    m = re.search(r"```python\n(.*?)\n```", text[start : end if end > 0 else None], re.S)
    if m is None:
        raise ValueError(f"{SECTION!r} has no python block")
    return m.group(1) + "\n"


@pytest.fixture(scope="module")
def example() -> str:
    return readme_example(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ran(example) -> tuple[dict, list[str]]:
    """The namespace the example leaves and the lines it printed."""
    printed: list[str] = []
    ns: dict = {"__name__": "readme_example", "print": lambda *a: printed.append(" ".join(a))}
    with torch.random.fork_rng():  # the example seeds torch; leave other tests' RNG alone
        exec(compile(example, str(README), "exec"), ns)
    return ns, printed


def test_the_example_imports_only_the_public_api(example):
    imported = re.findall(r"^from minituner import (.+)$", example, re.M)
    assert imported, "the example should import from minituner"
    names = {n.strip() for line in imported for n in line.split(",")}
    assert names <= set(minituner.__all__), names - set(minituner.__all__)
    assert "minituner." not in example  # no reaching into modules


def test_the_example_is_about_ten_lines_of_work(example):
    code = [ln for ln in example.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(code) <= 30, len(code)


def test_lora_was_trained_merged_and_then_put_on_a_4bit_layer(ran):
    ns, _ = ran
    model = ns["model"]
    assert type(model.value) is nn.Linear and type(model.head) is nn.Linear  # merged back
    assert isinstance(model.query, LoRALinear) and isinstance(model.query.base, NF4Linear)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["query.lora_A", "query.lora_B"]
    # the training step moved the merged weight: W + (alpha/r) B A is not the initial W
    with torch.random.fork_rng():
        torch.manual_seed(0)  # as the example does, just before making its model
        fresh = type(model)()
    assert not torch.equal(fresh.value.weight, model.value.weight)
    assert torch.equal(fresh.head.weight, model.head.weight)  # not a target: untouched


def test_the_printed_nf4_errors_are_small_but_not_zero(ran):
    _, printed = ran
    assert len(printed) == 2, printed
    mean_err = float(re.search(r"mean \|error\| ([0-9.]+)", printed[0]).group(1))
    rel_err = float(re.search(r"relative output error ([0-9.]+)%", printed[1]).group(1))
    # 4 bits on weights of size ~0.1: an error of a few thousandths, a few percent out
    assert 0 < mean_err < 0.02 and 0 < rel_err < 20


def test_the_qlora_model_still_trains(ran):
    model, x = ran[0]["model"], ran[0]["x"]
    model(x).sum().backward()
    assert model.query.lora_B.grad is not None and model.query.lora_B.grad.abs().sum() > 0


def test_a_missing_section_is_an_error():
    with pytest.raises(ValueError, match="no section"):
        readme_example("# minituner\n\n## Quick start\n")
    with pytest.raises(ValueError, match="no python block"):
        readme_example(f"# x\n\n{SECTION}\n\ntext\n\n## Next\n\n```python\npass\n```\n")
