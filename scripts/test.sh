#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the system packages the build and the
# test peers need when they are missing (Debian/Ubuntu: a C compiler for ring and zstd-sys,
# python3-venv for the virtualenv, chromium for the status page test), installs the test peers into .venv (moto, the local AWS
# API server, and fluent-logger, a third-party forward client), starts moto on a free loopback
# port, runs every cargo test against it (all test binaries, even after a failure), and stops
# moto again.
# Usage: scripts/test.sh [extra cargo test args]
# Env: FIRELANE_VENV (default .venv) — where the Python peers live.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FIRELANE_VENV:-.venv}
venv_ready() { [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import fluent.sender' 2>/dev/null; }

# --- system packages -------------------------------------------------------------------
# Detect first; install only what is missing, and only with apt-get as root.
missing=()
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  missing+=(gcc) # ring and zstd-sys compile C code (build scripts call `cc`)
fi
# Debian's python3 cannot make a virtualenv with pip without python3-venv: try one.
if ! venv_ready; then
  probe=$(mktemp -d)
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv "$probe/v" >/dev/null 2>&1 || [ ! -x "$probe/v/bin/pip" ]; then
    missing+=(python3-venv)
  fi
  rm -rf "$probe"
fi
# tests/status_page.rs renders the admin status page in a real headless browser: Debian's
# `chromium` (or FIRELANE_TEST_CHROMIUM pointing at one).
if [ -z "${FIRELANE_TEST_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]} (a C compiler / Python 3 with venv and ensurepip / chromium); install them with your package manager and rerun" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "       run as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
    echo "       (or: sudo $0 once, then run it as yourself)" >&2
    exit 1
  fi
  echo "==> installing system packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo is not on PATH (install Rust with rustup: https://rustup.rs)" >&2; exit 1; }

# --- Python test peers -------------------------------------------------------------------
if ! venv_ready; then
  echo "==> installing moto and fluent-logger into $VENV"
  # Re-running venv on a half-made one (ensurepip failed before) adds the missing pip.
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'moto[server]==5.2.5' 'fluent-logger==0.11.1'
fi

# --- moto ------------------------------------------------------------------------------
free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
LOG=$(mktemp -t moto.XXXXXX.log)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
MOTO_PID=$!
cleanup() { kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; rm -f "$LOG"; }
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
case "$VENV" in /*) FIRELANE_TEST_PYTHON="$VENV/bin/python" ;; esac
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true

# --no-fail-fast: a failure in one test binary must not hide the results of the later ones.
cargo test --locked --no-fail-fast "$@"
