"""Locust load test of imsvc's REST routes: POST /message/send, GET /message/list, GET /sessions.

For a deployment (or any server) rather than the local harness (`make bench`). Install the extra
and point Locust at the server:

    pip install -e '.[load]'
    JWT_SECRET=<the server's secret> locust -f tests/locustfile.py --host https://chat.example.com
    # headless: ... --headless -u 100 -r 20 -t 2m --csv results

Each virtual user needs an access token. With JWT_SECRET set, every virtual user mints its own
(`imsvc.auth.mint_token`, user `load_<random>`). Without the secret, give tokens minted beforehand
on a machine that has it, one per line, in the file named by IMSVC_TOKENS (virtual users take them
in turn; several users may share one):

    for i in $(seq 100); do JWT_SECRET=… imsvc token load_$i --ttl 7200; done > tokens.txt
    IMSVC_TOKENS=tokens.txt locust -f tests/locustfile.py --host https://chat.example.com

Each virtual user creates its own session (no assistant unless IMSVC_AI=1, so no model is billed),
then sends messages and reads them back by keyset page and by page number, and lists its sessions.
Not a pytest module: pytest collects only test_*.py.
"""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path

from locust import FastHttpUser, between, task

from imsvc.auth import mint_token

TOKEN_TTL = 4 * 3600


def _tokens() -> itertools.cycle[str] | None:
    path = os.environ.get("IMSVC_TOKENS")
    if not path:
        return None
    tokens = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not tokens:
        raise RuntimeError(f"{path} holds no tokens")
    return itertools.cycle(tokens)


TOKENS = _tokens()


def new_token() -> str:
    if TOKENS is not None:
        return next(TOKENS)
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        raise RuntimeError("set JWT_SECRET (the server's) or IMSVC_TOKENS (a file of tokens)")
    return mint_token(secret, f"load_{uuid.uuid4().hex[:12]}", TOKEN_TTL)


class ChatUser(FastHttpUser):
    """One person: their own session, a message every second or two, reading back now and then."""

    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {new_token()}"}
        self.session_id = f"load_{uuid.uuid4().hex[:16]}"
        self.last_seq = 0
        body = {"session_id": self.session_id, "ai_enabled": os.environ.get("IMSVC_AI") == "1"}
        with self.client.post("/sessions", json=body, headers=self.headers, catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"POST /sessions: {r.status_code}")

    @task(5)
    def send(self) -> None:
        body = {"session_id": self.session_id, "content": "hello from locust", "client_msg_id": uuid.uuid4().hex}
        with self.client.post("/message/send", json=body, headers=self.headers, catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"POST /message/send: {r.status_code}")
                return
            self.last_seq = max(self.last_seq, int(r.json()["seq"]))

    @task(3)
    def list_keyset(self) -> None:
        self.client.get(
            f"/message/list?session_id={self.session_id}&before_seq={self.last_seq + 1}&limit=50",
            headers=self.headers,
            name="/message/list?before_seq",
        )

    @task(1)
    def list_page(self) -> None:
        self.client.get(
            f"/message/list?session_id={self.session_id}&page=1&page_size=20",
            headers=self.headers,
            name="/message/list?page",
        )

    @task(1)
    def sessions(self) -> None:
        self.client.get("/sessions", headers=self.headers)
