"""Generated bad input over REST: schemathesis against the live server's own /openapi.json.

Every operation, positive and negative data, boundary values, and stateful sequences along the links
schemathesis infers (a session's id from POST /sessions into the routes that take one, and so on),
with every check schemathesis has: no 5xx, every response as documented (status, content type,
headers, schema, SSE events too), 405 with a complete Allow, 401 without a token, and so on. The seed
is fixed so that CI runs the same cases each time; a failure prints how to replay it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.helpers import LiveServer, token, uid

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 30  # per operation and phase: about 900 requests, 12-18 s per database on 2 cores
SEED = 20261201


async def test_schemathesis_finds_no_5xx_nor_an_undocumented_answer(server: LiveServer, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token(uid('fuzz'))}",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    summary = json.loads(report.read_text())
    assert proc.returncode == 0 and not summary["failures"] and not summary["errors"], output.decode()
    assert summary["complete"] and summary["stop_reason"] == "completed"
    phases = summary["phases"]
    assert all(phases[name]["status"] == "success" for name in ("coverage", "fuzzing", "stateful")), phases
    documented = (await server.get("/openapi.json", None)).json()["paths"]
    operations = summary["operations"]
    # every documented operation but the document itself, which schemathesis leaves out
    assert operations["tested"] == operations["total"] == sum(len(ops) for ops in documented.values()) - 1
    assert summary["test_cases"]["generated"] >= 500
    print(f"schemathesis: {summary['test_cases']['generated']} cases, no failure", file=sys.stderr)
