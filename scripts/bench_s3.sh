#!/usr/bin/env bash
# Forward → S3 (gzip) throughput of the real binary against a local moto server.
# Usage: scripts/bench_s3.sh [RECORDS] [RECORD_SIZE]     (defaults 200000 and 200)
#   PROFILE=release scripts/bench_s3.sh   uses target/release/firelane (built if missing)
# Prints records/s and MB/s measured from the first record in to the last record sent
# (firelane_output_records_total{result="sent"}), i.e. including the final object upload.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${1:-200000}
SIZE=${2:-200}
PROFILE=${PROFILE:-debug}
COMPRESSION=${COMPRESSION:-gzip}   # none | gzip | zstd
VENV=${FIRELANE_VENV:-.venv}
if [ ! -x "$VENV/bin/moto_server" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' 'fluent-logger==0.11.1'
fi
if [ "$PROFILE" = release ]; then cargo build --locked --release -q; else cargo build --locked -q; fi
BIN=target/$PROFILE/firelane
PY="$VENV/bin/python"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOTO_PORT=$(free_port); FWD_PORT=$(free_port); ADMIN_PORT=$(free_port)
WORK=$(mktemp -d -t firelane-bench.XXXXXX)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
ROUTER_PID=
cleanup() {
  [ -n "$ROUTER_PID" ] && kill "$ROUTER_PID" 2>/dev/null || true
  kill "$MOTO_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

metric() { # metric NAME LABEL_SUBSTRING → summed value (0 if absent)
  "$PY" - "$ADMIN_PORT" "$1" "$2" <<'EOF'
import sys, urllib.request
port, name, label = sys.argv[1:]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
total = 0.0
for line in text.splitlines():
    if line.startswith(name + "{") and label in line:
        total += float(line.rsplit(" ", 1)[1])
print(int(total))
EOF
}

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
for _ in $(seq 1 100); do
  "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
"$PY" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$MOTO_PORT', region_name='us-east-1').create_bucket(Bucket='bench')"

cat >"$WORK/firelane.toml" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[runtime]
data_dir = "$WORK"
memory_limit = "512MiB"
log_level = "warn"
[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:$FWD_PORT"]
[routes.all]
to = ["s3"]
[outputs.s3]
type = "s3"
bucket = "bench"
key = "bench/%Y/%m/%d/%H/{uuid}.json"
compression = "$COMPRESSION"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:$MOTO_PORT"
force_path_style = true
batch = { max_bytes = "8MiB", max_age = "2s" }
buffer = { max_size = "256MiB" }
EOF
"$BIN" run -c "$WORK/firelane.toml" 2>"$WORK/router.log" &
ROUTER_PID=$!
for _ in $(seq 1 100); do
  "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ADMIN_PORT/ready', timeout=1)" 2>/dev/null && break
  sleep 0.1
done

START=$(date +%s.%N)
"$BIN" loadgen --addr "tcp://127.0.0.1:$FWD_PORT" --mode forward --records "$RECORDS" --batch 500 --record-size "$SIZE" >"$WORK/loadgen.txt"
DEADLINE=$(( $(date +%s) + 600 ))
while [ "$(metric firelane_output_records_total 'result="sent"')" -lt "$RECORDS" ]; do
  [ "$(date +%s)" -lt "$DEADLINE" ] || { echo "timed out"; cat "$WORK/router.log"; exit 1; }
  sleep 0.05
done
END=$(date +%s.%N)
IN_BYTES=$(metric firelane_input_bytes_total 'input="fwd"')
OUT_BYTES=$(metric firelane_output_bytes_total 'output="s3"')
OBJECTS=$(metric firelane_output_batches_total 'output="s3"')
"$PY" - "$START" "$END" "$RECORDS" "$IN_BYTES" "$OUT_BYTES" "$OBJECTS" "$PROFILE" "$SIZE" "$COMPRESSION" <<'EOF'
import sys
start, end, n, inb, outb, objs, profile, size, comp = sys.argv[1:]
secs = float(end) - float(start)
n, inb, outb = int(n), int(inb), int(outb)
print(f"profile={profile} records={n} record_size≈{size} B  elapsed={secs:.2f} s")
print(f"throughput: {n/secs:,.0f} records/s, {inb/secs/1e6:.1f} MB/s in (forward bytes), "
      f"{outb/secs/1e6:.1f} MB/s to S3 {comp} ({objs} objects, ratio {inb/max(outb,1):.1f}x)")
EOF
cat "$WORK/loadgen.txt"
