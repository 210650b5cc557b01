"""Explain: which raw columns a model relies on, for any model, overall and per sensitive group,
and the model's own attributions where it has them.

Consumes a loaded model (:func:`kfmlops.model_contract.load`: any MLflow model), the test split (a
DataFrame with the label column), the data's :class:`~kfmlops.tasks.Task`, the sensitive columns,
the primary metric (:func:`kfmlops.evaluate.primary_metric`) and an
:class:`~kfmlops.config.ExplainConfig`; produces an :class:`Explanation`, as JSON
(:meth:`Explanation.to_json`, the contract below) and as an HTML page (:func:`to_html`). No I/O.

- **Permutation importance** (:func:`permutation_importance`) on at most ``max_rows`` test rows
  (a sample drawn with ``seed``): each raw input column the model reads is shuffled ``repeats``
  times and the model rescored; a column's importance is the mean drop of the primary metric in
  its direction (the metric's worsening: ROC AUC lost, RMSE gained), ``std`` its spread over the
  repeats. It needs nothing but scores, so it works for any model and task. (A small loop, not
  ``sklearn.inspection.permutation_importance``, which wants an estimator with ``fit``.)
- **By group**: the same drops measured on the rows of each group of each sensitive column (the
  column shuffled across the whole sample, so a group's rows get values from everyone's
  distribution, and the model is scored once per shuffle for all groups together). A group with fewer than ``min_group_size`` rows (``fairness.min_group_size``) is
  reported but flagged; one whose metric cannot be computed (a binary group holding one class
  has no ROC AUC) has no importances and says why.
- **Attributions** (:mod:`kfmlops.attributions`) where the model has a method: ``shap-tree`` or
  ``integrated-gradients``, summarised as the mean ``|attribution|`` per raw column over the rows
  and, for multiclass, over the classes (each class's logit or margin); binary explains the
  positive class's log-odds (or a forest's probability), regression the predicted value.

Cost: ``1 + features x repeats`` model calls on ``max_rows`` rows (the groups reuse those scores:
only the metric is computed again on each group's rows), plus one attribution pass.

The JSON (read by the model card from the run's ``explain/explanation.json``)::

    {"method": "permutation", "metric": str,
     "features": [{"feature": str, "importance": float, "std": float}],   # importance descending
     "by_group": {"<column>": {"<group>": [{"feature": str, "importance": float}]}},
     "attributions": {"method": "shap-tree" | "integrated-gradients",
                      "features": [{"feature": str, "mean_abs": float}]} | null,
     "rows": int, "groups": {"<column>": {"<group>": {"rows": int, "flagged": bool, "note": str | null}}},
     "notes": [str]}

``rows``, ``groups`` and ``notes`` (why attributions are missing) add to the contract's keys.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kfmlops import model_contract, report
from kfmlops.config import ExplainConfig
from kfmlops.model_contract import LoadedModel
from kfmlops.tasks import Task, metrics_module

METHOD = "permutation"
MISSING_GROUP = "(missing)"


@dataclass(frozen=True)
class Importance:
    """One raw column's permutation importance: the metric's mean worsening and its spread."""

    feature: str
    importance: float
    std: float


@dataclass(frozen=True)
class GroupImportance:
    """Permutation importance on one group's rows; ``flagged``: fewer rows than the minimum group size."""

    column: str
    group: str
    rows: int
    flagged: bool
    features: list[Importance]
    note: str | None = None


@dataclass(frozen=True)
class Explanation:
    """What the explain step found; see the module docstring."""

    metric: str
    rows: int
    features: list[Importance]
    groups: list[GroupImportance] = field(default_factory=list)
    attribution_method: str | None = None
    attributions: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        by_group: dict[str, dict[str, list]] = {}
        groups: dict[str, dict[str, dict]] = {}
        for g in self.groups:
            by_group.setdefault(g.column, {})[g.group] = [{"feature": f.feature, "importance": f.importance}
                                                          for f in g.features]
            groups.setdefault(g.column, {})[g.group] = {"rows": g.rows, "flagged": g.flagged, "note": g.note}
        attributions = None
        if self.attribution_method is not None:
            attributions = {"method": self.attribution_method,
                            "features": [{"feature": f, "mean_abs": v} for f, v in self.attributions]}
        return {
            "method": METHOD,
            "metric": self.metric,
            "features": [{"feature": f.feature, "importance": f.importance, "std": f.std} for f in self.features],
            "by_group": by_group,
            "attributions": attributions,
            "rows": self.rows,
            "groups": groups,
            "notes": list(self.notes),
        }

    def top(self, k: int) -> dict[str, float]:
        """The ``k`` most important columns' importances, by column name."""
        return {f.feature: f.importance for f in self.features[:k]}


