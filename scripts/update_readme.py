"""Rewrite the generated blocks of README.md from the shipped files:

* ``base-table``: the base model's figures (scripts/base_table.py);
* ``findings`` and ``claims``: the experiments' table and claims, from
  precomputed/experiments.json (minituner.experiments).

    python scripts/update_readme.py          # rewrite README.md
    python scripts/update_readme.py --check  # exit 1 if README.md is stale (used by a test)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from base_table import BASE, table  # noqa: E402

from minituner.experiments import EXPERIMENTS_FILE, claims_text, findings_table  # noqa: E402


def blocks() -> dict[str, str]:
    base = json.loads((BASE / "metrics.json").read_text(encoding="utf-8"))
    exp = json.loads(EXPERIMENTS_FILE.read_text(encoding="utf-8"))
    return {"base-table": table(base), "findings": findings_table(exp), "claims": claims_text(exp)}


def render(text: str) -> str:
    for name, body in blocks().items():
        pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start/end --> block")
        text = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main() -> int:
    readme = ROOT / "README.md"
    old = readme.read_text(encoding="utf-8")
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            print("README.md is stale: run `python scripts/update_readme.py`")
            return 1
        return 0
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
