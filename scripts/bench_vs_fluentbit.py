#!/usr/bin/env python3
"""Side-by-side benchmark: Fluent Bit and firelane, one after the other, on the same load.

For every scenario and every run, each router starts fresh (own temp dir, free ports), receives
the same records from `firelane loadgen` over the forward protocol (FireLens-shaped records:
container_id, container_name, source, log; ~480 B each with the default --record-size), and
the harness waits until the output holds every record. It then reads the router's own CPU time
(utime + stime of the whole process, /proc/PID/stat) and peak RSS (VmHWM), stops it, and
checks the output:

- null: the router's own counters say exactly N records in and N out, none failed or dropped;
- file: the JSON lines file has exactly N lines and every line is the record that was sent;
- S3: every object is gzip, decompressed it holds exactly N JSON lines, each the record sent;
- CloudWatch Logs: the log stream holds exactly N events, each the JSON of a record sent.

"The record that was sent" is checked field by field: container_id (64 hex digits, one per
loadgen connection), container_name, source (stdout/stderr), log (exactly --record-size
bytes), the count per connection, and, for records of >= 200 B, that each of the 1024
distinct lines of a connection's pool arrives as many times as it was sent. A run whose
output misses, duplicates or garbles records is FAILED, whatever its speed.

Prints, per scenario, the medians of --runs runs: records/s (first record sent to last one
in the output), CPU-s per 1M records, share of one core (the router's CPU over the whole run;
at a paced rate, over the seconds the load generator was sending), peak RSS, and firelane's
records per CPU-second relative to Fluent Bit.

The memory scenario (firelane only) sends a burst over 8 connections into three outputs
(file, gzip S3 on moto, an HTTP destination that accepts connections and never answers, with
`when_full = "drop_newest"`) under `memory_limit` 32 MiB and 128 MiB, and prints peak RSS
against the limit; file and S3 must hold every record.

Fluent Bit is taken from PATH (or --fluent-bit); without it, the Fluent Bit runs are skipped
with a message and firelane runs alone. S3 and CloudWatch Logs run against a moto server
started on a free loopback port (--moto-server, default $FIRELANE_VENV/bin/moto_server).

Usage: scripts/bench_vs_fluentbit.py [--records N] [--runs R] [--only NAME,...]
       [--burst-records N] [--skip-memory] [--binary PATH] [--fluent-bit PATH]
Use scripts/bench_vs_fluentbit.sh, which builds the release binary and the Python venv first.
"""

import argparse
import collections
import gzip
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port, metric, proc_cpu, proc_hwm_mib, wait_for  # noqa: E402

REGION = "us-east-1"
POOL = 1024  # distinct records per loadgen connection (src/loadgen.rs POOL)
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RunFailed(Exception):
    """A run whose output is wrong or incomplete, or whose router did not finish."""


# --- scenarios ------------------------------------------------------------------------------

PACKED = ["--mode", "packed", "--batch", "1000"]
# One `[tag, time, record]` per socket write: what Docker's fluentd driver (and so FireLens) sends.
MESSAGE = ["--mode", "message", "--batch", "1"]

# name: (loadgen args, sink kind)
SCENARIOS = {
    "PackedForward ×1000 → null": (PACKED, "null"),
    "PackedForward ×1000 + chunk acks → null": (PACKED + ["--ack"], "null"),
    "Message mode (1 event per write) → null": (MESSAGE, "null"),
    "PackedForward ×1000 → file (JSON lines)": (PACKED, "file"),
    "paced 25k records/s (Message mode) → null": (MESSAGE + ["--rate", "25000"], "null"),
    "paced 25k records/s (Message mode) → file": (MESSAGE + ["--rate", "25000"], "file"),
    "paced 25k records/s (Message mode) → gzip → S3 (moto)": (MESSAGE + ["--rate", "25000"], "s3"),
    "PackedForward ×1000 → gzip → S3 (moto)": (PACKED, "s3"),
    "PackedForward ×1000 → CloudWatch Logs (moto)": (PACKED, "cwl"),
}


# --- moto -----------------------------------------------------------------------------------


