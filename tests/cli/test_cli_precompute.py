"""``precompute`` and ``subspace`` (minituner.cli.precompute): the flags reach the
experiments' precompute unchanged, a shard writes no summary and says so, a full run
names the summary it wrote; bad --only / --shard values are one line before any work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from cli_checks import assert_user_error, run_main

from minituner.experiments import run as experiments_run
from minituner.paths import experiments_readme


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """experiments.run.precompute replaced by a recorder: nothing trains."""
    seen: list[dict] = []

    def fake(**kw):
        seen.append(kw)
        return None if kw["shard"] is not None else SimpleNamespace(missing=["a", "b"])

    monkeypatch.setattr(experiments_run, "precompute", fake)
    return seen


def test_a_shard_trains_and_writes_no_summary(capsys, calls):
    r = run_main(capsys, "precompute", "--seeds", "2", "--device", "cpu", "--shard", "1/3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "shard 1/3 trained; no summary written"
    (kw,) = calls
    assert (kw["seeds"], kw["device"], kw["only"], kw["shard"]) == (2, "cpu", None, (1, 3))


def test_a_full_precompute_names_its_summary(capsys, calls):
    r = run_main(capsys, "precompute", "--device", "cpu", "--only", "replay,targets")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {experiments_readme()}; missing runs: 2"
    assert calls[0]["only"] == ("replay", "targets") and calls[0]["seeds"] == 3


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--only", "nope"], ["--only", "'nope'", "rank_sweep"]),
        (["--shard", "3/2"], ["--shard", "0 <= K < N"]),
        (["--seeds", "0"], ["--seeds", "at least 1"]),
        (["--device", "tpu9"], ["'tpu9'"]),
    ],
)
def test_bad_values_are_one_line_before_any_work(capsys, calls, flags, needles):
    assert_user_error(run_main(capsys, "precompute", *flags), *needles)
    assert calls == []


@pytest.mark.parametrize("flags", [["--max-i", "0"], ["--max-j", "x"]])
def test_subspace_refuses_bad_sizes(capsys, flags):
    assert_user_error(run_main(capsys, "subspace", *flags), flags[0])


def test_the_cli_command_without_runs_is_one_error_line(tmp_path):
    from cli_util import run_minituner

    proc = run_minituner("--data", str(tmp_path), "subspace")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "subspace.json").exists()
