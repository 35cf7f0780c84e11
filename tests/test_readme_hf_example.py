"""The README's "Taking your adapter to PEFT and transformers" examples run as written and
print what they say: a minituner adapter and PEFT agree on LLaMA's logits (merged too), and
an exported shipped run answers through plain transformers + PEFT as `minituner complete`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from cli_util import run_minituner

pytest.importorskip("peft")
pytest.importorskip("transformers")

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Taking your adapter to PEFT and transformers"
RUN = "0e9eca154689"


def section_blocks(text: str) -> list[str]:
    """The ```python blocks of the section (ValueError when it or they are missing)."""
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"README.md has no section {SECTION!r}")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)\n```", text[start : end if end > 0 else None], re.S)
    if len(blocks) != 2:
        raise ValueError(f"{SECTION!r} should hold two python blocks, not {len(blocks)}")
    return [b + "\n" for b in blocks]


def run_block(code: str) -> list[str]:
    printed: list[str] = []
    ns = {
        "__name__": "readme_hf_example",
        "print": lambda *a: printed.append(" ".join(map(str, a))),
    }
    with torch.random.fork_rng():  # the example seeds torch; leave other tests' RNG alone
        exec(compile(code, str(README), "exec"), ns)
    return printed


@pytest.fixture(scope="module")
def blocks() -> list[str]:
    return section_blocks(README.read_text(encoding="utf-8"))


def test_adapters_cross_to_peft_and_back_with_the_same_logits(blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes ./llama-lora
    printed = run_block(blocks[0])
    assert (tmp_path / "llama-lora" / "adapter_model.safetensors").exists()
    unmerged = float(re.search(r"largest logit difference: (\S+)", printed[0]).group(1))
    merged = float(re.search(r"against PEFT's merge: (\S+)", printed[1]).group(1))
    assert unmerged <= 1e-6 and merged <= 1e-6


def test_an_exported_run_answers_in_transformers_as_complete_does(blocks, tmp_path, monkeypatch):
    from minituner.finetune.result import load_base
    from minituner.minigpt.evaluate import complete
    from minituner.store.runs import RunStore

    assert f"minituner export {RUN} exported" in blocks[1]
    done = run_minituner("export", RUN, str(tmp_path / "exported"), timeout=300)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(tmp_path)
    printed = run_block(blocks[1])
    prompts = re.search(r"prompts = \[(.*?)\]", blocks[1]).group(1)
    prompts = [p.removesuffix(" =") for p in re.findall(r'"([^"]+)"', prompts)]
    base = load_base()
    tuned = RunStore().load_model(RunStore().get(RUN), base)
    expected = [complete(tuned, base.tok, p) for p in prompts]
    assert printed == [str(expected)]
    assert f"# {expected}" in blocks[1]  # the comment shows what it prints


def test_a_missing_section_or_block_is_an_error():
    with pytest.raises(ValueError, match="no section"):
        section_blocks("# minituner\n\n## Quick start\n")
    with pytest.raises(ValueError, match="two python blocks, not 1"):
        section_blocks(f"# x\n\n{SECTION}\n\n```python\npass\n```\n\n## Next\n")
