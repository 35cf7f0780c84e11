#!/usr/bin/env bash
# Install the test dependencies, lint, and run the test suite.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k corpus    # extra arguments go to pytest
# The real-browser tests need Chromium; without it they skip, unless
# MINITUNER_REQUIRE_E2E=1 (as in CI), which makes a missing browser a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -r requirements-test.txt

if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing Debian chromium for the end-to-end tests"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
    else
        echo "note: /usr/bin/chromium is missing and cannot be installed here (needs apt-get and root);" \
            "the e2e tests will skip unless MINITUNER_REQUIRE_E2E=1" >&2
    fi
fi

ruff check .
ruff format --check .

# pytest exits 5 when it collects no tests; under `set -e` that (like any non-zero
# status) fails this script, so an empty or mis-pointed run cannot pass.
python -m pytest "$@"