class Moto:
    """A moto server on a free loopback port, and boto3 clients for it."""

    def __init__(self, server, workdir, tls=False):
        import boto3  # the venv of scripts/bench_vs_fluentbit.sh has it (moto[server] pulls it in)

        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(MOTO_ENV)
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = open(os.path.join(workdir, f"moto-{self.port}.log"), "w")
        cmd = [server, "-H", "127.0.0.1", "-p", str(self.port)] + (["--ssl"] if tls else [])
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        # Its certificate is self-signed: the harness's own reads skip verification.
        if tls:
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        unverified = ssl._create_unverified_context() if tls else None
        wait_for(lambda: urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1, context=unverified).status == 200, 60, "moto")
        self.s3 = boto3.client("s3", endpoint_url=self.url, region_name=REGION, verify=not tls)
        self.logs = boto3.client("logs", endpoint_url=self.url, region_name=REGION, verify=not tls)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class S3Reader:
    """Reads a bucket's objects once each and counts their JSON lines; keeps them compressed
    (2M records decompressed would be ~1 GiB of harness memory) and decompresses again for
    the check."""

    def __init__(self, moto, bucket):
        self.moto, self.bucket = moto, bucket
        self.seen = {}  # key -> (line count, gzip body)

    def poll(self):
        paginator = self.moto.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                if o["Key"] in self.seen:
                    continue
                body = self.moto.s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
                if body[:2] != b"\x1f\x8b":
                    raise RunFailed(f"S3 object {o['Key']} is not gzip")
                try:
                    text = gzip.decompress(body)
                except (OSError, EOFError) as e:
                    raise RunFailed(f"S3 object {o['Key']}: bad gzip: {e}") from e
                self.seen[o["Key"]] = (text.count(b"\n") + (0 if text.endswith(b"\n") or not text else 1), body)
        return sum(n for n, _ in self.seen.values())

    def lines(self):
        for _, body in self.seen.values():
            yield from gzip.decompress(body).splitlines()

    def delete(self):
        for key in self.seen:
            self.moto.s3.delete_object(Bucket=self.bucket, Key=key)
        self.moto.s3.delete_bucket(Bucket=self.bucket)


def cwl_messages(moto, group, stream):
    """Every event of one CloudWatch Logs stream, oldest first."""
    out, token = [], None
    while True:
        kw = {"logGroupName": group, "logStreamName": stream, "startFromHead": True, "limit": 10000}
        if token:
            kw["nextToken"] = token
        r = moto.logs.get_log_events(**kw)
        out.extend(e["message"] for e in r["events"])
        if not r["events"] or r["nextForwardToken"] == token:
            return out
        token = r["nextForwardToken"]


# --- checking what arrived -----------------------------------------------------------------


