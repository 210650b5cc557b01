"""A local traffic router on 127.0.0.1 in front of predictor processes: blue-green, shadow and A/B run through it.

``with Router(Routes(live=champion), model_name=NAME, log=inference_log) as router:`` serves on
``router.url`` (a free loopback port, uvicorn in a background thread) and forwards every request
(any method and path, body and ``content-type`` as they came) by the current :class:`Routes`:

- ``mode="live"``: to ``routes.live`` (blue-green: blue, then green after :meth:`Router.switch`);
- ``mode="mirror"`` (shadow): to ``routes.live``, whose answer is returned, and a copy to
  ``routes.candidate``, whose answer is logged and counted, never returned (it is sent after the
  live answer is in hand, and nothing of it reaches the client);
- ``mode="split"`` (A/B): to the arm the request's sticky key hashes into (:func:`in_challenger`);
  the answer carries the arm in ``x-kfmlops-arm``.

Every answer carries ``x-request-id`` (the client's, else a new one) so that labels can be sent
later for it. With an :class:`~kfmlops.monitoring.store.InferenceLog`, every 200 answer of an
inference request (each upstream's, the mirrored ones included) is appended as the sink would write
it (:func:`kfmlops.monitoring.sink.records_for`): the model is ``model_name``, ``endpoint`` the
upstream's arm, ``model_version`` its version, and one request id for the live and the mirrored
answer. :meth:`Router.switch` replaces the routes in one assignment: a request sees the old routes
or the new ones, never a mix. :meth:`Router.stats` counts requests, errors and latency per arm.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Literal

import httpx
import numpy as np
import orjson

from kfmlops.monitoring.payloads import request_rows
from kfmlops.monitoring.sink import REQUEST, RESPONSE, InferenceEvent, records_for
from kfmlops.monitoring.store import InferenceLog
from kfmlops.serving.process import LOOPBACK, free_port

ARM_HEADER = "x-kfmlops-arm"
REQUEST_ID_HEADER = "x-request-id"
_FORWARDED = ("content-type", "accept", REQUEST_ID_HEADER)


@dataclass(frozen=True)
class Upstream:
    """One predictor behind the router: its arm's name, the registry version it serves, its base URL."""

    arm: str
    version: str
    url: str


@dataclass(frozen=True)
class Routes:
    """Where requests go (see the module docstring); ``percent``, ``key_header``, ``key_column`` and
    ``salt`` are the split's: the share of keys sent to ``candidate`` and how a request's key is found."""

    live: Upstream
    candidate: Upstream | None = None
    mode: Literal["live", "mirror", "split"] = "live"
    percent: int = 0
    key_header: str = "x-kfmlops-key"
    key_column: str | None = None
    salt: str = ""

    def __post_init__(self) -> None:
        if self.mode != "live" and self.candidate is None:
            raise ValueError(f"routes in mode {self.mode!r} need a candidate")


def in_challenger(key: str, percent: float, salt: str) -> bool:
    """Whether ``key`` falls in the challenger's ``percent`` of the key space: the first 8 bytes of
    SHA-256(salt, key) as a fraction of 2**64, below ``percent / 100``. The same key always lands
    on the same arm; keys spread over the arms in proportion."""
    digest = hashlib.sha256(salt.encode() + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") < percent / 100 * 2**64


def sticky_key(headers: dict[str, str], body: object, routes: Routes, request_id: str) -> str:
    """A request's key: the ``routes.key_header`` header, else the ``routes.key_column`` input of its
    first instance, else its request id."""
    if headers.get(routes.key_header):
        return headers[routes.key_header]
    if routes.key_column:
        rows = request_rows(body)
        if rows and rows[0].get(routes.key_column) is not None:
            return str(rows[0][routes.key_column])
    return request_id


@dataclass
class _ArmStats:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, seconds: float, failed: bool) -> None:
        self.requests += 1
        self.errors += failed
        self.latencies.append(seconds)

    def summary(self) -> dict:
        p50, p99 = (float(np.percentile(self.latencies, q)) * 1000 for q in (50, 99)) if self.latencies else (None, None)
        return {"requests": self.requests, "errors": self.errors, "p50_ms": p50, "p99_ms": p99}


