"""Evaluate: score a candidate's test-set probabilities and decide whether it is blessed.

:func:`score` turns labels and positive-class probabilities into :class:`Scores` (JSON-safe scalar
metrics, a confusion matrix and a downsampled ROC curve ready for KFP's ``ClassificationMetrics``).
:func:`bless` compares them with the absolute minimums in :class:`~kfmlops.config.EvaluateConfig`
and, when there is one, with the current champion's scores on the same test set, giving a
:class:`Blessing` whose reasons name every failed check with its figures.
:func:`champion_probabilities` loads the MLflow registered model behind the ``champion`` alias and
predicts on the test frame, so both models are scored on the same rows.

sklearn and mlflow are imported inside the functions that use them, so importing this module is
cheap (KFP components import it at start-up).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kfmlops import report
from kfmlops.config import EvaluateConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

CHAMPION_ALIAS = "champion"
MAX_CURVE_POINTS = 200
# Float slack for the regression check: 0.86 - 0.85 is 0.010000000000000009, not above 0.01.
_EPS = 1e-12
_SCALARS = ("n", "threshold", "roc_auc", "pr_auc", "accuracy", "f1", "log_loss", "brier")


@dataclass(frozen=True)
class Scores:
    """Test-set metrics of one model at one decision threshold; every field is JSON-safe.

    ``pr_auc`` is average precision (sklearn ``average_precision_score``), the step-wise area under
    the precision-recall curve. ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]``. ``roc_curve`` has
    keys ``fpr``, ``tpr``, ``thresholds``: at most :data:`MAX_CURVE_POINTS` points, all finite.
    """

    n: int
    threshold: float
    roc_auc: float
    pr_auc: float
    accuracy: float
    f1: float
    log_loss: float
    brier: float
    confusion_matrix: list[list[int]]
    roc_curve: dict[str, list[float]]

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, for MLflow ``log_metrics`` and KFP ``Metrics.log_metric``."""
        return {name: float(getattr(self, name)) for name in _SCALARS}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scores":
        return cls(**data)


