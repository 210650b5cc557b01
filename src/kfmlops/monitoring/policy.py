"""The retraining policy and the ledger that makes retraining idempotent per window.

:func:`decide` consumes the figures of one drift run (:class:`Figures`), the typed
:class:`~kfmlops.monitoring.config.PolicyConfig`, the :class:`Ledger` and the window's identity,
and produces a :class:`Decision`: which configured signals are on (with their figures, the
reasons), and whether a retrain may start now or what blocks it (window too small, too few
labelled rows, the window already handled, cool-down, daily cap).

The :class:`Ledger` is a directory with one JSON record per window that started (or tried to
start) a retrain. A record is created with exclusive, atomic semantics
(:class:`~kfmlops.monitoring.records.Records`), so two job attempts for the same window can never
both claim it, and a crash never leaves a half-written record. Cool-down and the daily cap count every claimed window of the model, submitted or not.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kfmlops.monitoring.config import WATCHED_METRICS, PolicyConfig
from kfmlops.monitoring.records import Records
from kfmlops.typed import ConfigError

CLAIMED, SUBMITTED, FAILED = "claimed", "submitted", "failed"
_DAY_S = 86_400.0


@dataclass(frozen=True)
class Figures:
    """What the policy reads from one drift run."""

    rows: int
    labelled_rows: int = 0
    drift_share: float | None = None  # share of checked features that drifted
    drifted_features: list[str] = field(default_factory=list)
    drifted_predictions: dict[str, float] = field(default_factory=dict)  # prediction column -> drift score
    task: str | None = None  # the task kind: which metrics ``performance`` holds, and their directions
    performance: dict[str, Any] = field(default_factory=dict)  # metric -> value on the labelled rows


@dataclass(frozen=True)
class Decision:
    """``fire``: start a retrain now. ``signals``: the configured signals that are on; ``reasons``:
    their figures; ``blocked``: why a retrain does not start although signals are on (or why the
    window could not be judged)."""

    window_id: str
    fire: bool
    signals: list[str]
    reasons: list[str]
    blocked: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LedgerEntry:
    window_id: str
    model: str
    claimed_at: float  # epoch seconds
    status: str  # CLAIMED, SUBMITTED or FAILED
    reasons: list[str]
    window: dict[str, Any]
    run_id: str | None = None
    source: str | None = None  # the fresh training data submitted
    error: str | None = None


def window_id(identity: dict[str, Any]) -> str:
    """A stable id for a window: SHA-256 of its canonical JSON identity (model, bounds or data fingerprint)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class Ledger(Records[LedgerEntry]):
    """One JSON record per window that claimed a retrain, in ``directory`` (local disk or mounted volume)."""

    def __init__(self, directory: str | os.PathLike):
        super().__init__(directory, LedgerEntry)

    def entries(self, model: str) -> list[LedgerEntry]:
        return sorted((e for e in self.all() if e.model == model), key=lambda e: e.claimed_at)

    def claim(self, entry: LedgerEntry) -> bool:
        """Create ``entry``'s record unless its window already has one; True when this call created it."""
        return self.create(entry)

    def update(self, entry: LedgerEntry) -> None:
        """Atomically replace the record of a window this process claimed."""
        self.replace(entry)


def signals(figures: Figures, policy: PolicyConfig) -> tuple[list[str], list[str]]:
    """The configured signals that are on, and a reason with figures for each."""
    on, reasons = [], []
    if "dataset_drift" in policy.signals and figures.drift_share is not None and figures.drift_share >= policy.drift_share:
        on.append("dataset_drift")
        reasons.append(
            f"dataset drift: {figures.drift_share:.0%} of features drifted (threshold {policy.drift_share:.0%}): "
            + ", ".join(figures.drifted_features)
        )
    if "prediction_drift" in policy.signals and figures.drifted_predictions:
        on.append("prediction_drift")
        reasons.append("prediction drift: " + ", ".join(f"{c} score {v:.4g}" for c, v in figures.drifted_predictions.items()))
    if "feature_drift" in policy.signals:
        watched = [f for f in figures.drifted_features if not policy.watched_features or f in policy.watched_features]
        if watched:
            on.append("feature_drift")
            reasons.append("feature drift: " + ", ".join(watched))
    if "performance" in policy.signals and figures.labelled_rows >= policy.min_labelled_rows:
        worse = _worse_than_limits(figures, policy)
        if worse:
            on.append("performance")
            reasons += worse
    return on, reasons


def _worse_than_limits(figures: Figures, policy: PolicyConfig) -> list[str]:
    """A reason for each ``policy.min_performance`` limit the window's figures are worse than, in the
    metric's direction; a metric the window has no value for (ROC AUC of one class) counts as met."""
    directions = WATCHED_METRICS.get(figures.task or "", {})
    reasons = []
    for metric, limit in policy.min_performance.items():
        value, higher = figures.performance.get(metric), directions.get(metric)
        if value is None or higher is None or (value >= limit if higher else value <= limit):
            continue
        reasons.append(f"performance: {metric} {value:.4g} {'<' if higher else '>'} {limit:g} on "
                       f"{figures.labelled_rows} labelled rows")
    return reasons


def check_performance_limits(policy: PolicyConfig, task: str) -> None:
    """A ConfigError when ``policy.min_performance`` names a metric the task's window figures lack."""
    missing = sorted(set(policy.min_performance) - set(WATCHED_METRICS[task]))
    if missing:
        raise ConfigError(f"policy.min_performance names {missing}, which a {task} model's window does not measure; "
                          f"a {task} task has {', '.join(WATCHED_METRICS[task])}")


def decide(figures: Figures, policy: PolicyConfig, ledger: Ledger, window_id_: str, model: str, now: float) -> Decision:
    """Whether this window starts a retrain of ``model`` at ``now`` (epoch seconds), and why (not)."""
    if figures.rows < policy.min_rows:
        what = "empty" if figures.rows == 0 else f"too small: {figures.rows} rows"
        return Decision(window_id_, False, [], [], [f"window {what} (policy.min_rows = {policy.min_rows}); nothing checked"])
    on, reasons = signals(figures, policy)
    if not on:
        return Decision(window_id_, False, [], [], [])
    blocked = []
    if figures.labelled_rows < policy.min_labelled_rows:
        blocked.append(f"{figures.labelled_rows} labelled rows in the window; retraining needs {policy.min_labelled_rows}")
    existing = ledger.get(window_id_)
    if existing is not None:
        blocked.append(f"window already handled: {existing.status}, run {existing.run_id}")
    history = [e for e in ledger.entries(model) if e.window_id != window_id_]
    if policy.max_retrains_per_day == 0:
        blocked.append("policy.max_retrains_per_day is 0")
    else:
        today = [e for e in history if now - e.claimed_at < _DAY_S]
        if len(today) >= policy.max_retrains_per_day:
            blocked.append(f"daily cap: {len(today)} retrains in the last 24 h (max {policy.max_retrains_per_day})")
    if history and now - history[-1].claimed_at < policy.cooldown_hours * 3600:
        since = (now - history[-1].claimed_at) / 3600
        blocked.append(f"cool-down: last retrain {since:.1f} h ago (policy.cooldown_hours = {policy.cooldown_hours})")
    return Decision(window_id_, not blocked, on, reasons, blocked)


def mark(ledger: Ledger, entry: LedgerEntry, **changes: Any) -> LedgerEntry:
    """``entry`` with ``changes``, written to the ledger."""
    updated = replace(entry, **changes)
    ledger.update(updated)
    return updated
