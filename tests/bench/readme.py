"""The README's benchmark table, between its two markers."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

from tests.bench.scenarios import Scenario

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"


def table(lines: list[tuple[Scenario, dict[str, Any]]], runs: int, seconds: float, loopback: dict[str, float]) -> str:
    rows = [
        "| scenario | measured (median of runs) | target | met | reproduce |",
        "| --- | --- | --- | --- | --- |",
    ]
    for scenario, line in lines:
        if "failure" in line:
            figure, met = f"failed: {line['failure']}", "no"
        else:
            figure, met = scenario.figure(line), "yes" if line["meets_target"] else "no"
        if line.get("errors"):
            figure += f"; errors {line['errors']}"
        rows.append(f"| `{scenario.name}` | {figure} | {scenario.target} | {met} | `make bench` |")
    machine = (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"{runs} runs of {seconds:g} s windows; {datetime.date.today().isoformat()}. A loopback round trip between"
        f" two processes took {loopback['round_trip_us']:g} µs, {loopback['cpu_us']:g} µs of CPU on each side."
    )
    return "\n".join([*rows, "", machine])


def rewrite(readme: Path, text: str) -> None:
    """Replace what lies between the markers; everything else stays as it is."""
    content = readme.read_text()
    head, start, rest = content.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise RuntimeError(f"{readme.name} has no {START} … {END} markers")
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
