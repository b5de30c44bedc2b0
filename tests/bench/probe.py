"""What one round trip between two processes costs on this machine: the unit the bench's figures are made of.

A message the bench measures crosses processes several times (load client → server → PostgreSQL and
back), and every crossing is a write, a wake-up of the process that reads it, and a read. How much
that costs depends on the machine far more than on imsvc (several times more in a small virtual
machine than on bare metal), so the bench measures it once and prints it beside the table: figures
from two machines compare only together with it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.bench.load import cpu

PAYLOAD = b"x" * 64

# The other process: connect, then send back every 64 bytes it reads.
ECHO = """
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := conn.recv(64):
    conn.sendall(data)
"""


def _read_exactly(conn: socket.socket, size: int) -> None:
    while size:
        chunk = conn.recv(size)
        if not chunk:
            raise ConnectionError("the echo process went away")
        size -= len(chunk)


def loopback(rounds: int) -> dict[str, float]:
    """64 bytes to another process over loopback TCP and back, `rounds` times: the wall time of one round
    trip, and the CPU this side spent on it (a write and a read, each a system call and a wake-up)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        echo = subprocess.Popen([sys.executable, "-c", ECHO, str(listener.getsockname()[1])])
        try:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                started, started_cpu = time.perf_counter(), cpu()
                for _ in range(rounds):
                    conn.sendall(PAYLOAD)
                    _read_exactly(conn, len(PAYLOAD))
                wall, used = time.perf_counter() - started, cpu() - started_cpu
        finally:
            echo.wait(timeout=10)
    return {"round_trip_us": round(wall / rounds * 1e6, 1), "cpu_us": round(used / rounds * 1e6, 1)}
