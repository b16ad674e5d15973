"""A fault-injecting HTTP proxy for AWS JSON APIs, put in front of moto's server on 127.0.0.1.

Clients reach it through ``AWS_ENDPOINT_URL`` (or ``endpoint_url``); it forwards every request
to moto and, for the operations it is told to disturb (by ``X-Amz-Target``, as both EventBridge
and SQS speak the AWS JSON protocol), deals one fault per call from a deck that a seeded
random generator shuffles (so each share holds exactly over every ``deck`` calls, and every
kind of fault is met in a short test):

- ``throttle``: HTTP 400 with the service's throttling error body, as AWS answers; nothing is
  forwarded.
- ``partial``: some entries of a batch call fail (PutEvents ``ErrorCode``/``ErrorMessage`` and
  ``FailedEntryCount``; SQS batch calls ``Failed``). The failing entries are chosen before
  forwarding and left out of the forwarded request, so an entry reported failed never took
  effect, and their failures are spliced into the reply at their indices.
- ``reset``: the socket is closed without a reply, before forwarding (nothing took effect).
- ``reset_after``: the request is forwarded, then the socket is closed without the reply (it
  took effect, the client cannot know: the case that makes duplicates).
- ``slow``: the request is held a few hundred milliseconds before it is forwarded; if the
  client went away meanwhile (killed), it is dropped, as a request still in transit would be.

It is bounded: request bodies are capped, the upstream call times out, and the server shuts
itself down after ``lifetime`` seconds if the test has not stopped it before.
"""

from __future__ import annotations

import http.client
import json
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MAX_BODY_BYTES = 4 * 1024 * 1024
UPSTREAM_TIMEOUT = 30.0
# Hop-by-hop headers (RFC 9110 7.6.1) and the length, which the proxy sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)

# The throttling error each service answers with (code in the JSON protocol's ``__type``).
THROTTLE_ERRORS = {"AWSEvents": "ThrottlingException", "AmazonSQS": "RequestThrottled"}
# Per-entry failure codes AWS documents as retryable.
PUT_EVENTS_ENTRY_CODES = ("ThrottlingException", "InternalFailure")

KINDS = ("throttle", "partial", "reset", "reset_after", "slow")


@dataclass(frozen=True)
class FaultPlan:
    """Which calls to disturb, and the share of calls that meet each fault (the rest pass)."""

    operations: frozenset[str]  # X-Amz-Target values, e.g. "AWSEvents.PutEvents"
    throttle: float = 0.0
    partial: float = 0.0  # a partial fault dealt to a call that is not a batch passes it
    reset: float = 0.0
    reset_after: float = 0.0
    slow: float = 0.0
    slow_seconds: tuple[float, float] = (0.2, 0.5)
    deck: int = 100  # calls per shuffled deck

    def cards(self) -> list[str | None]:
        cards: list[str | None] = []
        for kind in KINDS:
            share = getattr(self, kind)
            count = round(share * self.deck)
            assert count or not share, f"{kind}={share} is less than one call in {self.deck}"
            cards += [kind] * count
        assert len(cards) <= self.deck, "the shares add up to more than every call"
        return cards + [None] * (self.deck - len(cards))