@dataclass(frozen=True)
class Scorer:
    """Scores rows with ``model`` (:meth:`predict`: the predictions dataset, label included) and
    measures the primary ``metric`` on scored rows (:meth:`measure`), signed so that higher is better."""

    model: LoadedModel
    task: Task
    metric: str
    threshold: float = 0.5

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        labels = frame[self.task.label].to_numpy()
        scores = self.model.scores(frame.drop(columns=[self.task.label]))
        return model_contract.predictions(self.task, scores, self.threshold, labels)

    def measure(self, scored: pd.DataFrame) -> float:
        """The signed metric; a ValueError when the rows do not allow it (one class only, a class
        missing for ``roc_auc_ovr``)."""
        module = metrics_module(self.task)
        values = module.metrics(self.task, scored, [self.metric])
        if self.metric not in values:
            raise ValueError(f"{self.metric} cannot be computed on these rows (computed: {sorted(values)})")
        return (1.0 if module.DIRECTIONS[self.metric] == "max" else -1.0) * values[self.metric]


def _groups(column: pd.Series) -> np.ndarray:
    return column.astype("string").fillna(MISSING_GROUP).to_numpy(dtype=object)


def group_masks(sensitive: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """``(column, group) -> row mask`` for each group of each sensitive column."""
    out = {}
    for name in sensitive.columns:
        groups = _groups(sensitive[name].reset_index(drop=True))
        out |= {(str(name), str(group)): groups == group for group in sorted(set(groups))}
    return out


def _importances(drops: dict[str, list[float]]) -> list[Importance]:
    found = [Importance(column, float(np.mean(d)), float(np.std(d))) for column, d in drops.items()]
    return sorted(found, key=lambda f: -f.importance)


def permutation_importance(scorer: Scorer, frame: pd.DataFrame, columns: list[str], repeats: int, seed: int,
                           masks: dict[tuple[str, str], np.ndarray] | None = None,
                           ) -> tuple[list[Importance], dict[tuple[str, str], list[Importance] | str]]:
    """Each of ``columns`` shuffled ``repeats`` times over all of ``frame``'s rows and the model scored
    once per shuffle: the mean and spread of the metric's drop, largest first, on all rows and on the
    rows of each mask (a group's importances, or why its metric cannot be computed)."""
    rng = np.random.default_rng(seed)
    frame = frame.reset_index(drop=True)
    masks = masks or {}
    base = scorer.predict(frame)
    whole = scorer.measure(base)
    per_group: dict[tuple[str, str], float | str] = {}
    for key, mask in masks.items():
        try:
            per_group[key] = scorer.measure(base[mask])
        except ValueError as exc:
            per_group[key] = f"not computed: {exc}"
    drops: dict[str, list[float]] = {c: [] for c in columns}
    group_drops = {key: {c: [] for c in columns} for key, b in per_group.items() if not isinstance(b, str)}
    for column in columns:
        for _ in range(repeats):
            shuffled = scorer.predict(frame.assign(**{column: frame[column].take(rng.permutation(len(frame))).to_numpy()}))
            drops[column].append(whole - scorer.measure(shuffled))
            for key, found in group_drops.items():
                found[column].append(per_group[key] - scorer.measure(shuffled[masks[key]]))
    groups = {key: _importances(group_drops[key]) if key in group_drops else per_group[key] for key in masks}
    return _importances(drops), groups


def by_group(found: dict[tuple[str, str], list[Importance] | str], masks: dict[tuple[str, str], np.ndarray],
             min_group_size: int) -> list[GroupImportance]:
    """:func:`permutation_importance`'s per-group results as :class:`GroupImportance` records, a group
    under ``min_group_size`` rows flagged as noisy."""
    out = []
    for (column, group), result in found.items():
        rows = int(masks[(column, group)].sum())
        features, note = ([], result) if isinstance(result, str) else (result, None)
        flagged = rows < min_group_size
        if flagged:
            note = "; ".join(filter(None, [f"{rows} rows, under the {min_group_size} of fairness.min_group_size: noisy",
                                           note]))
        out.append(GroupImportance(column, group, rows, flagged, features, note))
    return out


def sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame``, drawn with ``seed`` (all of them, in order, when fewer)."""
    return frame.sample(n=max_rows, random_state=seed) if len(frame) > max_rows else frame


def explain(model: LoadedModel, test: pd.DataFrame, task: Task, metric: str, config: ExplainConfig,
            sensitive_columns: list[str] | tuple[str, ...] = (), min_group_size: int = 100,
            threshold: float = 0.5) -> Explanation:
    """The :class:`Explanation` of ``model`` on the test split ``test`` (see the module docstring)."""
    from kfmlops.attributions import NotExplainable, attributor

    rows = sample(test, config.max_rows, config.seed).reset_index(drop=True)
    columns = model.features or [c for c in test.columns if c != task.label]
    masks = group_masks(rows[list(sensitive_columns)])
    features, found = permutation_importance(Scorer(model, task, metric, threshold), rows, columns, config.repeats,
                                             config.seed, masks)
    groups = by_group(found, masks, min_group_size)
    try:
        method = attributor(model.native, task, columns)
    except NotExplainable as exc:
        return Explanation(metric, len(rows), features, groups, notes=[f"no model-specific attributions: {exc}"])
    attributed = method(*method.encode(rows))
    return Explanation(metric, len(rows), features, groups, attributed.method, attributed.mean_abs())


# --- the HTML page -------------------------------------------------------------------------------

def _bar(value: float, largest: float) -> str:
    width = 0 if largest <= 0 else max(0.0, min(100.0, 100 * value / largest))
    return f'<div style="background:#0969da;height:.7rem;width:{width:.1f}%;min-width:1px"></div>'


def _importance_rows(features: list[Importance], k: int, with_std: bool = True) -> list[dict[str, Any]]:
    shown = features[:k]
    largest = max((f.importance for f in shown), default=0.0)
    return [{"feature": f.feature, "importance": f.importance, **({"std": f.std} if with_std else {}),
             "": _bar(f.importance, largest)} for f in shown]


def to_html(explanation: Explanation, top_k: int = 10) -> str:
    """A self-contained page: the ``top_k`` columns by permutation importance, the attributions and
    each group's top columns; every name escaped."""
    e = explanation
    intro = (f"<p>Permutation importance: the drop in {html.escape(e.metric)} (in its direction) when a column "
             f"is shuffled, on {e.rows} test rows.</p>")
    sections = [("Global importance", intro + report.table(_importance_rows(e.features, top_k), raw=[""]))]
    if e.attribution_method is not None:
        largest = max((v for _, v in e.attributions[:top_k]), default=0.0)
        rows = [{"feature": f, "mean |attribution|": v, "": _bar(v, largest)} for f, v in e.attributions[:top_k]]
        sections.append((f"Attributions ({e.attribution_method})", report.table(rows, raw=[""])))
    for g in e.groups:
        note = f"<p>{report.verdict(False, warning=True)} {html.escape(g.note)}</p>" if g.note else ""
        table = report.table(_importance_rows(g.features, top_k, with_std=False), raw=[""]) if g.features else ""
        sections.append((f"{g.column} = {g.group} ({g.rows} rows)", note + table))
    if e.notes:
        sections.append(("Notes", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in e.notes) + "</ul>"))
    return report.page("Model explanation", sections)


def disabled_html() -> str:
    """The page the step writes when ``explain.enabled`` is false."""
    return report.page("Model explanation", [("Disabled", "<p>explain.enabled is false: nothing was computed.</p>")])
