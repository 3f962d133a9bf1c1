#!/usr/bin/env python3
"""Throughput harness: runs the release binary against `firelane loadgen` and reports, per
scenario, the median over several runs of records/s, MB/s (forward payload bytes), router CPU
seconds per million records and the router's peak RSS.

A run starts a fresh router (own temp dir, free ports), sends N records with loadgen, waits
until the output has counted every record as sent (so the figure is end to end, not just
ingest), then reads the router's CPU time (/proc/PID/stat) and peak RSS (VmHWM) and stops it.

Usage: scripts/bench.py [--records N] [--runs R] [--only NAME,...] [--binary PATH]
                       [--baseline PATH]   (before / after, runs interleaved)
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCENARIOS = {
    # name: (output table, buffer table, loadgen args)
    "forward-packed→null": ('type = "null"', None, ["--mode", "packed", "--batch", "500"]),
    "forward-packed→file": ('type = "file"\npath = "{dir}/out.jsonl"', None, ["--mode", "packed", "--batch", "500"]),
    "forward-message→null": ('type = "null"', None, ["--mode", "message", "--batch", "500"]),
    "forward-gzip→null": ('type = "null"', None, ["--mode", "compressed", "--batch", "500"]),
    "forward-packed→null disk(fsync=always)": (
        'type = "null"',
        '{ type = "disk", max_size = "4GiB", fsync = "always" }',
        ["--mode", "packed", "--batch", "500"],
    ),
    "forward-packed→null disk(fsync=1s)": (
        'type = "null"',
        '{ type = "disk", max_size = "4GiB", fsync = "1s" }',
        ["--mode", "packed", "--batch", "500"],
    ),
    "forward-packed+ack→null disk(fsync=always)": (
        'type = "null"',
        '{ type = "disk", max_size = "4GiB", fsync = "always" }',
        ["--mode", "packed", "--batch", "500", "--ack", "--connections", "4"],
    ),
    "forward-packed+ack→null memory": ('type = "null"', None, ["--mode", "packed", "--batch", "500", "--ack", "--connections", "4"]),
    # The side-by-side's acks row: one client, ~0.5 MB requests, each sent after the last is acked.
    "forward-packed×1000+ack→null": ('type = "null"', None, ["--mode", "packed", "--batch", "1000", "--ack"]),
}


def config(d, fwd, admin, output, buffer, workers=None):
    out = output.replace("{dir}", d)
    buf = f"buffer = {buffer}\n" if buffer else ""
    threads = f"worker_threads = {workers}\n" if workers else ""
    return f"""
[admin]
listen = "127.0.0.1:{admin}"
[runtime]
{threads}data_dir = "{d}/data"
memory_limit = "256MiB"
log_level = "warn"
[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]
[routes.all]
to = ["sink"]
[outputs.sink]
{out}
{buf}"""


def metric(admin, name, labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(l in line for l in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    return int(m.group(1)) / 1024 if m else float("nan")


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def check_file_output(d, records):
    """For file scenarios: the output holds exactly `records` JSON lines, each an object
    with the fields loadgen sends, so a fast path that loses or garbles records fails the
    run instead of producing a figure."""
    path = os.path.join(d, "out.jsonl")
    if not os.path.exists(path):
        return
    n = 0
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            n += 1
            # Parsing every line would cost more than the run; check a spread of them.
            if i % 997 == 0:
                obj = json.loads(line)
                if not isinstance(obj, dict) or "log" not in obj:
                    raise RuntimeError(f"line {i + 1} of the file output is not a record: {line[:200]!r}")
    if n != records:
        raise RuntimeError(f"file output has {n} lines, expected {records}")


def run_once(binary, name, records, record_size, workers=None):
    output, buffer, lg_args = SCENARIOS[name]
    d = tempfile.mkdtemp(prefix="firelane-bench-")
    try:
        fwd, admin = free_port(), free_port()
        path = os.path.join(d, "bench.toml")
        with open(path, "w") as f:
            f.write(config(d, fwd, admin, output, buffer, workers))
        router = subprocess.Popen([binary, "run", "-c", path], stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "router.log"), "w"))
        try:
            wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200, 20, "ready")
            cpu0 = proc_cpu(router.pid)
            t0 = time.monotonic()
            lg = subprocess.run(
                [binary, "loadgen", "--addr", f"tcp://127.0.0.1:{fwd}", "--records", str(records), "--record-size", str(record_size), *lg_args],
                capture_output=True, text=True, timeout=900,
            )
            if lg.returncode != 0:
                raise RuntimeError(f"loadgen failed: {lg.stderr}")
            wait_for(lambda: metric(admin, "firelane_output_records_total", ['output="sink"', 'result="sent"']) >= records, 900, "delivery")
            elapsed = time.monotonic() - t0
            cpu = proc_cpu(router.pid) - cpu0
            hwm = proc_hwm_mib(router.pid)
            in_bytes = metric(admin, "firelane_input_bytes_total", [])
            check_file_output(d, records)
        finally:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(timeout=60)
            except subprocess.TimeoutExpired:
                router.kill()
        return {
            "rps": records / elapsed,
            "mbps": in_bytes / elapsed / 1e6,
            "cpu_per_m": cpu / records * 1e6,
            "rss": hwm,
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--record-size", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--binary", default="target/release/firelane")
    ap.add_argument(
        "--baseline",
        default="",
        help="another build (e.g. main's) to compare with: its runs alternate with --binary's "
        "so both see the same machine noise; prints before / after per scenario",
    )
    ap.add_argument("--worker-threads", type=int, default=None,
                    help="runtime.worker_threads of --binary's runs (default: the router's own, 1)")
    ap.add_argument("--baseline-worker-threads", type=int, default=None,
                    help="runtime.worker_threads of --baseline's runs (default: --worker-threads); "
                    "with --baseline set to the same binary, compares worker counts")
    a = ap.parse_args()
    base_workers = a.baseline_worker_threads or a.worker_threads
    names = [n for n in SCENARIOS if not a.only or any(o.strip() and o.strip() in n for o in a.only.split(","))]
    print(f"{a.records} records of ~{a.record_size} B, median of {a.runs} runs, {os.cpu_count()} CPUs")
    if a.baseline:
        print(f"before: {a.baseline}; after: {a.binary}")
        print("| scenario | records/s before | after | CPU s / M before | after | after/before | peak RSS MiB before | after |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print(f"| scenario | records/s | MB/s | CPU s / M records | peak RSS MiB |")
        print(f"|---|---:|---:|---:|---:|")
    for name in names:
        if a.baseline:
            before, after = [], []
            for _ in range(a.runs):
                before.append(run_once(a.baseline, name, a.records, a.record_size, base_workers))
                after.append(run_once(a.binary, name, a.records, a.record_size, a.worker_threads))
            b = {k: statistics.median(r[k] for r in before) for k in before[0]}
            f = {k: statistics.median(r[k] for r in after) for k in after[0]}
            print(
                f"| {name} | {b['rps']:,.0f} | {f['rps']:,.0f} | {b['cpu_per_m']:.2f} | {f['cpu_per_m']:.2f} "
                f"| {f['cpu_per_m'] / b['cpu_per_m']:.2f} | {b['rss']:.0f} | {f['rss']:.0f} |",
                flush=True,
            )
            continue
        runs = [run_once(a.binary, name, a.records, a.record_size, a.worker_threads) for _ in range(a.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {med['rps']:,.0f} | {med['mbps']:.1f} | {med['cpu_per_m']:.2f} | {med['rss']:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
