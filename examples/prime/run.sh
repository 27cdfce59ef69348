#!/usr/bin/env bash
# Install, start an embedded server and two workers, run the PrimeJob, print the result, stop everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
exec .venv/bin/python -m examples.prime.run "$@"
