"""``kfmlops sink``: receives KServe inference-logger CloudEvents and appends predictions to the log.

KServe's logger POSTs each request and each response as a CloudEvent in binary mode: the body is
the V1/V2 JSON payload, the attributes are headers (``ce-id``, ``ce-type`` =
``org.kubeflow.serving.inference.request`` or ``.response``, ``ce-source``, ``ce-time``,
``ce-inferenceservicename``, ``ce-endpoint``, ...). Structured mode
(``application/cloudevents+json``, with ``data`` or ``data_base64``) is accepted too. A request and its response share ``ce-id``:
:class:`EventJoiner` pairs them and turns each pair into one :class:`PredictionRecord` per instance.
An event whose pair has not arrived within ``join_timeout_s``, or that is pushed out of the bounded
pending buffer, is written alone with nulls for the missing side; a repeated delivery of an event
already joined or pending is dropped.

What is refused (the answer names the field): a missing ``ce-id``, another ``ce-type``, a body that
is not JSON, a ``ce-time`` (structured: ``time``) that is not an RFC 3339 time between 1970 and
9999 UTC, a request instance with no inputs (400), a body over ``max_body_bytes`` and an event of
more than ``max_rows_per_event`` (or ``log.max_buffered_rows``) instances or predictions (413). A request with no recognisable
instances is logged as one row without inputs. Nothing refused touches the log or other events.

:func:`create_app` is a plain ASGI application (``POST`` any path: an event; ``GET /healthz``;
``GET /metrics``, Prometheus: :mod:`~kfmlops.monitoring.sink_metrics`),
served by uvicorn. An event is answered 200 only once it is durable: appended to the write-ahead
log (:mod:`~kfmlops.monitoring.wal`) and fsync'd, together with the other events that arrived
meanwhile (group commit). One task then feeds the events to the joiner and the inference log's
buffer, in write-ahead-log order. Every ``log.flush_interval_s`` (or ``wal_checkpoint_bytes``) it
checkpoints: the current segment is sealed, the buffered rows are committed to Parquet, and the
sealed segments whose events are all committed are deleted (a segment holding an event still
waiting for its pair is kept). At start the sink replays whatever a previous sink left in the
write-ahead log, skipping the events whose request ids the Parquet files committed since then
already hold, so a SIGKILL loses no acknowledged event and duplicates none. On shutdown every
pending event is written, the log committed and the write-ahead log removed. A failure in the
background (a commit that fails) is logged, counted in ``/healthz`` and retried; it never stops
the sink, and the events stay in the write-ahead log until they are committed.

In production: with ``auth_token_file`` (or ``$KFMLOPS_SINK_AUTH_TOKEN_FILE``) every POST must carry
``Authorization: Bearer <token>`` (:mod:`~kfmlops.monitoring.bearer`; 401 otherwise, nothing
written); with ``tls_cert_file`` and ``tls_key_file`` it serves HTTPS where the mesh does not. Every
``compaction.interval_minutes`` it merges the small files of closed hours
(:mod:`~kfmlops.monitoring.compaction`; ``kfmlops sink compact`` does it on demand).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from kfmlops.monitoring.bearer import BearerToken
from kfmlops.monitoring.compaction import compact
from kfmlops.monitoring.config import InferenceLogConfig, SinkConfig
from kfmlops.monitoring.payloads import request_rows, response_rows
from kfmlops.monitoring.sink_metrics import CONTENT_TYPE, SinkMetrics
from kfmlops.monitoring.store import InferenceLog, PredictionRecord, committed_request_ids, import_ground_truth
from kfmlops.monitoring.wal import WriteAheadLog, sync

log = logging.getLogger(__name__)

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
_STRUCTURED = "application/cloudevents+json"
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
_CLOCK_SLACK_NS = 600 * 10**9  # replay reads files committed up to 10 min before the oldest segment (clock steps)
_MAX_SYNCS_IN_FLIGHT = 8
AUTH_TOKEN_ENV = "KFMLOPS_SINK_AUTH_TOKEN_FILE"


class EventError(ValueError):
    """The HTTP request is not an acceptable inference-log CloudEvent; the message says why and
    ``status`` is the answer (400, or 413 for an event of too many rows)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferenceEvent:
    id: str
    kind: str  # REQUEST or RESPONSE
    model: str | None  # ce-inferenceservicename
    endpoint: str | None
    time: datetime
    body: Any
    size: int = 0  # bytes of the HTTP body, counted against the pending buffer's byte budget


