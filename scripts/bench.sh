#!/usr/bin/env bash
# Throughput benchmarks (release build): forward → null / file, memory vs disk buffers, with
# medians of several runs (scripts/bench.py), then the pattern-matching criterion benchmark.
# Usage: scripts/bench.sh [bench.py args, e.g. --records 500000 --runs 5 --only null]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin firelane
python3 scripts/bench.py "$@"
if [ -z "${SKIP_CRITERION:-}" ]; then
  cargo bench --locked --bench patterns -- --warm-up-time 1 --measurement-time 3
fi
