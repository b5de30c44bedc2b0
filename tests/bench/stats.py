"""Percentiles of one run, and the summary of several runs of a scenario."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

# Per-run figures reported as {"min", "median", "max"} over the runs.
SPREAD = ("throughput", "p50_ms", "p99_ms", "server_cpu_s", "load_cpu_s")
# Counts of things that must not happen: summed over the runs, so that one bad run shows.
SUMMED = frozenset(
    {"order_violations", "missing", "duplicates", "not_held", "failed", "server_warnings", "server_errors"}
)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0-100) of `values`; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_fields(latencies_ms: list[float]) -> dict[str, float | None]:
    return {"p50_ms": rnd(percentile(latencies_ms, 50)), "p99_ms": rnd(percentile(latencies_ms, 99))}


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def spread(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"min": None, "median": None, "max": None}
    return {"min": rnd(min(present)), "median": rnd(statistics.median(present)), "max": rnd(max(present))}


def merge(key: str, values: list[Any]) -> Any:
    """One value for `key` out of its value in each run."""
    first = values[0]
    if isinstance(first, bool):
        return all(values)
    if isinstance(first, int | float) or first is None:
        present = [v for v in values if v is not None]
        if key in SUMMED:
            return sum(present)
        return rnd(statistics.median(present)) if present else None
    if isinstance(first, Mapping):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: merge(k, [v[k] for v in values if k in v]) for k in keys}
    if isinstance(first, list):
        return list(dict.fromkeys(x for v in values for x in v))[:10]  # distinct samples (of log lines)
    return first


def aggregate(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The scenario's JSON line: spreads of the main figures, medians (or sums) of the rest, all errors."""
    errors: Counter[str] = Counter()
    for run in runs:
        errors.update(run["errors"])
    line: dict[str, Any] = {"name": name, "runs": len(runs)}
    for key in SPREAD:
        line[key] = spread([run.get(key) for run in runs])
    line["throughput"]["unit"] = runs[0]["unit"]
    for key in dict.fromkeys(k for run in runs for k in run):
        if key not in (*SPREAD, "errors", "unit"):
            line[key] = merge(key, [run[key] for run in runs if key in run])
    line["errors"] = dict(errors)
    return line
