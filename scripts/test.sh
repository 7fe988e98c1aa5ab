#!/usr/bin/env bash
# Install everything the tests need from the pinned files, then run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-test.txt
python -m pip install -q --no-deps -r requirements-nodeps.txt
python -m pip install -q --no-deps -e .
bash scripts/install_browser.sh
set +e
python -m pytest -q
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: the suite is broken" >&2
  exit 1
fi
exit "$status"
