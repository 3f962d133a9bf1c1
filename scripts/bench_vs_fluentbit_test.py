#!/usr/bin/env python3
"""Tests of the benchmark's output check (scripts/bench_vs_fluentbit.py): it must accept
exactly what loadgen sent and refuse output with records lost, duplicated or altered, so that
a fast path that loses or garbles records cannot pass the benchmark.
Run: python3 -m unittest scripts/bench_vs_fluentbit_test.py   (no moto, no router needed)"""

import json
import os
import random
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vs_fluentbit import POOL, RunFailed, check_records, count_lines  # noqa: E402

SIZE = 330


def sent(records, connections, size=SIZE, seed=1):
    """JSON lines shaped like loadgen's: per connection one container and a pool of POOL
    distinct records, cycled, the records split over the connections as loadgen splits them."""
    rng = random.Random(seed)
    out = []
    for i in range(connections):
        cid = "".join(rng.choice("0123456789abcdef") for _ in range(64))
        name = "/ecs-app-1-web-" + "".join(rng.choice("0123456789abcdef") for _ in range(20))
        pool = [
            {"container_id": cid, "container_name": name, "source": rng.choice(["stdout", "stderr"]),
             "log": "".join(rng.choice("abcdefghij") for _ in range(size))}
            for _ in range(POOL)
        ]
        share = records // connections + (1 if i < records % connections else 0)
        out.extend(json.dumps(pool[j % POOL]) for j in range(share))
    return out


class CheckRecords(unittest.TestCase):
    def test_accepts_what_was_sent_in_any_order(self):
        lines = sent(5000, 3)
        random.Random(2).shuffle(lines)
        check_records(lines, 5000, 3, SIZE)
        # Extra fields a router adds (Fluent Bit's S3 `date`) are allowed.
        check_records([json.dumps({**json.loads(l), "date": "x"}) for l in lines], 5000, 3, SIZE)

    def refuses(self, lines, expected=5000, connections=3, size=SIZE):
        with self.assertRaises(RunFailed):
            check_records(lines, expected, connections, size)

    def test_refuses_a_lost_record(self):
        self.refuses(sent(5000, 3)[1:])

    def test_refuses_a_lost_record_replaced_by_a_duplicate(self):
        lines = sent(5000, 3)
        lines[0] = lines[1]  # same total, one pool line now arrives once too often
        self.refuses(lines)

    def test_refuses_an_altered_log(self):
        lines = sent(5000, 3)
        r = json.loads(lines[7])
        r["log"] = r["log"][:-1] + "Z"
        lines[7] = json.dumps(r)
        self.refuses(lines)

    def test_refuses_a_truncated_log(self):
        lines = sent(5000, 3)
        r = json.loads(lines[7])
        r["log"] = r["log"][:-1]
        lines[7] = json.dumps(r)
        self.refuses(lines)

    def test_refuses_a_missing_or_renamed_field(self):
        for key in ("container_id", "container_name", "source", "log"):
            lines = sent(5000, 3)
            r = json.loads(lines[3])
            r["x_" + key] = r.pop(key)
            lines[3] = json.dumps(r)
            self.refuses(lines)

    def test_refuses_a_record_moved_to_another_connection(self):
        lines = sent(5000, 3)
        a, b = json.loads(lines[0]), json.loads(lines[-1])
        a["container_id"] = b["container_id"]
        lines[0] = json.dumps(a)
        self.refuses(lines)

    def test_refuses_a_line_that_is_not_json(self):
        lines = sent(5000, 3)
        lines[10] = lines[10][:-5]
        self.refuses(lines)

    def test_refuses_extra_records(self):
        lines = sent(5000, 3)
        self.refuses(lines + lines[:1])

    def test_small_records_are_still_counted(self):
        # Below 200 B the pool may repeat lines, so only counts and fields are checked.
        lines = sent(3000, 2, size=50)
        check_records(lines, 3000, 2, 50)
        self.refuses(lines[:-1], 3000, 2, 50)


class CountLines(unittest.TestCase):
    def test_counts_only_what_was_appended(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "out.jsonl")
            state = {}
            self.assertEqual(count_lines(p, state), 0)
            with open(p, "ab") as f:
                f.write(b"a\nb\n")
            self.assertEqual(count_lines(p, state), 2)
            with open(p, "ab") as f:
                f.write(b"c\n")
            self.assertEqual(count_lines(p, state), 3)


class CommandLine(unittest.TestCase):
    """A path the user names and that is not there ends the run with exit 2 and one line
    naming it, before moto or any router starts (not a Python traceback, not a quiet skip)."""

    def run_harness(self, *args):
        import subprocess
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_vs_fluentbit.py")
        return subprocess.run([sys.executable, script, "--only", "null", *args],
                              capture_output=True, text=True, timeout=60)

    def test_a_missing_fluent_bit_is_an_error(self):
        with tempfile.TemporaryDirectory() as d:
            r = self.run_harness("--binary", sys.executable, "--fluent-bit", os.path.join(d, "fluent-bit"))
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--fluent-bit", r.stderr)
        self.assertIn("is not an executable file", r.stderr)
        self.assertNotIn("Traceback", r.stderr)

    def test_a_missing_binary_is_an_error(self):
        with tempfile.TemporaryDirectory() as d:
            r = self.run_harness("--binary", os.path.join(d, "firelane"))
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--binary", r.stderr)
        self.assertNotIn("Traceback", r.stderr)


if __name__ == "__main__":
    unittest.main()
