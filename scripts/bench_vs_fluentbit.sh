#!/usr/bin/env bash
# Side-by-side benchmark of firelane and Fluent Bit on the same forward load
# (scripts/bench_vs_fluentbit.py): builds the release binary, makes sure the Python venv with
# moto (the local S3 / CloudWatch Logs server) exists, as scripts/test.sh does, then runs the
# harness with that venv's Python. Fluent Bit is taken from PATH; without it only firelane runs.
# Usage: scripts/bench_vs_fluentbit.sh [--records N] [--runs R] [--only NAME,...] [--skip-memory] …
# Env: FIRELANE_VENV (default .venv) — where moto lives.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FIRELANE_VENV:-.venv}
if [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import boto3' 2>/dev/null; then
  echo "==> installing moto into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'moto[server]==5.2.5' 'fluent-logger==0.11.1'
fi
cargo build --release --locked --bin firelane
export FIRELANE_VENV="$VENV"
exec "$VENV/bin/python" scripts/bench_vs_fluentbit.py --moto-server "$VENV/bin/moto_server" "$@"
