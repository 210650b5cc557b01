"""Anomalies in the serving metrics: a sudden shift in the prediction rate or in the served scores.

Consumes the logged predictions (the sink's rows: ``timestamp``, ``prediction``, ``output.*``) of
a window and of the ``anomaly.trailing_hours`` before it, and an
:class:`~kfmlops.monitoring.config.AnomalyConfig`; produces a JSON-ready report
(:func:`serving_anomalies`) that the drift job puts in its summary and metrics. An anomaly is
reported, never a reason to retrain.

- **rate**: predictions per ``interval_minutes`` in the window against the trailing intervals (from
  the first one with traffic): a robust z-score, (count − median) / scale, with scale 1.4826 × the
  median absolute deviation, at least √median (Poisson noise) and 1. A window interval at
  ``|z| >= rate_z`` is an anomaly: a spike, or traffic that dropped or stopped.
- **scores**: the served scores (the logged ``prediction`` number: a binary model's P(positive), a
  regression model's value; for a multiclass model the top ``output.<class>`` probability) in the
  window against the trailing ones: the population stability index over the trailing scores'
  deciles. ``PSI >= score_psi`` is an anomaly.

Either check is skipped, and says why, when the history is too short (``min_trailing_intervals``,
``min_scores``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kfmlops.monitoring.config import AnomalyConfig
from kfmlops.monitoring.store import OUTPUT_PREFIX

_MAD_TO_SD = 1.4826
_PSI_BINS = 10
_PSI_FLOOR = 1e-4  # a bin's share, so an empty bin does not make PSI infinite


def interval_counts(timestamps: np.ndarray, start: datetime, end: datetime, interval: timedelta) -> np.ndarray:
    """Rows per interval of ``[start, end)`` (``timestamps``: datetime64, UTC)."""
    edges = np.arange(np.datetime64(start.replace(tzinfo=None), "us"), np.datetime64(end.replace(tzinfo=None), "us"),
                      np.timedelta64(int(interval.total_seconds() * 1e6), "us"))
    edges = np.append(edges, np.datetime64(end.replace(tzinfo=None), "us"))
    counts, _ = np.histogram(timestamps.astype("datetime64[us]").astype(np.int64), edges.astype(np.int64))
    return counts


def rate_shift(window: np.ndarray, trailing: np.ndarray, config: AnomalyConfig) -> dict[str, Any]:
    """The robust z-score of each window interval's count against the trailing counts (see the module docstring)."""
    seen = np.flatnonzero(trailing)
    trailing = trailing[seen[0]:] if len(seen) else trailing[:0]
    if len(trailing) < config.min_trailing_intervals:
        return {"checked": False, "anomalous": False,
                "note": f"{len(trailing)} trailing intervals with traffic; the rate check needs {config.min_trailing_intervals}"}
    median = float(np.median(trailing))
    scale = max(_MAD_TO_SD * float(np.median(np.abs(trailing - median))), np.sqrt(median), 1.0)
    z = (window - median) / scale
    worst = int(np.argmax(np.abs(z)))
    return {"checked": True, "anomalous": bool(abs(z[worst]) >= config.rate_z), "max_abs_z": float(abs(z[worst])),
            "interval": worst, "count": int(window[worst]), "trailing_median": median, "scale": scale,
            "threshold": config.rate_z, "intervals": [int(c) for c in window]}


def psi(window: np.ndarray, trailing: np.ndarray, bins: int = _PSI_BINS) -> float:
    """Population stability index of ``window`` against ``trailing`` over the trailing values' quantile bins."""
    edges = np.unique(np.quantile(trailing, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, trailing, side="right"), minlength=len(edges) + 1) / len(trailing)
    actual = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(edges) + 1) / len(window)
    expected, actual = np.maximum(expected, _PSI_FLOOR), np.maximum(actual, _PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def score_shift(window: np.ndarray, trailing: np.ndarray, config: AnomalyConfig) -> dict[str, Any]:
    """PSI of the window's served scores against the trailing ones (see the module docstring)."""
    if min(len(window), len(trailing)) < config.min_scores:
        return {"checked": False, "anomalous": False,
                "note": f"{len(window)} scores in the window and {len(trailing)} before it; the check needs {config.min_scores} each"}
    value = psi(window, trailing)
    return {"checked": True, "anomalous": value >= config.score_psi, "psi": value, "threshold": config.score_psi,
            "window_mean": float(window.mean()), "trailing_mean": float(trailing.mean())}


def served_scores(table: pa.Table) -> np.ndarray:
    """One number per row that has one: the logged ``prediction``, else the top ``output.<class>`` probability."""
    if table.num_rows == 0:
        return np.empty(0)
    scores = np.full(table.num_rows, np.nan)
    if "prediction" in table.column_names:
        scores = pc.fill_null(table["prediction"].cast(pa.float64()), np.nan).to_numpy().copy()
    outputs = [c for c in table.column_names if c.startswith(OUTPUT_PREFIX)]
    if outputs:
        probabilities = np.column_stack([pc.fill_null(table[c].cast(pa.float64()), np.nan).to_numpy() for c in outputs])
        missing = np.isnan(scores) & ~np.isnan(probabilities).all(axis=1)
        scores[missing] = np.nanmax(probabilities[missing], axis=1)
    return scores[~np.isnan(scores)]


def serving_anomalies(window: pa.Table, trailing: pa.Table, start: datetime, end: datetime,
                      config: AnomalyConfig) -> dict[str, Any]:
    """The rate and score checks of ``window`` (rows of ``[start, end)``) against ``trailing`` (the
    rows of the ``trailing_hours`` before ``start``); ``anomalous`` and ``reasons`` sum them up."""
    interval = timedelta(minutes=config.interval_minutes)
    since = start - timedelta(hours=config.trailing_hours)
    rate = rate_shift(interval_counts(_times(window), start, end, interval),
                      interval_counts(_times(trailing), since, start, interval), config)
    scores = score_shift(served_scores(window), served_scores(trailing), config)
    reasons = []
    if rate["anomalous"]:
        reasons.append(f"prediction rate: {rate['count']} predictions in interval {rate['interval']} of the window, "
                       f"robust z {rate['max_abs_z']:.1f} against the trailing median {rate['trailing_median']:g} "
                       f"(threshold {config.rate_z:g})")
    if scores["anomalous"]:
        reasons.append(f"served scores: PSI {scores['psi']:.3f} against the {config.trailing_hours} h before the window "
                       f"(threshold {config.score_psi:g}); mean {scores['trailing_mean']:.4g} -> {scores['window_mean']:.4g}")
    return {"anomalous": bool(reasons), "reasons": reasons, "rate": rate, "scores": scores,
            "trailing": {"start": since.isoformat(), "end": start.isoformat(), "rows": trailing.num_rows}}


def _times(table: pa.Table) -> np.ndarray:
    if table.num_rows == 0:
        return np.empty(0, "datetime64[us]")
    return table["timestamp"].cast(pa.timestamp("us")).to_numpy()
