"""Anomalies in the serving metrics on constructed traffic: a rate spike, a drop and a score shift
are reported; steady traffic is not; short history skips the check and says so."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from kfmlops.monitoring.anomaly import psi, serving_anomalies, served_scores
from kfmlops.monitoring.config import AnomalyConfig
from kfmlops.monitoring.store import TIMESTAMP

START = datetime(2026, 11, 23, 0, tzinfo=timezone.utc)
END = START + timedelta(hours=12)
CONFIG = AnomalyConfig()


def _traffic(rng, start: datetime, hours: int, per_hour, score=lambda rng, n: rng.beta(2, 5, n)) -> pa.Table:
    """Poisson-many predictions per hour (``per_hour(h)``) at random times, with served scores."""
    times, scores = [], []
    for h in range(hours):
        n = rng.poisson(per_hour(h))
        times += [start + timedelta(hours=h, seconds=float(s)) for s in np.sort(rng.uniform(0, 3600, n))]
        scores.append(score(rng, n))
    return pa.table({"timestamp": pa.array(times, TIMESTAMP), "prediction": np.concatenate(scores)})


def _trailing(rng) -> pa.Table:
    return _traffic(rng, START - timedelta(hours=CONFIG.trailing_hours), CONFIG.trailing_hours, lambda h: 200)


def test_steady_traffic_is_no_anomaly():
    rng = np.random.default_rng(0)
    report = serving_anomalies(_traffic(rng, START, 12, lambda h: 200), _trailing(rng), START, END, CONFIG)
    assert not report["anomalous"] and report["reasons"] == []
    assert report["rate"]["checked"] and report["rate"]["max_abs_z"] < 3 and len(report["rate"]["intervals"]) == 12
    assert report["scores"]["checked"] and report["scores"]["psi"] < 0.05


def test_rate_spike_and_drop_are_reported():
    rng = np.random.default_rng(1)
    trailing = _trailing(rng)
    spike = serving_anomalies(_traffic(rng, START, 12, lambda h: 900 if h == 7 else 200), trailing, START, END, CONFIG)
    assert spike["anomalous"] and spike["rate"]["anomalous"] and spike["rate"]["interval"] == 7
    assert not spike["scores"]["anomalous"]
    assert spike["reasons"][0].startswith("prediction rate: ") and "interval 7" in spike["reasons"][0]
    stopped = serving_anomalies(_traffic(rng, START, 12, lambda h: 0 if h >= 9 else 200), trailing, START, END, CONFIG)
    assert stopped["rate"]["anomalous"] and stopped["rate"]["count"] == 0


def test_score_shift_is_reported():
    rng = np.random.default_rng(2)
    shifted = _traffic(rng, START, 12, lambda h: 200, score=lambda rng, n: rng.beta(5, 2, n))
    report = serving_anomalies(shifted, _trailing(rng), START, END, CONFIG)
    assert report["scores"]["anomalous"] and report["scores"]["psi"] > 1 and not report["rate"]["anomalous"]
    assert report["reasons"] == [report["reasons"][0]] and report["reasons"][0].startswith("served scores: PSI ")
    assert psi(np.arange(1000.0), np.arange(1000.0)) == 0.0


def test_short_history_skips_the_checks():
    rng = np.random.default_rng(3)
    trailing = _traffic(rng, START - timedelta(hours=3), 3, lambda h: 20)
    report = serving_anomalies(_traffic(rng, START, 12, lambda h: 900), trailing, START, END, CONFIG)
    assert not report["anomalous"] and not report["rate"]["checked"] and "3 trailing intervals" in report["rate"]["note"]
    assert not report["scores"]["checked"] and "needs 100 each" in report["scores"]["note"]


def test_served_scores_per_output():
    table = pa.table({"prediction": [0.2, None, None, 3.5], "output.a": [None, 0.7, None, None],
                      "output.b": [None, 0.3, None, None]})
    assert served_scores(table).tolist() == [0.2, 0.7, 3.5]  # the top class probability of a multiclass output
