"""The benchmark harness end to end with tiny numbers: every scenario runs and reports, nothing is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"name", "runs", "throughput", "p50_ms", "p99_ms", "server_cpu_s", "load_cpu_s", "errors", "target"}
SPECIFIC = {
    "ws_send_25": {"clients"},
    "ws_send_200": {"clients"},
    "rest_send_50": {"clients"},
    "history_keyset": {"worst_p99_ms", "by_size"},
    "ai_relay": {"replies_per_s", "tokens_per_reply"},
    "first_delta": {"token_to_delta_p50_ms", "ack_p50_ms"},
    "fanout_1000": {"order_violations", "missing", "duplicates", "frames"},
    "idle_sockets": {"held", "not_held", "rss_per_socket_kb"},
}


@pytest.mark.timeout(100)
def test_every_scenario_reports_without_errors() -> None:
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip("TEST_DATABASE_URL is not set")
    readme = (ROOT / "README.md").read_text()
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--smoke", "--database-url", base],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    lines = {line["name"]: line for line in map(json.loads, done.stdout.splitlines())}
    machine = lines.pop("machine")
    assert machine["loopback"]["round_trip_us"] > 0 and machine["loopback"]["cpu_us"] > 0, machine
    assert set(lines) == set(SPECIFIC)
    for name, line in lines.items():
        assert COMMON | SPECIFIC[name] <= set(line), (name, sorted(line))
        assert set(line["throughput"]) == {"min", "median", "max", "unit"}, name
        assert line["errors"] == {}, (name, line["errors"])
        assert line["server_errors"] == 0, (name, line["server_log_samples"])
    fanout, idle = lines["fanout_1000"], lines["idle_sockets"]
    assert (fanout["missing"], fanout["duplicates"], fanout["order_violations"]) == (0, 0, 0)
    assert idle["not_held"] == 0
    assert (ROOT / "README.md").read_text() == readme  # only `make bench` rewrites its table
