"""minituner.hf.export: a QLoRA run's exported base is its 4-bit base dequantized (so the
PEFT model computes the run's logits), and nothing is written over existing files.
(`minituner export` itself, end to end: tests/cli/test_cli_export.py.)"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from minituner.finetune.result import load_base  # noqa: E402
from minituner.hf.export import dequantized_base, export_model, export_run  # noqa: E402
from minituner.lora.inject import add_lora  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

QLORA, LORA = "5cb4a2f74a31", "0e9eca154689"


@pytest.fixture(scope="module")
def shipped():
    return load_base()


def test_a_qlora_export_computes_the_run_s_logits(tmp_path, shipped):
    store = RunStore()
    info = store.get(QLORA)
    written = export_run(info, shipped, tmp_path / "q")
    hf = transformers.AutoModelForCausalLM.from_pretrained(written["base"])
    theirs = peft.PeftModel.from_pretrained(hf, written["adapter"]).eval()
    ours = store.load_model(info, shipped)
    x = torch.randint(
        0, shipped.tok.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=0)
    # the 4-bit base differs from the float one: the export took the dequantized weights
    base_w = shipped.model.blocks[0].attn.k_proj.weight
    assert not torch.equal(hf.blocks[0].attn.k_proj.weight, base_w)
    assert torch.equal(hf.lm_head.weight, shipped.model.lm_head.weight)  # never quantized


def test_a_lora_run_s_base_is_the_shipped_base_unchanged(shipped):
    tuned = RunStore().load_model(RunStore().get(LORA), shipped)
    plain = dequantized_base(tuned, shipped)
    for key, t in shipped.model.state_dict().items():
        assert torch.equal(plain.state_dict()[key], t), key


def test_nothing_is_written_over_files_or_from_a_model_with_lora(tmp_path, shipped):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(ValueError, match="not an empty folder"):
        export_model(shipped.model, shipped.tok, tmp_path / "full")
    with pytest.raises(ValueError, match="not an empty folder"):
        export_run(RunStore().get(LORA), shipped, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    import copy

    with_lora = copy.deepcopy(shipped.model)
    add_lora(with_lora, ["q"], r=2, alpha=4)
    with pytest.raises(ValueError, match="plain MiniGPT"):
        export_model(with_lora, shipped.tok, tmp_path / "new")
    with pytest.raises(ValueError, match="unknown export format 'gguf'"):
        export_run(RunStore().get(LORA), shipped, tmp_path / "new", format="gguf")
    assert not (tmp_path / "new").exists()
