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

:func:`create_app` is a plain ASGI application (``POST`` any path: an event, answered 200 once
buffered; ``GET /healthz``), served by uvicorn. On shutdown every pending event is written and the
log committed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from kfmlops.monitoring.config import InferenceLogConfig, SinkConfig
from kfmlops.monitoring.payloads import request_rows, response_rows
from kfmlops.monitoring.store import InferenceLog, PredictionRecord, import_ground_truth

log = logging.getLogger(__name__)

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
_STRUCTURED = "application/cloudevents+json"


class EventError(ValueError):
    """The HTTP request is not an inference-log CloudEvent; the message says why (answered 400)."""


@dataclass(frozen=True)
class InferenceEvent:
    id: str
    kind: str  # REQUEST or RESPONSE
    model: str | None  # ce-inferenceservicename
    endpoint: str | None
    time: datetime
    body: Any
    size: int = 0  # bytes of the HTTP body, counted against the pending buffer's byte budget


def parse_event(headers: dict[str, str], body: bytes, received: datetime) -> InferenceEvent:
    """An :class:`InferenceEvent` from lower-cased HTTP headers and the body; raises :class:`EventError`."""
    try:
        payload = json.loads(body) if body else None
    except ValueError as exc:
        raise EventError(f"body is not JSON: {exc}") from None
    if headers.get("content-type", "").startswith(_STRUCTURED):
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
    return InferenceEvent(
        id=event_id,
        kind=kind,
        model=attributes.get("inferenceservicename"),
        endpoint=attributes.get("endpoint"),
        time=_parse_time(attributes.get("time"), received),
        body=payload,
        size=len(body),
    )


def _parse_time(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return default
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


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
    Not thread-safe: the sink calls it from its event loop only.
    """

    def __init__(
        self, timeout_s: float, max_pending: int, max_pending_bytes: int = 1 << 62, clock: Callable[[], float] = time.monotonic
    ):
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.clock = clock
        self._pending_bytes = 0
        self._pending: OrderedDict[tuple[str | None, str], tuple[float, InferenceEvent]] = OrderedDict()
        self._done: OrderedDict[tuple[str | None, str], None] = OrderedDict()  # recently joined: drop redeliveries
        self.joined = 0
        self.unmatched = 0
        self.duplicates = 0

    def add(self, event: InferenceEvent) -> list[PredictionRecord]:
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
        self._pending[key] = (self.clock(), event)
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
            key, (since, _) = next(iter(self._pending.items()))
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

    def _write_alone(self, key, waiting: tuple[float, InferenceEvent]) -> list[PredictionRecord]:
        event = waiting[1]
        self._pending_bytes -= event.size
        self._remember(key)
        self.unmatched += 1
        return records_for(event, None) if event.kind == REQUEST else records_for(None, event)

    def _remember(self, key) -> None:
        self._done[key] = None
        while len(self._done) > self.max_pending:
            self._done.popitem(last=False)


def create_app(log_: InferenceLog, config: SinkConfig):
    """The sink as an ASGI application writing into ``log_``; the app closes the log at shutdown."""
    joiner = EventJoiner(config.join_timeout_s, config.max_pending, config.max_pending_bytes)
    state: dict[str, Any] = {}

    async def write(records: list[PredictionRecord]) -> None:
        if records:
            await asyncio.to_thread(log_.append, records)

    async def expire_periodically() -> None:
        while True:
            await asyncio.sleep(min(1.0, config.join_timeout_s / 2))
            await write(joiner.expire())

    async def lifespan(receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["expirer"] = asyncio.create_task(expire_periodically())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                state["expirer"].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state["expirer"]
                await write(joiner.drain())
                await asyncio.to_thread(log_.close)
                log.info("sink: %d joined, %d unmatched, %d duplicates dropped, %d rows committed",
                         joiner.joined, joiner.unmatched, joiner.duplicates, log_.rows_committed)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] in ("/healthz", "/ready"):
            await _respond(send, 200, {"status": "ok", "pending": joiner.pending})
            return
        if scope["method"] != "POST":
            await _respond(send, 405, {"error": "POST CloudEvents here"})
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > config.max_body_bytes:
                await _respond(send, 413, {"error": f"event larger than {config.max_body_bytes} bytes"})
                return
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            event = parse_event(headers, bytes(body), datetime.now(timezone.utc))
        except EventError as exc:
            await _respond(send, 400, {"error": str(exc)})
            return
        await write(joiner.add(event))
        await _respond(send, 200, {"accepted": event.id})

    return app


async def _respond(send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve(config: SinkConfig) -> None:
    """Run the sink with uvicorn until SIGINT/SIGTERM, then write what is pending and commit."""
    import uvicorn

    app = create_app(InferenceLog(config.log), config)
    uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, lifespan="on", log_level="warning")).run()


def main(argv: list[str] | None = None) -> int:
    """``kfmlops sink serve`` runs the receiver; ``kfmlops sink import-labels`` commits ground truth."""
    parser = argparse.ArgumentParser(prog="kfmlops sink", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="receive inference-log CloudEvents into Parquet")
    run.add_argument("--config", help="sink YAML (SinkConfig); flags below override it")
    run.add_argument("--root", help="the inference log directory")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    labels = commands.add_parser("import-labels", help="commit a file of request id -> label under the log")
    labels.add_argument("--root", required=True)
    labels.add_argument("file")
    labels.add_argument("--label-column", default="label")
    labels.add_argument("--request-id-column", default="request_id")
    labels.add_argument("--positive-label", action="append", help="a label value meaning positive (repeatable)")
    args = parser.parse_args(argv)

    if args.command == "import-labels":
        positives = args.positive_label or [1, True, "1"]
        n = import_ground_truth(args.root, args.file, label=args.label_column,
                                request_id=args.request_id_column, positive_labels=positives)
        print(f"imported {n} labels into {args.root}")
        return 0
    if args.config:
        config = SinkConfig.from_yaml(args.config)
    elif args.root:
        config = SinkConfig(log=InferenceLogConfig(root=args.root))
    else:
        parser.error("serve needs --config or --root")
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.root and args.config:
        overrides["log"] = config.log.model_copy(update={"root": args.root})
    serve(config.model_copy(update=overrides))
    return 0
