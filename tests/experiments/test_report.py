"""The experiments' README blocks (minituner.experiments.report): precomputed/README.md
is the output of write_outputs, and the findings table has a row per result."""

from __future__ import annotations

from minituner.experiments.plan import RANKS, REGENERATE, TARGET_SETS
from minituner.experiments.report import findings_table, write_outputs
from minituner.paths import experiments_file, experiments_readme


def test_readme_is_the_output_of_write_outputs(shipped, tmp_path):
    readme = experiments_readme().read_text(encoding="utf-8")
    assert findings_table(shipped) in readme
    assert REGENERATE in readme
    write_outputs(shipped, path=tmp_path / "experiments.json", readme=tmp_path / "README.md")
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == readme
    # the file written is the shipped one, byte for byte
    assert (tmp_path / "experiments.json").read_text(encoding="utf-8") == (
        experiments_file().read_text(encoding="utf-8")
    )


def test_findings_table_has_one_row_per_result(shipped):
    rows = findings_table(shipped).splitlines()
    assert len(rows) == 2 + len(RANKS) + 1 + len(TARGET_SETS) + 1
    assert rows[-1].startswith("| QLoRA | qlora | 8 | q,v | ")
