#!/usr/bin/env bash
# Install, then run the whole test suite (unit + integration with real workers on a real server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check core4celery tests examples bench
.venv/bin/python -m mypy core4celery
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
