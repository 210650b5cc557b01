"""Judging a shadow or an A/B test from the inference log: rows in, verdicts out.

Both read what the arms wrote to the inference log (:mod:`kfmlops.monitoring.store`, the sink's
format: one row per prediction with ``request_id``, ``row_index``, ``model_version``, the served
output, and the imported label joined by request id, :func:`~kfmlops.monitoring.store.read_window`),
the outputs read under the model's :class:`~kfmlops.tasks.Task` as the drift job reads them
(:func:`~kfmlops.monitoring.window.served_predictions`):

- :func:`compare_shadow`: the live and the candidate version's answers to the same rows (joined
  on request id and row), their disagreement (another predicted class; regression: a value off by
  more than a relative tolerance) and the largest score difference;
- :func:`arm_outcomes` and :func:`ab_test`: each arm's per-row outcome on labelled rows (correct
  or not for classification, the squared error for regression) and a two-sided test between the
  arms: a pooled two-proportion z-test on accuracy, or Welch's t-test on squared errors. No
  decision before both arms hold ``min_samples`` labelled rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from kfmlops.monitoring.store import KEYS, read_window
from kfmlops.monitoring.window import served_predictions
from kfmlops.tasks import PREDICTION, PROBA_PREFIX, Task

TESTS = {"classification": "two-proportion-z", "regression": "welch-t"}


def logged_rows(root: str | Path, model: str, since: datetime) -> pa.Table:
    """The log's rows of ``model`` from ``since`` until now (plus a minute of clock slack), labels joined."""
    until = datetime.now(timezone.utc) + timedelta(minutes=1)
    return read_window(root, model, since, until)


def served_frame(rows: pa.Table, task: Task, threshold: float) -> pd.DataFrame:
    """One row per logged prediction: the keys, ``model_version``, ``label`` (text; None unlabelled)
    and the predictions dataset's columns (``prediction``, ``proba:<class>``; None when unreadable)."""
    frame = pd.DataFrame({k: rows[k].to_pylist() for k in (*KEYS, "model_version")})
    frame["label"] = rows["label"].to_pylist() if "label" in rows.column_names else None
    for name, values in served_predictions(rows, task, threshold).items():
        frame[name] = values.to_pylist()
    return frame


def compare_shadow(frame: pd.DataFrame, task: Task, live: str, candidate: str, regression_tolerance: float) -> dict:
    """The live and candidate versions' answers to the same rows of ``frame`` (:func:`served_frame`):
    rows each answered, rows compared, the share that disagree, and the largest score difference
    (classification: over the class probabilities; regression: relative to the live value)."""
    mine = frame[frame.model_version == live]
    theirs = frame[frame.model_version == candidate]
    both = mine.merge(theirs, on=KEYS, suffixes=("_live", "_candidate")).dropna(
        subset=[f"{PREDICTION}_live", f"{PREDICTION}_candidate"])
    report = {"live_rows": len(mine), "candidate_rows": len(theirs), "compared": len(both),
              "disagreement": None, "max_score_diff": None}
    if both.empty:
        return report
    if task.is_classification:
        disagree = both[f"{PREDICTION}_live"] != both[f"{PREDICTION}_candidate"]
        columns = [PROBA_PREFIX + c for c in task.classes]
        diff = np.abs(both[[c + "_live" for c in columns]].to_numpy(float) - both[[c + "_candidate" for c in columns]].to_numpy(float))
        largest = float(np.nanmax(diff))
    else:
        a, b = both[f"{PREDICTION}_live"].to_numpy(float), both[f"{PREDICTION}_candidate"].to_numpy(float)
        relative = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
        disagree, largest = relative > regression_tolerance, float(relative.max())
    return report | {"disagreement": float(np.mean(disagree)), "max_score_diff": largest}


def arm_outcomes(frame: pd.DataFrame, task: Task, versions: dict[str, str]) -> dict[str, np.ndarray]:
    """Per arm (``versions``: arm -> version), the outcome of each labelled, readable row of ``frame``:
    1.0 / 0.0 (predicted class right or wrong) for classification, the squared error for regression."""
    labelled = frame.dropna(subset=["label", PREDICTION])
    outcomes = {}
    for arm, version in versions.items():
        rows = labelled[labelled.model_version == version]
        if task.is_classification:
            outcomes[arm] = (rows[PREDICTION].astype(str) == rows["label"].astype(str)).to_numpy(float)
        else:
            outcomes[arm] = (rows[PREDICTION].astype(float) - pd.to_numeric(rows["label"], errors="coerce")).to_numpy(float) ** 2
            outcomes[arm] = outcomes[arm][~np.isnan(outcomes[arm])]
    return outcomes


@dataclass(frozen=True)
class AbVerdict:
    """The test's outcome: ``decision`` is ``waiting`` (an arm has fewer than the minimum sample),
    ``challenger`` or ``champion`` (significantly better at ``alpha``) or ``inconclusive``."""

    decision: Literal["waiting", "challenger", "champion", "inconclusive"]
    test: str
    metric: str
    samples: dict[str, int]
    values: dict[str, float | None]
    statistic: float | None
    p_value: float | None
    alpha: float
    min_samples: int
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def ab_test(champion: np.ndarray, challenger: np.ndarray, *, test: str, alpha: float, min_samples: int) -> AbVerdict:
    """Compare the arms' outcomes (:func:`arm_outcomes`) with ``test`` ('two-proportion-z': outcomes are
    0/1 and higher is better; 'welch-t': squared errors, lower is better), two-sided at ``alpha``."""
    from scipy import stats

    metric = "accuracy" if test == "two-proportion-z" else "mean squared error"
    samples = {"champion": len(champion), "challenger": len(challenger)}
    values = {arm: (float(np.mean(x)) if len(x) else None) for arm, x in (("champion", champion), ("challenger", challenger))}

    def verdict(decision, statistic, p, reason) -> AbVerdict:
        return AbVerdict(decision, test, metric, samples, values, statistic, p, alpha, min_samples, reason)

    if min(samples.values()) < min_samples:
        return verdict("waiting", None, None, f"labelled rows per arm {samples}; each arm needs {min_samples}")
    if test == "two-proportion-z":
        n1, n2 = len(champion), len(challenger)
        pooled = (champion.sum() + challenger.sum()) / (n1 + n2)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        statistic = float((values["challenger"] - values["champion"]) / se) if se > 0 else 0.0
        p = float(2 * stats.norm.sf(abs(statistic)))
        challenger_better = statistic > 0
    else:
        result = stats.ttest_ind(challenger, champion, equal_var=False)
        statistic = float(np.nan_to_num(result.statistic))
        p = 1.0 if np.isnan(result.pvalue) else float(result.pvalue)
        challenger_better = statistic < 0  # lower squared error
    shown = f"{metric} champion {values['champion']:.4g} vs challenger {values['challenger']:.4g}, {test} p={p:.3g}"
    if p >= alpha:
        return verdict("inconclusive", statistic, p, f"{shown} >= alpha {alpha}: no significant difference")
    winner = "challenger" if challenger_better else "champion"
    return verdict(winner, statistic, p, f"{shown} < alpha {alpha}: the {winner} is better")


def statistical_test(task: Task, configured: str) -> str:
    """The test an A/B run uses on ``task``: the one for its kind ('auto'), or ``configured`` when it is that one."""
    wanted = TESTS["classification" if task.is_classification else "regression"]
    if configured not in ("auto", wanted):
        raise ValueError(f"ab.test {configured!r} does not fit a {task.kind} task: its outcomes call for {wanted!r}")
    return wanted