def parse_event(headers: dict[str, str], body: bytes, received: datetime, max_rows: int | None = None) -> InferenceEvent:
    """An :class:`InferenceEvent` from lower-cased HTTP headers and the body; raises :class:`EventError`
    (see the module docstring for what is refused; ``max_rows`` None: any number of rows)."""
    try:
        payload = json.loads(body) if body else None
    except ValueError as exc:
        raise EventError(f"body is not JSON: {exc}") from None
    structured = headers.get("content-type", "").startswith(_STRUCTURED)
    if structured:
        if not isinstance(payload, dict):
            raise EventError("a structured CloudEvent must be a JSON object")
        attributes = {k: str(v) for k, v in payload.items() if k not in ("data", "data_base64")}
        try:
            payload = json.loads(base64.b64decode(payload["data_base64"])) if "data_base64" in payload else payload.get("data")
        except ValueError as exc:
            raise EventError(f"data_base64 is not base64-encoded JSON: {exc}") from None
    else:
        attributes = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
    event_id, kind = attributes.get("id"), attributes.get("type")
    if not event_id:
        raise EventError("missing CloudEvent id (ce-id)")
    if kind not in (REQUEST, RESPONSE):
        raise EventError(f"CloudEvent type {kind!r} is neither {REQUEST} nor {RESPONSE}")
    event = InferenceEvent(
        id=event_id,
        kind=kind,
        model=attributes.get("inferenceservicename"),
        endpoint=attributes.get("endpoint"),
        time=_parse_time(attributes.get("time"), received, "time" if structured else "ce-time"),
        body=payload,
        size=len(body),
    )
    _check_rows(event, max_rows)
    return event