def _check_inputs(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(proba)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"y_true and proba must be 1-D; got shapes {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"length mismatch: {len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        raise ValueError("cannot score an empty test set")
    try:
        y_float = y.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"labels must be 0/1, got values such as {y[:3].tolist()}") from None
    if np.isnan(y_float).any() or not np.isin(y_float, (0.0, 1.0)).all():
        bad = sorted({v for v in y.tolist() if v not in (0, 1)}, key=str)[:5]
        raise ValueError(f"labels must be 0/1; found {bad}")
    labels = y_float.astype(np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(
            f"the test labels hold one class only ({int(present[0])}, {len(labels)} rows): "
            "ROC AUC and PR AUC need both classes"
        )
    try:
        probs = p.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError("probabilities must be numbers") from None
    nan = int(np.isnan(probs).sum())
    if nan:
        raise ValueError(f"{nan} probabilities are NaN")
    out = int(((probs < 0.0) | (probs > 1.0)).sum())  # also catches +/-inf
    if out:
        raise ValueError(
            f"{out} probabilities lie outside [0, 1] (min {probs.min():.4g}, max {probs.max():.4g}); "
            "pass positive-class probabilities, not logits or scores"
        )
    if not (isinstance(threshold, numbers.Real) and 0.0 < float(threshold) < 1.0):
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    return labels, probs


def _downsample_curve(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> dict[str, list[float]]:
    fpr, tpr, thresholds = (np.asarray(a, dtype=np.float64) for a in (fpr, tpr, thresholds))
    # sklearn's first point (fpr=tpr=0) has threshold +inf ("predict nothing positive"). A threshold
    # of 1.0 means the same when no probability reaches 1.0; otherwise the point is dropped.
    if len(thresholds) and not np.isfinite(thresholds[0]):
        if len(thresholds) > 1 and thresholds[1] < 1.0:
            thresholds = thresholds.copy()
            thresholds[0] = 1.0
    keep = np.isfinite(thresholds) & np.isfinite(fpr) & np.isfinite(tpr)
    fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    if len(thresholds) > MAX_CURVE_POINTS:
        idx = np.unique(np.round(np.linspace(0, len(thresholds) - 1, MAX_CURVE_POINTS)).astype(np.int64))
        fpr, tpr, thresholds = fpr[idx], tpr[idx], thresholds[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def score(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> Scores:
    """Score positive-class probabilities against 0/1 labels; rows with ``proba >= threshold`` are positive."""
    from sklearn import metrics as skm

    labels, probs = _check_inputs(y_true, proba, threshold)
    pred = (probs >= threshold).astype(np.int64)
    cm = skm.confusion_matrix(labels, pred, labels=[0, 1])
    fpr, tpr, thr = skm.roc_curve(labels, probs, drop_intermediate=True)
    values = {
        "roc_auc": skm.roc_auc_score(labels, probs),
        "pr_auc": skm.average_precision_score(labels, probs),
        "accuracy": skm.accuracy_score(labels, pred),
        "f1": skm.f1_score(labels, pred, zero_division=0.0),
        "log_loss": skm.log_loss(labels, probs, labels=[0, 1]),
        "brier": skm.brier_score_loss(labels, probs),
    }
    values = {k: float(v) for k, v in values.items()}
    for name, value in values.items():  # JSON-safe: sklearn can return NaN with a warning
        if not math.isfinite(value):
            raise ValueError(f"{name} is not finite ({value}) for these inputs")
    return Scores(
        n=int(len(labels)),
        threshold=float(threshold),
        confusion_matrix=[[int(v) for v in row] for row in cm],
        roc_curve=_downsample_curve(fpr, tpr, thr),
        **values,
    )


@dataclass(frozen=True)
class Blessing:
    """The evaluate gate's decision.

    ``reasons`` lists every failed check with its figures; when ``blessed`` it holds one line saying
    why the candidate passed.
    """

    blessed: bool
    reasons: list[str]
    candidate: Scores
    champion: Scores | None = None
    champion_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "blessed": self.blessed,
            "reasons": list(self.reasons),
            "candidate": self.candidate.to_json(),
            "champion": self.champion.to_json() if self.champion is not None else None,
            "champion_version": self.champion_version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Blessing":
        champion = data.get("champion")
        return cls(
            blessed=bool(data["blessed"]),
            reasons=list(data["reasons"]),
            candidate=Scores.from_json(data["candidate"]),
            champion=Scores.from_json(champion) if champion is not None else None,
            champion_version=data.get("champion_version"),
        )

    def to_html(self) -> str:
        """A self-contained page: the verdict and reasons, then candidate vs champion side by side."""
        import html

        champ = self.champion
        champ_label = f"champion (v{self.champion_version})" if self.champion_version else "champion"
        rows = []
        for name in _SCALARS:
            cand_value = getattr(self.candidate, name)
            row: dict[str, Any] = {"metric": name, "candidate": cand_value}
            if champ is not None:
                champ_value = getattr(champ, name)
                row[champ_label] = champ_value
                row["candidate − champion"] = (
                    float(cand_value - champ_value) if name not in ("n", "threshold") else ""
                )
            rows.append(row)

        def cm_rows(s: Scores) -> list[dict[str, Any]]:
            (tn, fp), (fn, tp) = s.confusion_matrix
            return [
                {"": "actual negative", "predicted negative": tn, "predicted positive": fp},
                {"": "actual positive", "predicted negative": fn, "predicted positive": tp},
            ]

        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons)
        sections = [
            ("Verdict", f"<p>{report.verdict(self.blessed)} {'blessed' if self.blessed else 'not blessed'}</p>"
                        f"<ul>{reasons}</ul>"),
            ("Metrics: candidate vs champion" if champ is not None else "Metrics (no champion)", report.table(rows)),
            ("Candidate confusion matrix", report.table(cm_rows(self.candidate))),
        ]
        if champ is not None:
            sections.append((f"{champ_label.capitalize()} confusion matrix", report.table(cm_rows(champ))))
        return report.page("Model evaluation", sections)


def bless(
    candidate: Scores,
    config: EvaluateConfig,
    champion: Scores | None = None,
    champion_version: str | None = None,
) -> Blessing:
    """Bless the candidate when it meets ``min_roc_auc`` and ``min_pr_auc`` and its ROC AUC is at most
    ``max_regression`` below the champion's (when there is a champion; score both on the same rows)."""
    if champion_version is not None:
        champion_version = str(champion_version)
    failed: list[str] = []
    passed: list[str] = []
    for name, minimum in (("roc_auc", config.min_roc_auc), ("pr_auc", config.min_pr_auc)):
        value = getattr(candidate, name)
        if value < minimum:
            failed.append(f"{name} {value:.4f} < min_{name} {minimum:.4g}")
        else:
            passed.append(f"{name} {value:.4f} >= min_{name} {minimum:.4g}")
    if champion is None:
        passed.append("no champion to compare with")
    else:
        who = f"champion v{champion_version}" if champion_version else "champion"
        drop = champion.roc_auc - candidate.roc_auc
        if drop > config.max_regression + _EPS:
            failed.append(
                f"roc_auc {candidate.roc_auc:.4f} is {drop:.4f} below {who} ({champion.roc_auc:.4f}) "
                f"> max_regression {config.max_regression:.4g}"
            )
        elif drop > 0:
            passed.append(
                f"roc_auc {candidate.roc_auc:.4f} is {drop:.4f} below {who} ({champion.roc_auc:.4f}), "
                f"within max_regression {config.max_regression:.4g}"
            )
        else:
            passed.append(f"roc_auc {candidate.roc_auc:.4f} >= {who} ({champion.roc_auc:.4f})")
    reasons = failed if failed else ["blessed: " + "; ".join(passed)]
    return Blessing(
        blessed=not failed,
        reasons=reasons,
        candidate=candidate,
        champion=champion,
        champion_version=champion_version,
    )


def _as_probabilities(raw: Any, rows: int) -> np.ndarray:
    import pandas as pd

    if isinstance(raw, pd.DataFrame):
        if "probability" not in raw.columns:
            raise ValueError(
                f"champion predict returned a DataFrame without a 'probability' column: {list(raw.columns)}"
            )
        raw = raw["probability"]
    values = np.asarray(raw, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"champion predict returned shape {values.shape}; expected one probability per row")
    if len(values) != rows:
        raise ValueError(f"champion predict returned {len(values)} values for {rows} rows")
    return values


def champion_probabilities(model_name: str, frame: "pd.DataFrame") -> tuple[str, np.ndarray] | None:
    """The current champion's version and its positive-class probabilities on ``frame``.

    Reads the registry at mlflow's current tracking URI (the caller sets it). Returns ``None`` when
    ``model_name`` is not registered or has no ``champion`` alias; any other error propagates.
    ``frame`` holds raw feature columns (no label). The model is loaded as a pyfunc from the version
    the alias points at, so the version returned is the one that predicted.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    client = mlflow.MlflowClient()
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:  # RestException is a subclass
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    # A missing alias is INVALID_PARAMETER_VALUE from get_model_version_by_alias, which other faults
    # share; the registered model's own alias map tells absence apart without guessing.
    aliases = registered.aliases or {}
    if CHAMPION_ALIAS not in aliases:
        return None
    version = str(aliases[CHAMPION_ALIAS])
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}", suppress_warnings=True)
    return version, _as_probabilities(model.predict(frame), len(frame))
