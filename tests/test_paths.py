"""Where the library finds its data (minituner.paths): the folder given by --data
(``using_data_dir``), then ``$MINITUNER_DATA``, then the checkout's precomputed/; read at
every call; a folder that is not there, or no folder at all, is a ValueError that says
what to set. (A non-editable install away from the checkout: tests/test_install.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from minituner import paths
from minituner.store.runs import RunStore

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "precomputed"
SHIPPED_RUN = "0e9eca154689"  # lora r=8 a=16 q,v, seed 0


def test_the_checkout_is_the_default(no_data_env):
    assert paths.data_dir() == DATA == paths.CHECKOUT_DATA
    assert paths.runs_dir() == DATA / "runs" and paths.base_dir() == DATA / "base"
    assert paths.experiments_file() == DATA / "experiments.json"
    assert paths.scaling_dir() == DATA / "scaling"


def test_the_env_var_beats_the_checkout_and_is_read_at_call_time(
    no_data_env, monkeypatch, tmp_path
):
    store_before = RunStore()
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert paths.data_dir() == tmp_path.resolve()
    assert RunStore().roots[0] == tmp_path.resolve() / "runs"
    assert store_before.roots[0] == DATA / "runs"


def test_the_cli_choice_beats_the_env_var_for_the_length_of_the_block(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "a"))
    with paths.using_data_dir(tmp_path / "b"):
        assert paths.data_dir() == (tmp_path / "b").resolve()
        with paths.using_data_dir(None):  # None changes nothing
            assert paths.data_dir() == (tmp_path / "b").resolve()
    assert paths.data_dir() == (tmp_path / "a").resolve()


def test_no_data_folder_is_a_clear_error(no_data_env, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "CHECKOUT_DATA", tmp_path / "site-packages" / "precomputed")
    with pytest.raises(ValueError, match="set MINITUNER_DATA or pass --data"):
        paths.data_dir()
    with pytest.raises(ValueError, match="MINITUNER_DATA"):
        RunStore()
    assert RunStore([tmp_path]).list() == []  # explicit roots need no data folder
    assert not paths.is_shipped(DATA / "runs" / SHIPPED_RUN)


def test_a_missing_folder_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"MINITUNER_DATA names .*nope, which is not a directory"):
        paths.data_dir()


# ---------------------------------------------------------------- more of the rules
def test_an_empty_env_var_counts_as_unset(no_data_env, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, "")
    assert paths.data_dir() == paths.CHECKOUT_DATA == DATA


def test_a_relative_or_home_folder_is_made_absolute(no_data_env, monkeypatch, tmp_path):
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(paths.ENV_VAR, "d")
    assert paths.data_dir() == tmp_path.resolve() / "d"
    assert paths.data_dir().is_absolute()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(paths.ENV_VAR, "~/d")
    assert paths.data_dir() == tmp_path.resolve() / "d"
    monkeypatch.chdir(REPO)
    with paths.using_data_dir("~/d"):
        assert paths.data_dir() == tmp_path.resolve() / "d"


def test_a_file_is_not_a_data_folder(monkeypatch, tmp_path):
    f = tmp_path / "data.json"
    f.write_text("{}")
    monkeypatch.setenv(paths.ENV_VAR, str(f))
    with pytest.raises(ValueError, match=r"MINITUNER_DATA names .*data\.json, which is not a dir"):
        paths.data_dir()
    with paths.using_data_dir(f), pytest.raises(ValueError, match=r"^--data names .*data\.json"):
        paths.data_dir()


def test_the_chosen_folder_is_given_back_when_the_block_raises(no_data_env, tmp_path):
    with pytest.raises(RuntimeError), paths.using_data_dir(tmp_path):
        assert paths.data_dir() == tmp_path.resolve()
        raise RuntimeError("a command failed")
    assert paths.data_dir() == DATA


def test_every_data_file_is_under_the_chosen_folder(tmp_path):
    with paths.using_data_dir(tmp_path):
        root = tmp_path.resolve()
        assert paths.base_dir() == root / "base"
        assert paths.runs_dir() == root / "runs"
        assert paths.experiments_file() == root / "experiments.json"
        assert paths.experiments_readme() == root / "README.md"
        assert paths.scaling_dir() == root / "scaling"


def test_a_shipped_run_is_one_directly_under_the_data_folders_runs(no_data_env, tmp_path):
    assert paths.is_shipped(DATA / "runs" / SHIPPED_RUN)
    assert paths.is_shipped(str(DATA / "runs" / SHIPPED_RUN))
    assert not paths.is_shipped(tmp_path / "runs" / SHIPPED_RUN)  # the user's cache, say
    assert not paths.is_shipped(DATA / "runs")
    assert not paths.is_shipped(DATA / "runs" / SHIPPED_RUN / "config.json")
    with paths.using_data_dir(tmp_path):  # another data folder: its runs are the shipped ones
        assert paths.is_shipped(tmp_path.resolve() / "runs" / SHIPPED_RUN)
        assert not paths.is_shipped(DATA / "runs" / SHIPPED_RUN)
