"""The command line's parser and error policy (minituner.cli): one ``COMMANDS`` table is
what the parser offers; every failure is one ``error:`` line and exit status 2 (130 for
Ctrl-C, at any moment, start-up included), no traceback; $MINITUNER_TORCH_THREADS is
honoured by every command and a bad value is one line too."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from cli_checks import assert_user_error, run_main
from cli_util import REPO_ROOT

from minituner import cli


def test_the_parser_offers_the_commands_of_the_table(capsys):
    assert [c.name for c in cli.COMMANDS] == [
        "pretrain", "finetune", "runs", "complete", "export", "precompute", "subspace"
    ]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for c in cli.COMMANDS:
        assert c.name in out and c.help.split()[0] in out
        assert cli.build_parser().parse_args(_minimal(c.name)).func is c.run


def _minimal(name: str) -> list[str]:
    extra = {"complete": ["P", "--run", "x"], "export": ["x", "out"]}
    return [name, *extra.get(name, [])]


def test_method_choices_and_dropout_default_come_from_their_owners():
    from minituner.finetune.config import FinetuneConfig
    from minituner.methods import METHODS

    a = cli.build_parser().parse_args(["finetune"])
    assert a.dropout == FinetuneConfig().dropout and a.method == FinetuneConfig().method
    for m in METHODS:
        assert cli.build_parser().parse_args(["finetune", "--method", m]).method == m


def test_unknown_command(capsys):
    assert_user_error(run_main(capsys, "frobnicate"), "frobnicate")
    assert_user_error(run_main(capsys))  # no command at all


# ---------------------------------------------------------------- Ctrl-C and surprises


def test_ctrl_c_while_building_the_parser(capsys, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupt)
    assert_user_error(run_main(capsys, "runs"), "interrupted", code=130)


def test_ctrl_c_while_loading_the_base_model(capsys, monkeypatch, no_finetune, tmp_path):
    from minituner.finetune import result

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(result, "load_base", interrupt)
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path))
    r = run_main(capsys, "finetune", "--device", "cpu", "--force")
    assert_user_error(r, "interrupted", code=130)


CTRL_C_AT_IMPORT = """
import sys

class CtrlC:  # the user presses Ctrl-C while torch is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["minituner", "runs"]
"""
START_UPS = {
    "python -m minituner": "import runpy\nrunpy.run_module('minituner', run_name='__main__')",
    "console script": "from minituner.cli import main\nsys.exit(main())",
}


@pytest.mark.parametrize("start", START_UPS.values(), ids=list(START_UPS))
def test_ctrl_c_during_start_up_is_one_line(start):
    r = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_IMPORT + start],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_user_error(r, "interrupted", code=130)


def test_an_unexpected_error_is_one_line_too(capsys, monkeypatch):
    from minituner.minigpt import trainutil

    def broken(device):
        raise RuntimeError("something deep\nbroke")

    monkeypatch.setattr(trainutil, "resolve_device", broken)
    monkeypatch.delenv("MINITUNER_DEBUG", raising=False)
    r = run_main(capsys, "finetune", "--no-save")
    assert_user_error(r, "RuntimeError", "something deep broke", "MINITUNER_DEBUG")


def test_an_os_error_is_one_line(capsys, monkeypatch):
    from minituner.minigpt import trainutil

    def denied(device):
        raise PermissionError(13, "Permission denied", "/somewhere")

    monkeypatch.setattr(trainutil, "resolve_device", denied)
    assert_user_error(run_main(capsys, "finetune", "--no-save"), "Permission denied")


# ---------------------------------------------------------------- MINITUNER_TORCH_THREADS


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_cli_honours_minituner_torch_threads(capsys, monkeypatch, threads_restored):
    torch.set_num_threads(1)
    monkeypatch.setenv("MINITUNER_TORCH_THREADS", "3")
    run_main(capsys, "finetune", "--device", "mps", "--no-save")  # fails after the threads
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "99999"])
def test_a_bad_thread_count_is_one_line(capsys, monkeypatch, threads_restored, value):
    monkeypatch.setenv("MINITUNER_TORCH_THREADS", value)
    r = run_main(capsys, "finetune", "--device", "mps", "--no-save")
    assert_user_error(r, "MINITUNER_TORCH_THREADS", repr(value))