@dataclass
class FaultProxy:
    """``with FaultProxy(upstream, plan, seed) as proxy:`` serves on ``proxy.url``."""

    upstream: str
    plan: FaultPlan
    seed: int
    lifetime: float = 180.0
    counts: Counter[str] = field(default_factory=Counter)
    # Set whenever a ``slow`` call starts being held: a test can act at that moment (kill the
    # client while its request has not reached the service).
    holding: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _timer: threading.Timer | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._deck: list[str | None] = []
        parts = urlsplit(self.upstream)
        assert parts.hostname in ("127.0.0.1", "localhost"), "the proxy only talks to 127.0.0.1"
        self._upstream = (parts.hostname, parts.port or 80)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.proxy = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="fault-proxy",
            daemon=True,
        ).start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if self._timer is not None:
            self._timer.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def injected(self) -> int:
        return sum(self.counts[kind] for kind in KINDS)

    def summary(self) -> str:
        calls = self.counts["calls"]
        return f"calls={calls} " + " ".join(
            f"{k}={self.counts[k]}" for k in (*KINDS, "failed_entries", "abandoned")
        )

    # -- decisions ----------------------------------------------------------------------------

    def choose(self, target: str) -> str | None:
        """The fault for one call of ``target``, or None to pass it through."""
        if target not in self.plan.operations:
            return None
        with self._lock:
            self.counts["calls"] += 1
            if not self._deck:
                self._deck = self.plan.cards()
                self._rng.shuffle(self._deck)
            kind = self._deck.pop()
            if kind is None or (kind == "partial" and not _batched(target)):
                return None
            self.counts[kind] += 1
            return kind

    def pick_failures(self, count: int) -> list[int]:
        """Indices of the entries that fail in a partial failure (at least one)."""
        with self._lock:
            failing = sorted(
                self._rng.sample(range(count), self._rng.randint(1, max(1, count // 2)))
            )
            self.counts["failed_entries"] += len(failing)
            return failing

    def pause(self) -> float:
        with self._lock:
            return self._rng.uniform(*self.plan.slow_seconds)

    def entry_code(self) -> str:
        with self._lock:
            return self._rng.choice(PUT_EVENTS_ENTRY_CODES)


def _batched(target: str) -> bool:
    return target == "AWSEvents.PutEvents" or target.endswith("Batch")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    _dropped: list[dict[str, Any]]  # the entries a partial failure left out

    def do_POST(self) -> None:
        self._relay()

    def do_GET(self) -> None:
        self._relay()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"Content-Type": "text/plain"}, b"request too large\n")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        target = self.headers.get("X-Amz-Target", "")
        fault = proxy.choose(target)
        if fault == "throttle":
            self._throttle(target)
            return
        if fault == "reset":
            self._reset()
            return
        if fault == "slow":
            proxy.holding.set()
            time.sleep(proxy.pause())
            if self._client_gone():
                proxy.count("abandoned")
                self.close_connection = True
                return
        failing: list[int] = []
        if fault == "partial":
            body, failing = self._drop_entries(proxy, body)
        if failing and not json.loads(body).get("Entries"):
            status, headers, reply = (
                200,
                {"Content-Type": self.headers.get("Content-Type", "")},
                b"{}",
            )
        else:
            status, headers, reply = self._forward(proxy, body)
        if fault == "reset_after":
            self._reset()
            return
        if failing and status == 200:
            reply = self._splice_failures(proxy, target, reply, failing)
        self._reply(status, headers, reply)

    # -- upstream -----------------------------------------------------------------------------

    def _forward(self, proxy: FaultProxy, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(*proxy._upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            reply = response.read()
            return (
                response.status,
                {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP},
                reply,
            )
        finally:
            connection.close()

    # -- faults -------------------------------------------------------------------------------

    def _client_gone(self) -> bool:
        """The client closed its end (a killed process's sockets are closed by the kernel)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _throttle(self, target: str) -> None:
        service = target.partition(".")[0]
        code = THROTTLE_ERRORS.get(service, "ThrottlingException")
        content_type = self.headers.get("Content-Type") or "application/x-amz-json-1.1"
        body = json.dumps({"__type": code, "message": "Rate exceeded"}).encode()
        self._reply(400, {"Content-Type": content_type, "x-amzn-ErrorType": code}, body)

    def _reset(self) -> None:
        # SO_LINGER 0: close() sends RST, the client sees the connection reset mid-call.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _drop_entries(self, proxy: FaultProxy, body: bytes) -> tuple[bytes, list[int]]:
        request = json.loads(body)
        entries = request.get("Entries") or []
        if not entries:
            return body, []
        failing = proxy.pick_failures(len(entries))
        request["Entries"] = [e for i, e in enumerate(entries) if i not in failing]
        self._dropped = [entries[i] for i in failing]
        return json.dumps(request).encode(), failing

    def _splice_failures(
        self, proxy: FaultProxy, target: str, reply: bytes, failing: list[int]
    ) -> bytes:
        document = json.loads(reply or b"{}")
        if target == "AWSEvents.PutEvents":
            results = list(document.get("Entries", []))
            for index in failing:  # ascending: each lands at its own index
                code = proxy.entry_code()
                results.insert(index, {"ErrorCode": code, "ErrorMessage": f"injected {code}"})
            document["Entries"] = results
            document["FailedEntryCount"] = sum(1 for r in results if r.get("ErrorCode"))
        else:  # SQS batch calls answer by entry Id, not by position
            document.setdefault("Failed", []).extend(
                {
                    "Id": entry["Id"],
                    "SenderFault": False,
                    "Code": "InternalError",
                    "Message": "injected InternalError",
                }
                for entry in self._dropped
            )
            document.setdefault("Successful", [])
        return json.dumps(document).encode()

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("date", "server"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
