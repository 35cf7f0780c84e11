"""A non-editable install that works away from the checkout: ``pip install`` of the package
into a fresh virtual environment, then ``minituner runs`` and ``minituner complete`` from another
directory, with MINITUNER_DATA (or --data) pointing at the checkout's precomputed/, and
without it: one ``error:`` line, exit status 2.

The package is built from a copy of pyproject.toml, README.md and minituner/ (a build in the
checkout would write build/ into it). Its dependencies (torch, numpy, safetensors) are those
of the interpreter running the tests, put on the venv's path by a .pth file *after* the
venv's own site-packages; that directory also holds this checkout's editable install, whose
.pth is not processed from there, and ``test_the_installed_copy_is_imported`` checks that
the venv's copy is the one imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import safetensors
import torch

from minituner import paths
from minituner.cli import main

slow = pytest.mark.slow  # a venv, a pip install and a few CLI runs: a minute or two

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "precomputed"
SHIPPED_RUN = "0e9eca154689"  # lora r=8 a=16 q,v, seed 0 (also used by test_cli_runs)
PROMPT = "He __ to school yesterday."


def _site_packages_of(module) -> str:
    return str(Path(module.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with minituner installed from a copy of the sources (not editable)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "minituner", src / "minituner", ignore=shutil.ignore_patterns("__pycache__")
    )
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    deps = dict.fromkeys(_site_packages_of(m) for m in (torch, numpy, safetensors))
    (Path(purelib) / "_minituner_test_deps.pth").write_text("\n".join(deps) + "\n")
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-input", "-q", str(src)],
        capture_output=True, text=True, timeout=600, cwd=root,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return env_dir


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory away from the checkout, with an empty user cache."""
    (tmp_path / "cwd").mkdir()
    return tmp_path


def run(venv: Path, where: Path, *args: str, data: str | None = None, module: bool = False):
    env = {k: v for k, v in os.environ.items() if k not in ("MINITUNER_DATA", "PYTHONPATH")}
    env["MINITUNER_CACHE"] = str(where / "cache")
    if data is not None:
        env["MINITUNER_DATA"] = data
    cmd = [str(venv / "bin" / "python"), "-m", "minituner"] if module else [
        str(venv / "bin" / "minituner")]  # fmt: skip
    return subprocess.run(
        cmd + list(args), cwd=where / "cwd", env=env, capture_output=True, text=True, timeout=300
    )


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@slow
def test_the_installed_copy_is_imported(venv, elsewhere):
    code = (
        "import minituner, minituner.paths as p; "
        "print(minituner.__file__); print(p.CHECKOUT_DATA.exists()); "
        "print(all(hasattr(minituner, n) for n in minituner.__all__))"
    )
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=elsewhere / "cwd", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    file, has_checkout_data, exports = r.stdout.split()
    assert Path(file).is_relative_to(venv) and Path(file).name == "__init__.py"
    assert has_checkout_data == "False"  # no precomputed/ beside the installed package
    assert exports == "True"


@slow
def test_runs_lists_the_shipped_runs_with_minituner_data(venv, elsewhere):
    r = run(venv, elsewhere, "runs", data=str(DATA))
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith(SHIPPED_RUN)]
    assert len(rows) == 1 and "shipped" in rows[0], r.stdout
    shipped = sorted(p.name for p in (DATA / "runs").iterdir() if not p.name.startswith("."))
    assert r.stdout.count(" shipped ") == len(shipped)


@slow
def test_complete_with_minituner_data(venv, elsewhere):
    r = run(venv, elsewhere, "complete", "--run", SHIPPED_RUN, PROMPT, data=str(DATA))
    assert r.returncode == 0, r.stderr
    assert f"prompt: {PROMPT}" in r.stdout
    tuned = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("fine-tuned"))
    assert "-> 'went'" in tuned and "P(went)=" in tuned, r.stdout


@slow
def test_the_data_option_of_python_m_minituner(venv, elsewhere):
    r = run(venv, elsewhere, "--data", str(DATA), "runs", module=True)
    assert r.returncode == 0, r.stderr
    assert SHIPPED_RUN in r.stdout


@slow
@pytest.mark.parametrize(
    "args", [("runs",), ("complete", "--run", SHIPPED_RUN, PROMPT)], ids=["runs", "complete"]
)
def test_without_data_one_error_line(venv, elsewhere, args):
    line = one_error_line(run(venv, elsewhere, *args))
    assert "MINITUNER_DATA" in line and "--data" in line, line


@slow
def test_a_data_folder_that_is_not_there_is_named(venv, elsewhere):
    missing = elsewhere / "no-such-folder"
    line = one_error_line(run(venv, elsewhere, "runs", data=str(missing)))
    assert "MINITUNER_DATA" in line and str(missing) in line, line
    line = one_error_line(run(venv, elsewhere, "--data", str(missing), "runs"))
    assert "--data" in line and str(missing) in line, line


# ---------------------------------------------------------------- --data, in process
# (the rules of minituner.paths themselves: tests/test_paths.py)
def test_the_data_option_in_process(no_data_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    assert main(["--data", str(tmp_path / "nope"), "runs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data names "), err
    assert paths.data_dir() == DATA  # the option lasted for that command only
    assert main(["--data", str(DATA), "runs"]) == 0
    assert SHIPPED_RUN in capsys.readouterr().out
