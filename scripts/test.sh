#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the test peers into .venv (moto, the
# local AWS API server, and fluent-logger, a third-party forward client), starts moto on a
# free loopback port, runs every cargo test against it, and stops moto again.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FIRELANE_VENV:-.venv}
if [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import fluent.sender' 2>/dev/null; then
  echo "==> installing moto and fluent-logger into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' 'fluent-logger==0.11.1'
fi

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
LOG=$(mktemp -t moto.XXXXXX.log)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
MOTO_PID=$!
cleanup() { kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for _ in $(seq 1 150); do
  kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto failed to start:"; cat "$LOG"; exit 1; }
  if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/moto-api/', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.2
done
kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto exited:"; cat "$LOG"; exit 1; }
echo "==> moto listening on 127.0.0.1:$PORT"

export FIRELANE_TEST_AWS_ENDPOINT="http://127.0.0.1:$PORT"
export FIRELANE_TEST_PYTHON="$PWD/$VENV/bin/python"
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true

cargo test --locked "$@"