class Router:
    """The router process-local server (see the module docstring)."""

    def __init__(self, routes: Routes, *, model_name: str, log: InferenceLog | None = None, timeout_s: float = 30.0):
        self.routes = routes
        self.model_name = model_name
        self.log = log
        self.timeout_s = timeout_s
        self.port: int | None = None
        self._stats: dict[str, _ArmStats] = {}
        self._server = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._mirrors: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def switch(self, routes: Routes) -> float:
        """Route every request from now on by ``routes``; returns the seconds the switch took."""
        began = time.perf_counter()
        self.routes = routes
        return time.perf_counter() - began

    def stats(self) -> dict[str, dict]:
        """Per arm: requests forwarded, errors (5xx, transport), p50 and p99 latency in ms."""
        return {arm: s.summary() for arm, s in self._stats.items()}

    def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until the mirrored requests in flight are answered, then commit the log's buffered rows."""
        deadline = time.monotonic() + timeout_s
        while self._mirrors and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.log is not None:
            self.log.flush()

    def start(self, ready_timeout_s: float = 10.0) -> "Router":
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(self._app, host=LOOPBACK, port=self.port, lifespan="on", log_level="warning", interface="asgi3",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="kfmlops-router", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the router did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving once the mirrored requests in flight are answered, and flush the log."""
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(30)
        if self.log is not None:
            self.log.flush()

    def __enter__(self) -> "Router":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the ASGI application ---------------------------------------------------------------------

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._client = httpx.AsyncClient(timeout=self.timeout_s)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await asyncio.gather(*self._mirrors)
                    await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        headers[REQUEST_ID_HEADER] = request_id
        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        routes = self.routes  # one snapshot per request: a switch never splits a request
        parsed = _json(bytes(body))
        target = routes.live
        if routes.mode == "split" and in_challenger(sticky_key(headers, parsed, routes, request_id), routes.percent, routes.salt):
            target = routes.candidate
        status, content, kind = await self._forward(target, scope["method"], path, headers, bytes(body), parsed, request_id)
        if routes.mode == "mirror":
            task = asyncio.create_task(self._forward(routes.candidate, scope["method"], path, headers, bytes(body), parsed,
                                                     request_id))
            self._mirrors.add(task)
            task.add_done_callback(self._mirrors.discard)
        answer = [(b"content-type", kind.encode()), (REQUEST_ID_HEADER.encode(), request_id.encode())]
        if routes.mode == "split":
            answer.append((ARM_HEADER.encode(), target.arm.encode()))
        await send({"type": "http.response.start", "status": status, "headers": answer})
        await send({"type": "http.response.body", "body": content})

    async def _forward(self, upstream: Upstream, method: str, path: str, headers: dict[str, str], body: bytes,
                       parsed: object, request_id: str) -> tuple[int, bytes, str]:
        """Send the request to ``upstream``; count it; log a 200 inference answer. Returns (status, body, content type)."""
        forwarded = {k: v for k, v in headers.items() if k in _FORWARDED}
        began = time.perf_counter()
        try:
            response = await self._client.request(method, upstream.url + path, content=body, headers=forwarded)
            status, content, kind = response.status_code, response.content, response.headers.get("content-type", "application/json")
        except httpx.HTTPError as exc:
            status, content, kind = 502, orjson.dumps({"error": f"{upstream.arm}: {type(exc).__name__}: {exc}"}), "application/json"
        self._stats.setdefault(upstream.arm, _ArmStats()).add(time.perf_counter() - began, status >= 500)
        if self.log is not None and status == 200 and method == "POST" and path.endswith((":predict", "/infer")):
            self.log.append(self._records(upstream, request_id, parsed, _json(content)))
        return status, content, kind

    def _records(self, upstream: Upstream, request_id: str, request: object, response: object):
        now = datetime.now(timezone.utc)
        events = [InferenceEvent(request_id, kind, self.model_name, upstream.arm, now, body)
                  for kind, body in ((REQUEST, request), (RESPONSE, response))]
        return [replace(r, model_version=upstream.version) for r in records_for(*events)]


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