def check_records(lines, expected, connections, record_size):
    """Raises RunFailed unless `lines` (JSON objects, bytes or str) are exactly the records
    loadgen sent: `expected` in all, `expected / connections` per connection (container_id),
    every field well-formed, and (records >= 200 B, whose pool lines are all distinct) each
    pool line as often as it was sent."""
    per_conn = collections.defaultdict(collections.Counter)
    n = 0
    for raw in lines:
        n += 1
        try:
            r = json.loads(raw)
        except ValueError as e:
            raise RunFailed(f"line {n} is not JSON ({e}): {raw[:120]!r}") from e
        cid, name, src, log = (r.get(k) for k in ("container_id", "container_name", "source", "log"))
        if not (isinstance(cid, str) and HEX64.match(cid)):
            raise RunFailed(f"record {n}: bad container_id {cid!r}")
        if not (isinstance(name, str) and name.startswith("/ecs-app-1-web-") and len(name) == 35):
            raise RunFailed(f"record {n}: bad container_name {name!r}")
        if src not in ("stdout", "stderr"):
            raise RunFailed(f"record {n}: bad source {src!r}")
        if not (isinstance(log, str) and len(log) == record_size):
            raise RunFailed(f"record {n}: log is not {record_size} chars: {str(log)[:80]!r}…")
        per_conn[cid][log] += 1
    if n != expected:
        raise RunFailed(f"{n} records arrived, {expected} were sent")
    if len(per_conn) != connections:
        raise RunFailed(f"{len(per_conn)} container_ids arrived, {connections} connections sent")
    for i, (cid, logs) in enumerate(sorted(per_conn.items())):
        got = sum(logs.values())
        shares = {expected // connections + (1 if j < expected % connections else 0) for j in range(connections)}
        if got not in shares:
            raise RunFailed(f"container {cid[:12]}: {got} records, expected one of {sorted(shares)}")
        if record_size >= 200:
            distinct = min(got, POOL)
            lo, hi = got // POOL, -(-got // POOL)
            if len(logs) != distinct or any(c not in (lo, hi) for c in logs.values()):
                raise RunFailed(
                    f"container {cid[:12]}: {len(logs)} distinct lines (expected {distinct}), "
                    f"counts {min(logs.values())}..{max(logs.values())} (expected {lo}..{hi}): records lost, duplicated or altered"
                )


def count_lines(path, state):
    """Lines in a growing file, reading only what was appended since the last call."""
    try:
        with open(path, "rb") as f:
            f.seek(state.get("pos", 0))
            data = f.read()
    except FileNotFoundError:
        return 0
    state["pos"] = state.get("pos", 0) + len(data)
    state["n"] = state.get("n", 0) + data.count(b"\n")
    return state["n"]


# --- routers -------------------------------------------------------------------------------


class Router:
    """One router process under test; subclasses know its config and its counters."""

    label = ""

    def __init__(self, d, sink, moto, run_id):
        self.d, self.sink, self.moto, self.run_id = d, sink, moto, run_id
        self.fwd = free_port()
        self.admin = free_port()
        self.proc = None
        self.bucket = f"bench-{self.label}-{run_id}"
        self.group, self.stream = f"/bench/{self.label}-{run_id}", "bench"
        self.file = os.path.join(d, "out.jsonl")
        self.file_state = {}
        self.s3 = None

    def prepare_sink(self):
        if self.sink == "s3":
            self.moto.s3.create_bucket(Bucket=self.bucket)
            self.s3 = S3Reader(self.moto, self.bucket)

    def start(self):
        self.prepare_sink()
        cmd = self.command()
        self.log = open(os.path.join(self.d, "router.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=aws_env())
        wait_for(self.ready, 30, f"{self.label} ready")

    def ready(self):
        if self.proc.poll() is not None:
            raise RunFailed(f"{self.label} exited at start: {tail(self.d)}")
        with socket.create_connection(("127.0.0.1", self.fwd), timeout=1):
            pass
        return self.metrics_up()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def delivered(self, expected):
        """True once the destination holds (at least) `expected` records."""
        if self.proc.poll() is not None:
            raise RunFailed(f"{self.label} exited during the run: {tail(self.d)}")
        if self.sink == "file":
            return count_lines(self.file, self.file_state) >= expected
        if self.sink == "s3":
            return self.s3.poll() >= expected
        return self.sent() >= expected

    def verify(self, expected, connections, record_size):
        if self.sink == "null":
            inp, out, bad = self.sent_and_failed()
            if (inp, out, bad) != (expected, expected, 0):
                raise RunFailed(f"counters: {inp} records in, {out} out, {bad} failed/dropped; {expected} sent")
            return
        if self.sink == "file":
            with open(self.file, "rb") as f:
                check_records(f, expected, connections, record_size)
        elif self.sink == "s3":
            self.s3.poll()
            check_records(self.s3.lines(), expected, connections, record_size)
        elif self.sink == "cwl":
            check_records(cwl_messages(self.moto, self.group, self.stream), expected, connections, record_size)

    def cleanup_sink(self):
        try:
            if self.s3:
                self.s3.delete()
            if self.sink == "cwl":
                self.moto.logs.delete_log_group(logGroupName=self.group)
        except Exception:  # noqa: BLE001 - best effort: moto is stopped at the end anyway
            pass


class Firelane(Router):
    label = "firelane"

    def __init__(self, binary, *a, memory_limit="256MiB", **kw):
        self.binary, self.memory_limit = binary, memory_limit
        super().__init__(*a, **kw)

    def output(self):
        if self.sink == "null":
            return 'type = "null"'
        if self.sink == "file":
            return f'type = "file"\npath = "{self.file}"'
        if self.sink == "s3":
            return f"""type = "s3"
bucket = "{self.bucket}"
key = "bench/%Y/%m/%d/%H/{{uuid}}.json.gz"
compression = "gzip"
region = "{REGION}"
endpoint_url = "{self.moto.url}"
force_path_style = true
batch = {{ max_bytes = "8MiB", max_age = "2s" }}"""
        if self.sink == "cwl":
            return f"""type = "cloudwatch_logs"
log_group = "{self.group}"
log_stream = "{self.stream}"
auto_create = true
region = "{REGION}"
endpoint_url = "{self.moto.url}"
batch = {{ max_age = "1s" }}  # Fluent Bit's Flush 1: the same wait for the last batch"""
        raise ValueError(self.sink)

    def config(self):
        return f"""[admin]
listen = "127.0.0.1:{self.admin}"
[runtime]
data_dir = "{self.d}/data"
memory_limit = "{self.memory_limit}"
log_level = "warn"
[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{self.fwd}"]
{self.routes_and_outputs()}"""

    def routes_and_outputs(self):
        return f'[routes.all]\nto = ["sink"]\n[outputs.sink]\n{self.output()}\n'

    def command(self):
        path = os.path.join(self.d, "firelane.toml")
        with open(path, "w") as f:
            f.write(self.config())
        return [self.binary, "run", "-c", path]

    def metrics_up(self):
        return urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1).status == 200

    def sent(self):
        return metric(self.admin, "firelane_output_records_total", ['output="sink"', 'result="sent"'])

    def sent_and_failed(self):
        inp = metric(self.admin, "firelane_input_records_total", ['input="fwd"'])
        out = self.sent()
        all_out = metric(self.admin, "firelane_output_records_total", ['output="sink"'])
        return int(inp), int(out), int(all_out - out)


class FluentBit(Router):
    label = "fluentbit"

    def __init__(self, binary, *a, **kw):
        self.binary = binary
        super().__init__(*a, **kw)

    def output(self):
        if self.sink == "null":
            return "Name null"
        if self.sink == "file":
            return f"Name file\n    Path {self.d}\n    File out.jsonl\n    Format plain"
        if self.sink == "s3":
            host = self.moto.url
            return f"""Name s3
    bucket {self.bucket}
    region {REGION}
    endpoint {host}
    s3_key_format /bench/%Y/%m/%d/%H/$UUID.json.gz
    compression gzip
    use_put_object On
    total_file_size 8M
    upload_timeout 2s
    store_dir {self.d}/s3"""
        if self.sink == "cwl":
            # TLS: Fluent Bit's cloudwatch_logs cannot speak plain HTTP (`tls Off` is undone by
            # its AWS credential chain, which sets the instance's use_tls back to true, and
            # `tls On` is refused), so it gets a moto of its own with a self-signed
            # certificate (main() passes it as `moto`).
            return f"""Name cloudwatch_logs
    region {REGION}
    log_group_name {self.group}
    log_stream_name {self.stream}
    auto_create_group On
    endpoint 127.0.0.1
    port {self.moto.port}
    tls.verify Off"""
        raise ValueError(self.sink)

    def config(self):
        # Fluent Bit's defaults (memory buffering, no Mem_Buf_Limit, Flush 1 s), as the
        # FireLens-generated config leaves them; the HTTP server only for the counters.
        return f"""[SERVICE]
    Flush 1
    Grace 2
    Log_Level warn
    HTTP_Server On
    HTTP_Listen 127.0.0.1
    HTTP_Port {self.admin}

[INPUT]
    Name forward
    Listen 127.0.0.1
    Port {self.fwd}

[OUTPUT]
    {self.output()}
    Alias sink
    Match *
"""

    def command(self):
        path = os.path.join(self.d, "fluent-bit.conf")
        with open(path, "w") as f:
            f.write(self.config())
        return [self.binary, "-c", path]

    def counters(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/api/v1/metrics", timeout=2) as r:
            return json.load(r)

    def metrics_up(self):
        return "output" in self.counters()

    def sent(self):
        return self.counters()["output"]["sink"]["proc_records"]

    def sent_and_failed(self):
        c = self.counters()
        inp = sum(i.get("records", 0) for i in c["input"].values())
        o = c["output"]["sink"]
        bad = o.get("errors", 0) + o.get("retries_failed", 0) + o.get("dropped_records", 0)
        return inp, o["proc_records"], bad


# Everything AWS goes to the local moto: fixed dummy credentials, never the caller's own.
MOTO_ENV = dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION=REGION, AWS_EC2_METADATA_DISABLED="true")


def aws_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(MOTO_ENV)
    return env


def tail(d, n=1500):
    try:
        with open(os.path.join(d, "router.log"), errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


# --- one run -------------------------------------------------------------------------------


def loadgen_connections(args):
    return int(args[args.index("--connections") + 1]) if "--connections" in args else 1


def run_once(router, loadgen_bin, lg_args, records, record_size, keep_failed):
    """Starts the router, sends the load, waits for delivery, measures, stops, verifies."""
    try:
        router.start()
        cpu0 = proc_cpu(router.proc.pid)
        t0 = time.monotonic()
        lg = subprocess.run(
            [loadgen_bin, "loadgen", "--addr", f"tcp://127.0.0.1:{router.fwd}", "--records", str(records),
             "--record-size", str(record_size), *lg_args],
            capture_output=True, text=True, timeout=3600,
        )
        if lg.returncode != 0:
            raise RunFailed(f"loadgen failed: {lg.stderr.strip()[-500:]}")
        # At a paced rate the share of a core is taken over the seconds the load was being
        # sent, the same for both routers: a router that then waits to upload its last
        # object (Fluent Bit's S3 `upload_timeout`) would otherwise divide its CPU by idle
        # seconds and look cheaper per second than it is per record. Unpaced, the router
        # sets the pace, and the share is over the whole run.
        load_elapsed = time.monotonic() - t0
        timeout = max(120, records / 2000)
        try:
            wait_for(lambda: router.delivered(records), timeout, f"{router.label} to deliver {records} records")
        except RuntimeError as e:
            raise RunFailed(str(e)) from e
        elapsed = time.monotonic() - t0
        cpu = proc_cpu(router.proc.pid) - cpu0
        hwm = proc_hwm_mib(router.proc.pid)
        # A router still busy after delivery (duplicates on their way) shows up in the check.
        time.sleep(0.5)
        router.verify(records, loadgen_connections(lg_args), record_size)
        return {"rps": records / elapsed, "cpu_per_m": cpu / records * 1e6, "core": cpu / (load_elapsed if "--rate" in lg_args else elapsed), "rss": hwm}
    except Exception as e:  # noqa: BLE001 - any failure is this run's result, not the harness's end
        if keep_failed:
            print(f"    kept {router.d} for inspection", file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}" if not isinstance(e, RunFailed) else str(e)}
    finally:
        if router.proc:
            router.stop()
        router.cleanup_sink()


def median_of(runs):
    ok = [r for r in runs if "error" not in r]
    if len(ok) != len(runs):
        return None, next(r["error"] for r in runs if "error" in r)
    return {k: statistics.median(r[k] for r in ok) for k in ok[0]}, None


def fmt(m, key, spec):
    return "FAILED" if m is None else format(m[key], spec)


# --- memory scenario -----------------------------------------------------------------------


class StalledHttp:
    """An HTTP destination that accepts connections and never reads or answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self):
        self.stopped = True
        self.sock.close()
        for c in self.held:
            c.close()


class FirelaneBurst(Firelane):
    """firelane with the memory scenario's three outputs: file, gzip S3, a stalled HTTP."""

    def __init__(self, binary, d, moto, run_id, limit, http_port):
        self.http_port = http_port
        super().__init__(binary, d, "file", moto, run_id, memory_limit=limit)
        self.bucket = f"bench-mem-{run_id}"

    def prepare_sink(self):
        self.moto.s3.create_bucket(Bucket=self.bucket)
        self.s3 = S3Reader(self.moto, self.bucket)

    def routes_and_outputs(self):
        return f"""[routes.all]
to = ["file", "s3", "stalled"]
[outputs.file]
type = "file"
path = "{self.file}"
[outputs.s3]
type = "s3"
bucket = "{self.bucket}"
key = "bench/{{uuid}}.json.gz"
compression = "gzip"
region = "{REGION}"
endpoint_url = "{self.moto.url}"
force_path_style = true
batch = {{ max_bytes = "8MiB", max_age = "2s" }}
[outputs.stalled]
type = "http"
url = "http://127.0.0.1:{self.http_port}/ingest"
timeout = "600s"
buffer = {{ when_full = "drop_newest" }}
"""


def memory_run(binary, moto, limit, records, record_size, run_id):
    d = tempfile.mkdtemp(prefix="firelane-bench-mem-")
    http = StalledHttp()
    r = FirelaneBurst(binary, d, moto, run_id, limit, http.port)
    try:
        r.start()
        t0 = time.monotonic()
        lg = subprocess.run(
            [binary, "loadgen", "--addr", f"tcp://127.0.0.1:{r.fwd}", "--records", str(records), "--record-size",
             str(record_size), *PACKED, "--connections", "8"],
            capture_output=True, text=True, timeout=3600,
        )
        if lg.returncode != 0:
            raise RunFailed(f"loadgen failed: {lg.stderr.strip()[-500:]}")

        def done():
            if r.proc.poll() is not None:
                raise RunFailed(f"firelane exited: {tail(d)}")
            return count_lines(r.file, r.file_state) >= records and r.s3.poll() >= records

        try:
            wait_for(done, max(300, records / 2000), "file and S3 to hold every record")
        except RuntimeError as e:
            raise RunFailed(str(e)) from e
        elapsed = time.monotonic() - t0
        hwm = proc_hwm_mib(r.proc.pid)
        dropped = metric(r.admin, "firelane_output_records_total", ['output="stalled"', 'result="dropped"'])
        with open(r.file, "rb") as f:
            check_records(f, records, 8, record_size)
        check_records(r.s3.lines(), records, 8, record_size)
        return {"rss": hwm, "elapsed": elapsed, "dropped": dropped}
    except Exception as e:  # noqa: BLE001 - any failure is this run's result, not the harness's end
        return {"error": f"{type(e).__name__}: {e}" if not isinstance(e, RunFailed) else str(e)}
    finally:
        if r.proc:
            r.stop()
        http.close()
        r.cleanup_sink()
        shutil.rmtree(d, ignore_errors=True)


def parse_mib(s):
    m = re.fullmatch(r"(\d+)MiB", s)
    if not m:
        raise ValueError(f"memory limit {s!r}: use NMiB")
    return int(m.group(1))


# --- main ----------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--record-size", type=int, default=330, help="bytes of the log field; 330 gives records of ~480 B")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated substrings of scenario names (memory: 'memory')")
    ap.add_argument("--binary", default="target/release/firelane")
    ap.add_argument("--fluent-bit", default=shutil.which("fluent-bit"))
    venv = os.environ.get("FIRELANE_VENV", ".venv")
    ap.add_argument("--moto-server", default=os.path.join(venv, "bin", "moto_server"))
    ap.add_argument("--burst-records", type=int, default=2_000_000)
    ap.add_argument("--memory-limits", default="32MiB,128MiB")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--keep-failed", action="store_true", help="keep the temp dir of a failed run")
    a = ap.parse_args()

    picks = [o.strip() for o in a.only.split(",") if o.strip()]
    names = [n for n in SCENARIOS if not picks or any(p in n for p in picks)]
    memory = not a.skip_memory and (not picks or "memory" in picks)
    if not (os.path.isfile(a.binary) and os.access(a.binary, os.X_OK)):
        print(f"error: --binary {a.binary} is not an executable file (cargo build --release --locked builds it)",
              file=sys.stderr)
        return 2
    fb = a.fluent_bit
    # A path the user named and that is not there is a mistake, not a reason to run alone.
    if fb and not (os.path.isfile(fb) and os.access(fb, os.X_OK)):
        print(f"error: --fluent-bit {fb} is not an executable file", file=sys.stderr)
        return 2
    if not fb:
        print("fluent-bit is not on PATH: skipping the Fluent Bit runs (firelane runs alone). Build the peer "
              "(Fluent Bit v5.1.1 with aws-for-fluent-bit's release flags) with build-fluent-bit.sh from a clone of "
              "fluent/fluent-bit, or pass --fluent-bit PATH.", flush=True)
    needs_moto = memory or any(SCENARIOS[n][1] in ("s3", "cwl") for n in names)
    work = tempfile.mkdtemp(prefix="firelane-bench-vs-")
    moto = moto_tls = None
    failures = 0
    try:
        if needs_moto:
            if not os.access(a.moto_server, os.X_OK):
                print(f"error: no moto_server at {a.moto_server} (set FIRELANE_VENV or --moto-server)", file=sys.stderr)
                return 2
            moto = Moto(a.moto_server, work)
        fb_version = subprocess.run([fb, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if fb else "skipped"
        fl_version = subprocess.run([a.binary, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; {fl_version}; {fb_version}")
        if names:
            print(f"{a.records:,} records per run (log field {a.record_size} B, FireLens-shaped), median of {a.runs} runs; "
                  "CPU = the router's own utime+stime; records/s from the first record sent to the last one in the output; "
                  "share of one core at a paced rate = CPU over the seconds the load was being sent\n")
            print("| scenario | records/s FB / firelane | CPU-s per 1M FB / firelane | firelane records per CPU-s vs FB "
                  "| share of one core FB / firelane | peak RSS MiB FB / firelane | output check |")
            print("|---|---:|---:|---:|---:|---:|---|")
        run_id = 0
        for name in names:
            lg_args, sink = SCENARIOS[name]
            results = {}
            for label in (["fluentbit"] if fb else []) + ["firelane"]:
                runs = []
                for _ in range(a.runs):
                    run_id += 1
                    d = tempfile.mkdtemp(prefix=f"bench-{label}-", dir=work)
                    if label == "fluentbit":
                        if sink == "cwl" and moto_tls is None:
                            moto_tls = Moto(a.moto_server, work, tls=True)
                        r = FluentBit(fb, d, sink, moto_tls if sink == "cwl" else moto, run_id)
                    else:
                        r = Firelane(a.binary, d, sink, moto, run_id)
                    res = run_once(r, a.binary, lg_args, a.records, a.record_size, a.keep_failed)
                    if "error" in res:
                        print(f"    {name}: {label} run FAILED: {res['error']}", file=sys.stderr, flush=True)
                    if not (a.keep_failed and "error" in res):
                        shutil.rmtree(d, ignore_errors=True)
                    runs.append(res)
                results[label] = median_of(runs)
            f, ferr = results.get("fluentbit", (None, "skipped"))
            l, lerr = results["firelane"]
            errs = [f"{k}: {e}" for k, e in (("Fluent Bit", ferr), ("firelane", lerr)) if e and e != "skipped"]
            failures += len(errs)
            ratio = f"{f['cpu_per_m'] / l['cpu_per_m']:.2f}×" if f and l and l["cpu_per_m"] > 0 else "–"
            fbs = (lambda k, s: fmt(f, k, s)) if fb else (lambda k, s: "–")
            check = "FAILED (" + "; ".join(errs) + ")" if errs else f"ok ({'counters' if sink == 'null' else 'records'})"
            print(f"| {name} | {fbs('rps', ',.0f')} / {fmt(l, 'rps', ',.0f')} | {fbs('cpu_per_m', '.2f')} / {fmt(l, 'cpu_per_m', '.2f')} "
                  f"| {ratio} | {fbs('core', '.2f')} / {fmt(l, 'core', '.2f')} | {fbs('rss', '.0f')} / {fmt(l, 'rss', '.0f')} | {check} |",
                  flush=True)

        if memory:
            print(f"\nMemory (firelane only): {a.burst_records:,} records over 8 connections (PackedForward ×1000, no acks) "
                  "into file + gzip S3 (moto) + a stalled HTTP destination (when_full = \"drop_newest\"); "
                  f"median of {a.runs} runs\n")
            print("| memory_limit | peak RSS MiB | within limit + 24 MiB | records dropped at the stalled output | output check |")
            print("|---:|---:|---|---:|---|")
            for limit in a.memory_limits.split(","):
                runs = []
                for _ in range(a.runs):
                    run_id += 1
                    res = memory_run(a.binary, moto, limit, a.burst_records, a.record_size, run_id)
                    if "error" in res:
                        print(f"    memory {limit}: run FAILED: {res['error']}", file=sys.stderr, flush=True)
                    runs.append(res)
                m, err = median_of(runs)
                if err:
                    failures += 1
                    print(f"| {limit} | FAILED | – | – | FAILED ({err}) |", flush=True)
                else:
                    within = "yes" if m["rss"] <= parse_mib(limit) + 24 else "NO"
                    print(f"| {limit} | {m['rss']:.0f} | {within} | {m['dropped']:,.0f} | ok (file and S3: every record) |", flush=True)
    finally:
        for m in (moto, moto_tls):
            if m:
                m.stop()
        if not a.keep_failed:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"\n{failures} scenario result(s) FAILED their output check (details above, on stderr)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
