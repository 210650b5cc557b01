"""Prometheus metrics of the predictor and the ASGI middleware that records them.

Exposed on KServe's ``/metrics`` beside its own ``request_*_seconds`` histograms:

- ``kfmlops_requests_total{model, protocol, code}``: predict/infer requests by HTTP status;
- ``kfmlops_request_duration_seconds{model, protocol}``: whole-request latency (body read, JSON
  decode, checks, scoring, encoding);
- ``kfmlops_request_errors_total{model, protocol, kind}``: answers with ``kind`` ``client`` (4xx)
  or ``server`` (5xx);
- ``kfmlops_rejected_requests_total{model, kind}``: 4xx answers by cause (``missing_column``,
  ``wrong_type``, ``unseen_category``, ``missing_value``, ``empty``, ``too_large``, ``malformed``);
- ``kfmlops_request_rows{model}``: rows per request; ``kfmlops_batch_rows{model}``: rows per
  micro-batched forward pass;
- ``kfmlops_model_info{model, registered_model, version}``: 1 for the model being served;
- ``kfmlops_predicted_class_total{model, class}``: rows predicted as each class (classification;
  binary at ``serving.decision_threshold``); ``kfmlops_predicted_probability{model}``: P(positive)
  per row (binary). A regression model's predicted values have no scale known here: none.

The middleware also answers 413 to a body over the configured size before it is read.
"""

from __future__ import annotations

import time

import orjson
from prometheus_client import Counter, Gauge, Histogram

from kfmlops.serving.schema import RequestRejected

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
PROBABILITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))

REQUESTS = Counter("kfmlops_requests", "Inference requests answered", ["model", "protocol", "code"])
DURATION = Histogram(
    "kfmlops_request_duration_seconds", "Inference request latency", ["model", "protocol"], buckets=LATENCY_BUCKETS
)
ERRORS = Counter("kfmlops_request_errors", "Inference requests answered with an error", ["model", "protocol", "kind"])
REJECTED = Counter("kfmlops_rejected_requests", "Inference requests refused as invalid, by cause", ["model", "kind"])
REQUEST_ROWS = Histogram("kfmlops_request_rows", "Rows per inference request", ["model"], buckets=ROW_BUCKETS)
BATCH_ROWS = Histogram("kfmlops_batch_rows", "Rows per micro-batched forward pass", ["model"], buckets=ROW_BUCKETS)
MODEL_INFO = Gauge("kfmlops_model_info", "The model being served", ["model", "registered_model", "version"])
PREDICTED_CLASS = Counter("kfmlops_predicted_class", "Rows predicted as each class", ["model", "class"])
PREDICTED_PROBABILITY = Histogram(
    "kfmlops_predicted_probability", "P(positive) per row (binary)", ["model"], buckets=PROBABILITY_BUCKETS
)


def route(path: str) -> tuple[str, str] | None:
    """``(model, protocol)`` of a V1 predict or V2 infer path, else None."""
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return path[len("/v1/models/") : -len(":predict")], "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return path[len("/v2/models/") :].split("/", 1)[0], "v2"
    return None


class ServingMiddleware:
    """Pure ASGI middleware: request metrics and the body-size limit for predict/infer requests."""

    def __init__(self, app, models: frozenset[str], max_body_bytes: int):
        self.app = app
        self.models = models
        self.max_body_bytes = max_body_bytes
        self._children: dict[tuple[str, str, int], tuple] = {}

    async def __call__(self, scope, receive, send):
        found = route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        model, protocol = found
        if model not in self.models:
            model = "(unknown)"  # bounded label values; the request itself is answered 404
        start = time.perf_counter()
        status = 500
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            status = 413
            await _send_error(send, status, self._too_large(int(length)))
            self._record(model, protocol, status, start)
            return

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise RequestRejected(self._too_large(received), "too_large", 413)
            return message

        try:
            await self.app(scope, receive_limited, send_status)
        finally:
            self._record(model, protocol, status, start)

    def _too_large(self, size: int) -> str:
        return f"the request body has {size} bytes or more; the limit is {self.max_body_bytes} (serving.max_body_bytes)"

    def _record(self, model: str, protocol: str, status: int, start: float) -> None:
        key = (model, protocol, status)
        children = self._children.get(key)
        if children is None:
            kind = "server" if status >= 500 else "client" if status >= 400 else None
            children = self._children[key] = (
                REQUESTS.labels(model, protocol, str(status)),
                DURATION.labels(model, protocol),
                ERRORS.labels(model, protocol, kind) if kind else None,
            )
        requests, duration, errors = children
        requests.inc()
        duration.observe(time.perf_counter() - start)
        if errors is not None:
            errors.inc()


async def _send_error(send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
