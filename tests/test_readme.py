"""The README's generated blocks (base table, findings, claims) match the shipped files."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_generated_blocks_are_current():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -r requirements.txt -e . && streamlit run app/main.py" in readme
    assert "bash scripts/test.sh" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/test.sh" in ci


def test_readme_page_table_links_a_screenshot_of_every_page():
    """Issue 24: the README's table of pages points to a 1280 x 720 screenshot of every
    page of app/main.py (written by tests/e2e/test_layout_browser.py), and each exists."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    main = (ROOT / "app" / "main.py").read_text(encoding="utf-8")
    pages = re.findall(r'url_path="([a-z-]+)"', main)
    assert len(pages) >= 10, pages
    linked = set(re.findall(r"\]\(docs/screenshots/([a-z_]+)\.png\)", readme))
    for url in pages:
        name = url.replace("-", "_")
        assert name in linked, f"the README's page table has no screenshot of /{url}"
    for name in linked:
        assert (ROOT / "docs" / "screenshots" / f"{name}.png").is_file(), name
