"""The processes of a run: `imsvc serve` (its CPU, RSS and log) and the load-client processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import SECRET, free_port

TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
PIPE_LIMIT = 1 << 26  # a load process's result is one JSON line of raw samples, up to a few MB


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; children (the server, the load processes) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Server:
    url: str
    ws_url: str
    proc: asyncio.subprocess.Process
    log: Path
    log_text: str = ""  # the whole log, once the server has stopped

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def log_summary(self) -> dict[str, Any]:
        """Warning and error lines the server logged (JSON lines; anything else counts as an error)."""
        levels: Counter[str] = Counter()
        samples: list[str] = []
        for line in self.log_text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                level = str(entry.get("level", "error")).lower()
                text = str(entry.get("event", line))
            except ValueError:
                level, text = "error", line
            levels[level] += 1
            if text not in samples and len(samples) < 5:
                samples.append(text[:200])
        return {
            "server_warnings": levels["warning"],
            "server_errors": levels["error"] + levels["critical"],
            "server_log_samples": samples,
        }


@contextlib.asynccontextmanager
async def serve(database_url: str, env: dict[str, str]) -> AsyncIterator[Server]:
    """A real `imsvc serve` on 127.0.0.1, its output in a temporary file; healthy when yielded, stopped after."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": SECRET,
        "MIGRATE_ON_START": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        **env,
    }
    with tempfile.TemporaryDirectory(prefix="imsvc-bench-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "imsvc",
                "serve",
                "--port",
                str(port),
                env=environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        server = Server(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", proc, log)
        try:
            await wait_healthy(server)
            yield server
        finally:
            await stop(proc, signal.SIGTERM)
            server.log_text = log.read_text(errors="replace")


async def wait_healthy(server: Server) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(START_TIMEOUT):
        while True:
            if server.proc.returncode is not None:
                raise RuntimeError(f"the server exited with {server.proc.returncode}: {server.log.read_text()[-2000:]}")
            try:
                if (await client.get(f"{server.url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # nothing announces the port listening: poll it, as tests.helpers does


async def stop(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class Load:
    """One load-client process, speaking JSON lines: phases on its stdout, releases on its stdin."""

    proc: asyncio.subprocess.Process
    phases: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    stderr: bytearray = field(default_factory=bytearray)

    async def read(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        stderr = asyncio.create_task(self._drain_stderr())
        while line := await self.proc.stdout.readline():
            self.phases.put_nowait(json.loads(line))
        await stderr
        await self.proc.wait()
        self.phases.put_nowait({"phase": "exit", "code": self.proc.returncode})

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    async def next(self, phase: str, timeout: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                got = await self.phases.get()
        except TimeoutError:
            raise RuntimeError(f"load process: no phase {phase!r} in {timeout} s\n{self.stderr_tail()}") from None
        if got["phase"] != phase:
            raise RuntimeError(f"load process: expected phase {phase!r}, got {got}\n{self.stderr_tail()}")
        return got

    def stderr_tail(self) -> str:
        return self.stderr.decode(errors="replace")[-3000:]

    def release(self, payload: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(payload) + "\n").encode())


class LoadGroup:
    """Load processes started together, moved from phase to phase together (a barrier per phase)."""

    def __init__(self, loads: list[Load], readers: list[asyncio.Task[None]]) -> None:
        self.loads = loads
        self._readers = readers

    async def barrier(self, phase: str, timeout: float) -> list[dict[str, Any]]:
        """Wait until every process has reached `phase`; their reports, in process order."""
        return list(await asyncio.gather(*(load.next(phase, timeout) for load in self.loads)))

    def release(self, payload: dict[str, Any]) -> None:
        for load in self.loads:
            load.release(payload)


@contextlib.asynccontextmanager
async def load_group(role_args: list[tuple[str, dict[str, Any]]]) -> AsyncIterator[LoadGroup]:
    """`python -m tests.bench.load ROLE --json-args ARGS` for each pair; killed after if still running."""
    loads = []
    for role, args in role_args:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.load",
            role,
            "--json-args",
            json.dumps(args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=PIPE_LIMIT,
        )
        loads.append(Load(proc))
    readers = [asyncio.create_task(load.read()) for load in loads]
    try:
        yield LoadGroup(loads, readers)
    finally:
        for load in loads:
            await stop(load.proc, signal.SIGTERM)
        await asyncio.gather(*readers, return_exceptions=True)
