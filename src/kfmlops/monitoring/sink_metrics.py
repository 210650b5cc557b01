"""The sink's Prometheus metrics, served on its ``GET /metrics``.

One :class:`SinkMetrics` per sink application, with a registry of its own (no global state: a
process may run several sinks, as the tests do):

- ``kfmlops_sink_requests_total{code}``: answers to POSTed events by HTTP status (200 durable,
  400/413 refused, 503 not durable);
- read from the :class:`~kfmlops.monitoring.sink.Sink` at scrape time:
  ``kfmlops_sink_acknowledged_events_total``, ``kfmlops_sink_wal_fsyncs_total`` (group commits),
  ``kfmlops_sink_joined_events_total``, ``kfmlops_sink_unmatched_events_total`` (written without
  their pair), ``kfmlops_sink_duplicate_events_total``, ``kfmlops_sink_replayed_events_total``,
  ``kfmlops_sink_errors_total`` (background write/commit failures, retried),
  ``kfmlops_sink_rows_committed_total``; gauges ``kfmlops_sink_pending_events`` (waiting for their
  pair), ``kfmlops_sink_buffered_rows``, ``kfmlops_sink_wal_segments`` and ``kfmlops_sink_failing``
  (1 while the last write or commit failed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from kfmlops.monitoring.sink import Sink

CONTENT_TYPE = CONTENT_TYPE_LATEST

_COUNTERS = (  # name (without _total), help, how to read it from the Sink
    ("kfmlops_sink_acknowledged_events", "Events made durable and answered 200", lambda s: s.events),
    ("kfmlops_sink_wal_fsyncs", "Write-ahead-log group commits (fsyncs)", lambda s: s.fsyncs),
    ("kfmlops_sink_joined_events", "Request/response pairs joined", lambda s: s.joiner.joined),
    ("kfmlops_sink_unmatched_events", "Events written without their pair", lambda s: s.joiner.unmatched),
    ("kfmlops_sink_duplicate_events", "Repeated deliveries dropped", lambda s: s.joiner.duplicates),
    ("kfmlops_sink_replayed_events", "Events replayed from the write-ahead log at start", lambda s: s.replayed),
    ("kfmlops_sink_errors", "Background write or commit failures (retried)", lambda s: s.errors),
    ("kfmlops_sink_rows_committed", "Prediction rows committed to Parquet", lambda s: s.log.rows_committed),
)
_GAUGES = (
    ("kfmlops_sink_pending_events", "Events waiting for their pair", lambda s: s.joiner.pending),
    ("kfmlops_sink_buffered_rows", "Rows buffered, not yet committed", lambda s: s.log.buffered),
    ("kfmlops_sink_wal_segments", "Write-ahead-log segments on disk", lambda s: s.wal.segments if s.wal else 0),
    ("kfmlops_sink_failing", "1 while the last write or commit failed", lambda s: float(s.failing)),
)


class _SinkCollector:
    """Reads the running sink's counters at scrape time (nothing before it has started)."""

    def __init__(self, sink: Callable[[], "Sink | None"]):
        self._sink = sink

    def collect(self):
        sink = self._sink()
        if sink is None:
            return
        for name, help_, read in _COUNTERS:
            yield CounterMetricFamily(name, help_, value=read(sink))
        for name, help_, read in _GAUGES:
            yield GaugeMetricFamily(name, help_, value=read(sink))


class SinkMetrics:
    """The registry of one sink application: answers by status, and the sink's own counters."""

    def __init__(self, sink: Callable[[], "Sink | None"]):
        self.registry = CollectorRegistry()
        self.requests = Counter("kfmlops_sink_requests", "Answers to POSTed events, by HTTP status", ["code"],
                                registry=self.registry)
        self.registry.register(_SinkCollector(sink))

    def answered(self, status: int) -> None:
        self.requests.labels(str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