def _parse_time(value: str | None, default: datetime, field: str) -> datetime:
    """``value`` as a UTC time (no zone: UTC); ``default`` when absent; EventError naming ``field`` otherwise."""
    if not value:
        return default
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise EventError(f"{field} {value!r} is not an RFC 3339 time") from None
    try:
        ts = (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:
        ts = None
    if ts is None or not _EARLIEST <= ts <= _LATEST:
        raise EventError(f"{field} {value!r} is out of range: the log takes times from 1970 to 9999 UTC")
    return ts


def _check_rows(event: InferenceEvent, max_rows: int | None) -> None:
    """Refuse empty request instances, and events of more than ``max_rows`` rows (413)."""
    body = event.body if isinstance(event.body, dict) else {}
    if event.kind == REQUEST:
        rows, field = request_rows(body), next((k for k in ("instances", "inputs") if k in body), "instances")
        empty = next((i for i, row in enumerate(rows) if not row), None)
        if empty is not None:
            raise EventError(f"{field}[{empty}] is empty: every instance needs its inputs")
    else:
        rows, field = response_rows(body)[0], next((k for k in ("predictions", "outputs") if k in body), "predictions")
    if max_rows is not None and len(rows) > max_rows:
        raise EventError(f"{field} holds {len(rows)} rows; the sink takes at most {max_rows} per event "
                         "(max_rows_per_event): send smaller batches", 413)


def records_for(request: InferenceEvent | None, response: InferenceEvent | None) -> list[PredictionRecord]:
    """One record per instance of a request/response pair; either side may be missing (nulls)."""
    first = request or response
    inputs = request_rows(request.body) if request else []
    outputs, model_name, version = response_rows(response.body) if response else ([], None, None)
    model = first.model or model_name or "unknown"
    endpoint = (response and response.endpoint) or first.endpoint
    n = max(len(inputs), len(outputs), 1)
    return [
        PredictionRecord(
            model=model,
            request_id=first.id,
            inputs=inputs[i] if i < len(inputs) else {},
            output=outputs[i] if i < len(outputs) else None,
            row_index=i,
            model_version=version,
            endpoint=endpoint,
            timestamp=first.time,
        )
        for i in range(n)
    ]


class EventJoiner:
    """Pairs request and response events by (model, id) with a bounded, time-limited pending buffer.

    At most ``max_pending`` events and ``max_pending_bytes`` of bodies wait; past either, the oldest
    is written alone. Every method returns the records that are now complete and should be written.
    Each event may carry the write-ahead-log segment it is in (added in segment order), so that
    :attr:`oldest_segment` says which segments still hold a waiting event.
    Not thread-safe: the sink calls it from one task only.
    """

    def __init__(
        self, timeout_s: float, max_pending: int, max_pending_bytes: int = 1 << 62, clock: Callable[[], float] = time.monotonic
    ):
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.clock = clock
        self._pending_bytes = 0
        self._pending: OrderedDict[tuple[str | None, str], tuple[float, InferenceEvent, int]] = OrderedDict()
        self._done: OrderedDict[tuple[str | None, str], None] = OrderedDict()  # recently joined: drop redeliveries
        self.joined = 0
        self.unmatched = 0
        self.duplicates = 0

    def add(self, event: InferenceEvent, segment: int = 0) -> list[PredictionRecord]:
        key = (event.model, event.id)
        if key in self._done:
            self.duplicates += 1
            return []
        waiting = self._pending.get(key)
        if waiting is not None:
            other = waiting[1]
            if other.kind == event.kind:
                self.duplicates += 1
                return []
            del self._pending[key]
            self._pending_bytes -= other.size
            self._remember(key)
            self.joined += 1
            request, response = (other, event) if event.kind == RESPONSE else (event, other)
            return records_for(request, response)
        self._pending[key] = (self.clock(), event, segment)
        self._pending_bytes += event.size
        records = []
        while len(self._pending) > self.max_pending or self._pending_bytes > self.max_pending_bytes:
            records += self._write_alone(*self._pending.popitem(last=False))
        return records

    def expire(self) -> list[PredictionRecord]:
        """Records for events that waited longer than ``timeout_s``."""
        deadline = self.clock() - self.timeout_s
        records = []
        while self._pending:
            key, (since, *_) = next(iter(self._pending.items()))
            if since > deadline:
                break
            records += self._write_alone(key, self._pending.pop(key))
        return records

    def drain(self) -> list[PredictionRecord]:
        """Records for every pending event (at shutdown)."""
        records = []
        while self._pending:
            records += self._write_alone(*self._pending.popitem(last=False))
        return records

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def oldest_segment(self) -> int | None:
        """The write-ahead-log segment of the oldest waiting event; None when none waits."""
        return next(iter(self._pending.values()))[2] if self._pending else None

    def _write_alone(self, key, waiting: tuple[float, InferenceEvent, int]) -> list[PredictionRecord]:
        event = waiting[1]
        self._pending_bytes -= event.size
        self._remember(key)
        self.unmatched += 1
        return records_for(event, None) if event.kind == REQUEST else records_for(None, event)

    def _remember(self, key) -> None:
        self._done[key] = None
        while len(self._done) > self.max_pending:
            self._done.popitem(last=False)


class Unavailable(RuntimeError):
    """The event could not be made durable (answered 503); the message says why."""


class Sink:
    """The sink's state: the write-ahead log, the joiner and ``log_``, driven by one committer task.

    :meth:`start` opens the write-ahead log and replays it, :meth:`submit` returns once an event is
    durable, :meth:`stop` commits everything and removes the write-ahead log (see the module
    docstring). Runs on one asyncio event loop; file I/O happens in worker threads.
    """

    def __init__(self, log_: InferenceLog, config: SinkConfig):
        self.log = log_
        self.config = config
        self.joiner = EventJoiner(config.join_timeout_s, config.max_pending, config.max_pending_bytes)
        self.wal: WriteAheadLog | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.failing = False  # the last write or commit failed; cleared by the next commit that succeeds
        self.replayed = 0
        self.events = self.fsyncs = 0  # acknowledged events, and the group commits they took
        self._waiting: list[tuple[InferenceEvent, bytes, bytes, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._committer: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        self._checkpoint: asyncio.Task | None = None
        self._compactor: asyncio.Task | None = None

    async def start(self) -> None:
        self.wal = await asyncio.to_thread(WriteAheadLog, self.config.wal_path)
        await asyncio.to_thread(self._replay)
        self._committer = asyncio.create_task(self._commit_forever())
        self._ticker = asyncio.create_task(self._tick())
        if self.config.compaction.interval_minutes:
            self._compactor = asyncio.create_task(self._compact_periodically())

    async def submit(self, event: InferenceEvent, headers: dict[str, str], body: bytes, received: datetime) -> None:
        """Return once ``event`` is in the write-ahead log, fsync'd; raises :class:`Unavailable`."""
        if self._stopping:
            raise Unavailable("the sink is shutting down")
        while self.log.buffered >= 2 * self.config.log.max_buffered_rows:  # bounds the rows in memory
            if self.failing:
                raise Unavailable(f"the inference log is not committing ({self.last_error}); retry later")
            if self._checkpoint is None or self._checkpoint.done():
                break  # the committer starts a commit with the next batch
            await asyncio.shield(self._checkpoint)  # back-pressure: wait for the commit under way
        kept = {k: v for k, v in headers.items() if k.startswith("ce-") or k == "content-type"}
        meta = json.dumps({"headers": kept, "received": received.isoformat()}).encode()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((event, meta, body, future))
        self._wake.set()
        await future

    async def stop(self) -> None:
        """Write every pending event, commit the log and remove the write-ahead log; on a failure
        the write-ahead log is kept for the next start (logged, never raised)."""
        self._stopping = True
        self._ticker.cancel()
        if self._compactor is not None:
            self._compactor.cancel()
        self._wake.set()
        try:
            if self._committer is not None:
                await self._committer
            if self._checkpoint is not None:
                await self._checkpoint
            await asyncio.to_thread(self.log.append, self.joiner.drain())
            await asyncio.to_thread(self.log.close)
            await asyncio.to_thread(self.wal.close, True)
        except Exception:
            log.exception("sink: committing at shutdown failed; the write-ahead log %s keeps the events for the "
                          "next start", self.config.wal_path)
            if self.wal is not None:
                with contextlib.suppress(OSError):  # closed already
                    self.wal.close()
        log.info("sink: %d events in %d write-ahead fsyncs; %d joined, %d unmatched, %d duplicates dropped, "
                 "%d replayed, %d rows committed", self.events, self.fsyncs, self.joiner.joined, self.joiner.unmatched,
                 self.joiner.duplicates, self.replayed, self.log.rows_committed)

    def health(self) -> dict[str, Any]:
        return {"status": "degraded" if self.failing else "ok", "pending": self.joiner.pending,
                "buffered_rows": self.log.buffered, "wal_segments": self.wal.segments if self.wal else 0,
                "errors": self.errors, "last_error": self.last_error}

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self.failing = True
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        log.error("sink: %s failed (retried; the events stay in the write-ahead log)", what, exc_info=exc)

    def _replay(self) -> None:
        """Feed what earlier sinks left in the write-ahead log to the joiner, skipping committed requests."""
        since = self.wal.adopted_since_ns()
        if since is None:
            return
        committed = committed_request_ids(self.log.root, since - _CLOCK_SLACK_NS)
        records = []
        for segment, meta, body in self.wal.replay():
            info = json.loads(meta)
            try:
                event = parse_event(info["headers"], body, datetime.fromisoformat(info["received"]))
            except EventError as exc:  # accepted by an older sink with other rules
                log.warning("sink: write-ahead log entry skipped: %s", exc)
                continue
            if event.id not in committed:
                records += self.joiner.add(event, segment)
                self.replayed += 1
        self.log.append(records)
        log.info("sink: replayed %d events from the write-ahead log (%d requests already committed)",
                 self.replayed, len(committed))

    async def _compact_periodically(self) -> None:
        """Compact the log's closed hours every ``compaction.interval_minutes`` (an hour another
        replica is compacting is skipped); a failure is logged and counted, and never refuses events."""
        while True:
            await asyncio.sleep(self.config.compaction.interval_minutes * 60)
            try:
                done = await asyncio.to_thread(compact, self.log.root, self.config.compaction, self.config.log.compression)
            except Exception as exc:
                self.errors += 1
                self.last_error = f"compacting the log: {type(exc).__name__}: {exc}"
                log.exception("sink: compacting the log failed (tried again in %s min)", self.config.compaction.interval_minutes)
                continue
            log.info("sink: compacted %d files into %d (%d rows) in %d closed hours", done.inputs, done.outputs, done.rows,
                     done.hours)

    async def _tick(self) -> None:
        """Wake the committer now and then: waiting events expire even when nothing arrives."""
        while True:
            await asyncio.sleep(min(1.0, self.config.join_timeout_s / 2, self.config.log.flush_interval_s))
            self._wake.set()

    async def _commit_forever(self) -> None:
        """The one task that writes the write-ahead log, feeds the joiner and the log's buffer (in
        write-ahead-log order, so a checkpoint knows what it covers), and checkpoints."""
        last_checkpoint = time.monotonic()
        syncing: set[asyncio.Task] = set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if not batch and self._stopping:
                await asyncio.gather(*syncing)
                return
            try:
                records = []
                if batch:
                    if len(syncing) >= _MAX_SYNCS_IN_FLIGHT:
                        await asyncio.wait(syncing, return_when=asyncio.FIRST_COMPLETED)
                    records = self._write_ahead(batch, syncing)
                records += self.joiner.expire()
                self.log.append(records, commit_when_full=False)
                due = (time.monotonic() - last_checkpoint >= self.config.log.flush_interval_s
                       or self.log.buffered >= self.config.log.max_buffered_rows
                       or self.wal.written >= self.config.wal_checkpoint_bytes)
                if due and (self.wal.written or self.wal.segments > 1) and (
                    self._checkpoint is None or self._checkpoint.done()
                ):
                    last_checkpoint = time.monotonic()
                    await asyncio.gather(*syncing)  # the segment's descriptor is closed when it is sealed
                    sealed = await asyncio.to_thread(self.wal.rotate)
                    oldest = self.joiner.oldest_segment
                    upto = sealed if oldest is None else min(sealed, oldest - 1)
                    self._checkpoint = asyncio.create_task(self._commit_and_release(upto))
            except Exception as exc:  # never stops the committer: the events stay in the write-ahead log
                self._failed("committing predictions", exc)

    def _write_ahead(self, batch: list[tuple[InferenceEvent, bytes, bytes, asyncio.Future]],
                     syncing: set[asyncio.Task]) -> list[PredictionRecord]:
        """Write ``batch`` to the write-ahead log and join its events; a task in ``syncing`` fsyncs it
        and then acknowledges it (the next batch is written meanwhile)."""
        futures = [future for *_, future in batch]
        try:
            segment, fd = self.wal.write([(meta, body) for _, meta, body, _ in batch])
        except Exception as exc:
            self._failed("writing the write-ahead log", exc)
            _answer(futures, Unavailable(f"the event is not durable: {type(exc).__name__}: {exc}"))
            return []
        task = asyncio.create_task(self._sync(fd, futures))
        syncing.add(task)
        task.add_done_callback(syncing.discard)
        records = []
        for event, *_ in batch:
            try:
                records += self.joiner.add(event, segment)
            except Exception as exc:  # written, so replayed (and logged again) at the next start
                self._failed(f"joining event {event.id!r}", exc)
        return records

    async def _sync(self, fd: int, futures: list[asyncio.Future]) -> None:
        try:
            await asyncio.to_thread(sync, fd)
        except Exception as exc:
            self._failed("fsync of the write-ahead log", exc)
            _answer(futures, Unavailable(f"the event is not durable: {type(exc).__name__}: {exc}"))
            return
        self.events += len(futures)
        self.fsyncs += 1
        _answer(futures, None)

    async def _commit_and_release(self, upto: int) -> None:
        """Commit the buffered rows, then delete the write-ahead-log segments up to ``upto``."""
        try:
            await asyncio.to_thread(self.log.flush)
            await asyncio.to_thread(self.wal.release, upto)
        except Exception as exc:
            self._failed("committing predictions", exc)
            return
        self.failing = False


def _answer(futures: list[asyncio.Future], error: Exception | None) -> None:
    for future in futures:
        if not future.done():  # a client that went away cancelled its future
            future.set_exception(error) if error else future.set_result(None)


def create_app(log_: InferenceLog, config: SinkConfig):
    """The sink as an ASGI application writing into ``log_``; the app closes the log at shutdown.
    ``GET /metrics`` serves its Prometheus metrics (:mod:`~kfmlops.monitoring.sink_metrics`).

    With ``auth_token_file`` set, a POST without ``Authorization: Bearer <token>`` (or with another
    token) is answered 401 before its body is read, and nothing of it is written
    (:class:`~kfmlops.monitoring.bearer.BearerToken`); ``GET /healthz`` and ``GET /metrics`` ask no
    token (probes, the scraper).
    """
    state: dict[str, Sink] = {}
    metrics = SinkMetrics(lambda: state.get("sink"))
    token = BearerToken(config.auth_token_file) if config.auth_token_file else None

    async def lifespan(receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["sink"] = Sink(log_, config)
                await state["sink"].start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await state["sink"].stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def answer(send, status: int, payload: dict[str, Any]) -> None:
        metrics.answered(status)
        await _respond(send, status, payload)

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        sink = state["sink"]
        if scope["method"] == "GET" and scope["path"] in ("/healthz", "/ready"):
            auth = {"auth": "bearer" if token else "none", "auth_problem": token.problem if token else None}
            await _respond(send, 200, sink.health() | auth)
            return
        if scope["method"] == "GET" and scope["path"] == "/metrics":
            body = metrics.exposition()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] != "POST":
            await _respond(send, 405, {"error": "POST CloudEvents here"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if token is not None and not token.accepts(headers.get("authorization")):
            await _respond(send, 401, {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                           [(b"www-authenticate", b'Bearer realm="kfmlops-sink"')])
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > config.max_body_bytes:
                await answer(send, 413, {"error": f"event larger than {config.max_body_bytes} bytes (max_body_bytes)"})
                return
            if not message.get("more_body"):
                break
        received = datetime.now(timezone.utc)
        try:
            event = parse_event(headers, bytes(body), received, config.rows_per_event)
        except EventError as exc:
            await answer(send, exc.status, {"error": str(exc)})
            return
        try:
            await sink.submit(event, headers, bytes(body), received)
        except Unavailable as exc:
            await answer(send, 503, {"error": str(exc)})
            return
        await answer(send, 200, {"accepted": event.id})

    return app


async def _respond(send, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def server_config(app, config: SinkConfig):
    """uvicorn's settings for the sink: ``host``/``port``, and HTTPS when ``tls_cert_file`` is set."""
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, lifespan="on", log_level="warning",
                          ssl_certfile=config.tls_cert_file, ssl_keyfile=config.tls_key_file)


def serve(config: SinkConfig) -> None:
    """Run the sink with uvicorn until SIGINT/SIGTERM, then write what is pending and commit."""
    import uvicorn

    uvicorn.Server(server_config(create_app(InferenceLog(config.log), config), config)).run()


def main(argv: list[str] | None = None) -> int:
    """``kfmlops sink serve`` runs the receiver; ``kfmlops sink import-labels`` commits ground truth;
    ``kfmlops sink compact`` merges the small files of closed hours (:mod:`~kfmlops.monitoring.compaction`)."""
    parser = argparse.ArgumentParser(prog="kfmlops sink", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="receive inference-log CloudEvents into Parquet")
    run.add_argument("--config", help="sink YAML (SinkConfig); flags below override it")
    run.add_argument("--root", help="the inference log directory")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--auth-token-file", help=f"the bearer token's file (a mounted Secret); also ${AUTH_TOKEN_ENV}")
    run.add_argument("--tls-cert-file", help="serve HTTPS with this PEM certificate (with --tls-key-file)")
    run.add_argument("--tls-key-file")
    labels = commands.add_parser(
        "import-labels", help="commit a file of request id -> label (the model's class names, or numbers) under the log"
    )
    labels.add_argument("--root", required=True)
    labels.add_argument("file")
    labels.add_argument("--label-column", default="label")
    labels.add_argument("--request-id-column", default="request_id")
    compaction = commands.add_parser(
        "compact", help="merge the small Parquet files of closed hours into larger ones (safe beside running sinks)"
    )
    compaction.add_argument("--config", help="sink YAML (SinkConfig): its log root and compaction settings")
    compaction.add_argument("--root", help="the inference log directory")
    args = parser.parse_args(argv)

    if args.command == "import-labels":
        n = import_ground_truth(args.root, args.file, label=args.label_column, request_id=args.request_id_column)
        print(f"imported {n} labels into {args.root}")
        return 0
    if args.command == "compact":
        if not (args.config or args.root):
            parser.error("compact needs --config or --root")
        config = SinkConfig.from_yaml(args.config) if args.config else SinkConfig(log=InferenceLogConfig(root=args.root))
        root = args.root or config.log.root
        done = compact(root, config.compaction, config.log.compression)
        print(f"compacted {done.inputs} files into {done.outputs} ({done.rows} rows) in {done.hours} closed hours of "
              f"{root}; {done.recovered} interrupted compactions recovered, {done.busy} hours busy")
        return 0
    if args.config:
        config = SinkConfig.from_yaml(args.config)
    elif args.root:
        config = SinkConfig(log=InferenceLogConfig(root=args.root))
    else:
        parser.error("serve needs --config or --root")
    flags = {"host": args.host, "port": args.port, "auth_token_file": args.auth_token_file or os.environ.get(AUTH_TOKEN_ENV),
             "tls_cert_file": args.tls_cert_file, "tls_key_file": args.tls_key_file}
    overrides = {k: v for k, v in flags.items() if v}
    if args.root and args.config:
        overrides["log"] = config.log.model_copy(update={"root": args.root})
    serve(SinkConfig.model_validate(config.model_dump() | overrides))
    return 0
