"""The benchmark harness: every scenario against a real `imsvc serve` on PostgreSQL.

    make bench                                  (python -m tests.bench --write-readme)
    python -m tests.bench --only ws_send_25,first_delta --runs 1 --seconds 3
    python -m tests.bench --smoke               (tiny numbers: the harness works end to end)

A fresh database `imsvc_bench_<random>` is created beside BENCH_DATABASE_URL's (default: the local
PostgreSQL), migrated, and dropped at the end. The zero-delay fake model (tests/fakellm.py) runs in
this process; each run of a scenario starts its own server process and its own load-client
processes (tests/bench/load.py, one connection per virtual user). Prints one JSON line for the machine
(what a loopback round trip between two processes costs, tests/bench/probe.py), then one per scenario;
with --write-readme, also rewrites the table between the README's bench markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.bench.probe import loopback
from tests.bench.procs import raise_fd_limit, serve
from tests.bench.readme import rewrite, table
from tests.bench.scenarios import SCENARIOS, SMOKE, Bench, Scenario, Sizes
from tests.bench.seed import DEFAULT_URL, bench_database
from tests.bench.stats import aggregate
from tests.fakellm import start_fake_llm

README = Path(__file__).resolve().parents[2] / "README.md"


def server_env(bench: Bench) -> dict[str, str]:
    return {
        "RATE_LIMIT_MESSAGES": "0",
        "LOG_LEVEL": "WARNING",
        "WEBSOCKET_MAX_CONNECTIONS": str(max(20_000, 2 * bench.sizes.idle)),
        "AI_PROVIDER": "openai",
        "AI_API_KEY": "bench",
        "AI_BASE_URL": bench.fake.url,
        "AI_MAX_CONCURRENCY": str(max(128, bench.sizes.ai_sockets)),
        "SHUTDOWN_GRACE_S": "1",
    }


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_scenario(bench: Bench, scenario: Scenario, runs: int) -> dict[str, Any]:
    results = []
    for index in range(runs):
        progress(f"{scenario.name}: run {index + 1}/{runs}")
        async with serve(bench.database_url, server_env(bench)) as server:
            result = await scenario.run(bench, server, index)
        results.append({**result, **server.log_summary()})
    line = aggregate(scenario.name, results)
    line["target"] = scenario.target
    line["meets_target"] = scenario.meets(line)
    return line


async def main(options: argparse.Namespace) -> int:
    sizes: Sizes = replace(SMOKE) if options.smoke else Sizes()
    seconds = options.seconds if options.seconds is not None else (1.0 if options.smoke else 8.0)
    warmup = options.warmup if options.warmup is not None else (0.2 if options.smoke else 1.0)
    runs = options.runs if options.runs is not None else (1 if options.smoke else 3)
    wanted = options.only.split(",") if options.only else [s.name for s in SCENARIOS]
    unknown = set(wanted) - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    raise_fd_limit()
    started = time.monotonic()
    crossing = await asyncio.to_thread(loopback, 200 if options.smoke else 20_000)
    print(json.dumps({"name": "machine", "loopback": crossing}), flush=True)
    done: list[tuple[Scenario, dict[str, Any]]] = []
    async with bench_database(options.database_url) as url, start_fake_llm() as fake:
        fake.reply = " ".join(f"w{i}" for i in range(sizes.ai_tokens))
        bench = Bench(url, fake, sizes, seconds, warmup, uuid.uuid4().hex[:6])
        for scenario in (s for s in SCENARIOS if s.name in wanted):
            try:
                line = await run_scenario(bench, scenario, runs)
            except Exception as exc:
                traceback.print_exc()
                line = {"name": scenario.name, "failure": f"{type(exc).__name__}: {exc}"[:500], "errors": {}}
            print(json.dumps(line, ensure_ascii=False), flush=True)
            done.append((scenario, line))
    progress(f"done in {time.monotonic() - started:.0f} s")
    if options.write_readme:
        rewrite(README, table(done, runs, seconds, crossing))
        progress(f"rewrote the table in {README.name}")
    return 1 if any("failure" in line for _, line in done) else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs of each scenario (default 3; smoke 1)")
    parser.add_argument("--seconds", type=float, default=None, help="measured window (default 8; smoke 1)")
    parser.add_argument("--warmup", type=float, default=None, help="before the window (default 1; smoke 0.2)")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--smoke", action="store_true", help="tiny numbers: checks the harness, measures nothing")
    parser.add_argument("--write-readme", action="store_true", help="rewrite the README's benchmark table")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
        help="PostgreSQL the bench database is created beside (BENCH_DATABASE_URL)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
