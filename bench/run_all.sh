#!/usr/bin/env bash
# Every benchmark with its default sizes, one after another (about 20 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for bench in throughput latency max_parallel backlog scaling recovery idle; do
  echo "== $bench"
  .venv/bin/python -m "bench.$bench"
done
