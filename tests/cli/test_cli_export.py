"""`minituner export RUN DIR --format peft|merged` (issue 26): a shipped run, exported,
loads in plain transformers + PEFT and answers the held-out irregular prompts as
`minituner complete` does; refusals are one `error:` line and write nothing."""

from __future__ import annotations

import re

import pytest
import torch
from cli_util import run_minituner

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from peft import PeftModel  # noqa: E402

from minituner.finetune.result import load_base  # noqa: E402
from minituner.minigpt.corpus import cloze_input  # noqa: E402
from minituner.minigpt.evaluate import complete, greedy_answers  # noqa: E402
from minituner.paths import runs_dir  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

LORA, QLORA, FULL, FIGURES_ONLY = "0e9eca154689", "5cb4a2f74a31", "1f93a78d24f8", "0438af164dda"
PROMPT = "He __ to school yesterday."


@pytest.fixture(scope="module")
def shipped():
    return load_base()


def hf_answers(folder, model, prompts: list[str]) -> list[str]:
    """Plain transformers: the exported tokenizer (AutoTokenizer, left padding) and
    ``model.generate`` (greedy: the exported generation config) on one batch."""
    tok = transformers.AutoTokenizer.from_pretrained(folder / "base", trust_remote_code=True)
    enc = tok([cloze_input(p) for p in prompts], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=12)
    new = out[:, enc["input_ids"].shape[1] :]
    return [a.split("\n", 1)[0].strip() for a in tok.batch_decode(new, skip_special_tokens=False)]


def mtimes(run_id: str) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (runs_dir() / run_id).iterdir()}


@pytest.mark.parametrize("run_id", [LORA, QLORA])
def test_an_exported_run_answers_the_held_out_prompts_as_complete_does(tmp_path, shipped, run_id):
    base = shipped
    before = mtimes(run_id)
    done = run_minituner("export", run_id, str(tmp_path / "out"), "--format", "peft", timeout=300)
    assert done.returncode == 0, done.stderr
    assert mtimes(run_id) == before  # the shipped run is only read
    folder = tmp_path / "out"
    assert {p.name for p in (folder / "adapter").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (folder / "base").iterdir()
    }
    # plain transformers: the model class comes from the folder (trust_remote_code)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder / "base", trust_remote_code=True)
    tuned = PeftModel.from_pretrained(hf, folder / "adapter").eval()
    ours = RunStore().load_model(RunStore().get(run_id), base)
    prompts = [e.prompt for e in base.corpus.finetune_test]  # the held-out irregular prompts
    theirs = hf_answers(folder, tuned, prompts)
    expected = greedy_answers(ours, base.tok, prompts)  # what `complete` runs, batched
    assert [complete(ours, base.tok, p) for p in prompts[::30]] == expected[::30]
    assert theirs == expected
    assert sum(a == e.answer for a, e in zip(theirs, base.corpus.finetune_test, strict=True)) > 200
    # ... and what the command itself prints
    shown = run_minituner("complete", "--run", run_id, PROMPT)
    assert shown.returncode == 0, shown.stderr
    printed = re.search(r"fine-tuned\s+-> '([^']*)'", shown.stdout).group(1)
    assert printed == hf_answers(folder, tuned, [PROMPT])[0]  # one prompt: no padding


def test_merged_export_of_a_full_fine_tune_computes_the_run_s_logits(tmp_path, shipped):
    base = shipped
    done = run_minituner("export", FULL, str(tmp_path / "m"), "--format", "merged", timeout=300)
    assert done.returncode == 0, done.stderr
    import minituner.hf  # noqa: F401  (registers MiniGPT: no remote code needed)

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ours = RunStore().load_model(RunStore().get(FULL), base)
    x = torch.tensor([[0] + base.tok.encode(cloze_input(PROMPT))])
    torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([FULL, "--format", "peft"], ["full fine-tune", "--format merged"]),
        ([FIGURES_ONLY, "--format", "merged"], ["figures only"]),
        (["../x"], ["not a run id"]),
        (["000000000000"], ["no run 000000000000"]),
        ([LORA, "--format", "onnx"], ["invalid choice", "'onnx'"]),
    ],
)
def test_a_refused_export_is_one_error_line_and_writes_nothing(tmp_path, args, words):
    out = tmp_path / "out"
    done = run_minituner("export", args[0], str(out), *args[1:])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()


def test_an_export_never_writes_into_a_folder_that_holds_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = run_minituner("export", LORA, str(out))
    assert done.returncode == 2 and "not an empty folder" in done.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_without_transformers_the_command_says_how_to_install_it(tmp_path):
    fake = tmp_path / "site" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(  # as if it were not installed
        "raise ModuleNotFoundError(\"No module named 'transformers'\", name='transformers')\n"
    )
    done = run_minituner(
        "export", LORA, str(tmp_path / "out"), env={"PYTHONPATH": str(fake.parent)}
    )
    assert done.returncode == 2
    assert "pip install 'minituner[hf]'" in done.stderr and not (tmp_path / "out").exists()
