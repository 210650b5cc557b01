"""Evaluate: judge a candidate's test-set predictions against a trivial baseline, a reference model and
the champion, for any task, and decide whether it is blessed.

Consumes the candidate's predictions dataset (written by :mod:`kfmlops.predict`; columns in
:mod:`kfmlops.tasks`), the train split (the baseline's prior; the reference model's fit), the test
split (scored by the reference model and the champion; its labels must be the predictions
dataset's), the data's :class:`~kfmlops.tasks.Task` and an :class:`~kfmlops.config.EvaluateConfig`;
produces a :class:`Blessing`: every model's :class:`Scores` side by side, each check with its figures
and the verdict, as JSON and as an HTML page.

The models compared, all on the same test rows:

- the candidate;
- the trivial **baseline**: the prior (the train labels' class shares) or, for regression, the
  train labels' mean, for every row (:func:`baseline_predictions`);
- a **reference model**: a regularised linear model (LogisticRegression or Ridge, C/alpha 1.0) on
  one-hot categories (at most :data:`MAX_CATEGORIES` per column) and standardised numbers, fitted on
  at most :data:`REFERENCE_MAX_ROWS` train rows (:func:`reference_predictions`); reported, not gated;
- the **champion**, the registered model version behind the ``champion`` alias
  (:func:`champion_scores`), loaded through :func:`kfmlops.model_contract.load` with the data's task; a
  champion that cannot score this task (another task or classes, missing columns) is reported and
  skipped, with the reason.

The checks (:func:`bless`), each in the metric's direction (:mod:`kfmlops.tasks.binary` ...): the
primary metric (``primary_metric`` or the task's default) and every metric in ``limits`` against its
bound; the baseline rule: the candidate closes at least ``min_baseline_improvement`` of the gap
between the baseline's primary metric and its ideal value (a constant predictor, one that gives
every row the same scores, fails it outright); the champion: the primary metric worsens by at most
``max_regression``. The reasons name every check, passed or failed, with its figures; failures first.

sklearn and mlflow are imported inside the functions that use them, so importing this module is
cheap (KFP components import it at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kfmlops import model_contract, report
from kfmlops.config import EvaluateConfig
from kfmlops.tasks import LABEL, Task, metrics_module

CHAMPION_ALIAS = "champion"
REFERENCE_MAX_ROWS = 100_000
"""The reference model fits on a seeded sample of this many train rows at most."""
MAX_CATEGORIES = 100
"""The reference model's one-hot columns per categorical feature; rarer categories share one column."""
_EPS = 1e-12  # float slack: 0.86 - 0.85 is 0.010000000000000009, not above 0.01


class EvaluateConfigError(ValueError):
    """An evaluate setting does not fit the task; the message names the setting and the metrics there are."""


@dataclass(frozen=True)
class Scores:
    """One model's test-set figures: ``metrics`` (scalars, in the task module's :data:`DIRECTIONS`) and
    ``details`` (``n``, the confusion matrix, a binary ROC curve...; see :mod:`kfmlops.tasks.binary` ...)."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Metrics and details in one JSON-safe mapping."""
        return {**self.metrics, **self.details}


@dataclass(frozen=True)
class Champion:
    """The registered champion: its ``version`` and its ``scores``, or why it was ``skipped``."""

    version: str
    scores: Scores | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class Check:
    """One blessing check: its ``name`` (``limit:<metric>``, ``baseline``, ``champion``), verdict and figures."""

    name: str
    passed: bool
    detail: str

    @property
    def reason(self) -> str:
        return f"{'passed' if self.passed else 'failed'}: {self.detail}"


@dataclass(frozen=True)
class Blessing:
    """The evaluate gate's decision, with every model's scores; ``reasons`` lists each check, failures first."""

    task: Task
    primary_metric: str
    checks: list[Check]
    candidate: Scores
    baseline: Scores
    reference: Scores | None = None
    champion: Champion | None = None

    @property
    def blessed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in sorted(self.checks, key=lambda c: c.passed)]

    @property
    def champion_version(self) -> str | None:
        return self.champion.version if self.champion else None

    def to_json(self) -> dict[str, Any]:
        champion = self.champion
        return {
            "blessed": self.blessed,
            "reasons": self.reasons,
            "task": self.task.to_json(),
            "primary_metric": self.primary_metric,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks],
            "candidate": self.candidate.to_json(),
            "baseline": self.baseline.to_json(),
            "reference": self.reference.to_json() if self.reference else None,
            "champion": champion.scores.to_json() if champion and champion.scores else None,
            "champion_version": self.champion_version,
            "champion_skipped": champion.skipped if champion else None,
        }

    def _columns(self) -> list[tuple[str, Scores]]:
        columns = [("candidate", self.candidate)]
        if self.reference is not None:
            columns.append(("reference (linear)", self.reference))
        columns.append(("baseline (prior)" if self.task.is_classification else "baseline (mean)", self.baseline))
        if self.champion is not None and self.champion.scores is not None:
            columns.append((f"champion (v{self.champion.version})", self.champion.scores))
        return columns

    def to_html(self) -> str:
        """A self-contained page: the verdict and every check, then each model's metrics side by side."""
        import html

        directions = metrics_module(self.task).DIRECTIONS
        columns = self._columns()
        rows = []
        for name, direction in directions.items():
            if name not in self.candidate.metrics:
                continue
            row: dict[str, Any] = {"metric": name + (" (primary)" if name == self.primary_metric else ""),
                                   "better": "higher" if direction == "max" else "lower"}
            row |= {label: scores.metrics.get(name, "n/a") for label, scores in columns}
            rows.append(row)
        reasons = "".join(f"<li>{report.verdict(c.passed)} {html.escape(c.detail)}</li>"
                          for c in sorted(self.checks, key=lambda c: c.passed))
        sections = [
            ("Verdict", f"<p>{report.verdict(self.blessed)} {'blessed' if self.blessed else 'not blessed'} "
                        f"({html.escape(self.task.kind)} task, label {html.escape(self.task.label)})</p><ul>{reasons}</ul>"),
            ("Metrics on the test split", report.table(rows)),
        ]
        if self.champion is not None and self.champion.skipped:
            sections.append((f"Champion v{self.champion.version} not compared",
                             f"<p>{html.escape(self.champion.skipped)}</p>"))
        if self.task.is_classification:
            for label, scores in columns:
                sections.append((f"Confusion matrix: {label}", report.table(_confusion_rows(self.task, scores))))
        return report.page("Model evaluation", sections)


def _confusion_rows(task: Task, scores: Scores) -> list[dict[str, Any]]:
    matrix = scores.details["confusion_matrix"]
    return [{"actual \\ predicted": actual, **dict(zip(task.classes, counts))} for actual, counts in zip(task.classes, matrix)]


# --- settings ------------------------------------------------------------------------------------

def primary_metric(task: Task, config: EvaluateConfig) -> str:
    """The metric the blessing compares: ``config.primary_metric`` or the task's default; an
    :class:`EvaluateConfigError` when the setting, or a ``limits`` entry, is no metric of the task."""
    module = metrics_module(task)
    known = list(module.DIRECTIONS)
    primary = config.primary_metric or module.PRIMARY
    if primary not in module.DIRECTIONS:
        raise EvaluateConfigError(f"evaluate.primary_metric {primary!r} is not a {task.kind} metric; {task.kind} "
                                  f"metrics are {known}")
    unknown = sorted(set(config.limits) - set(known))
    if unknown:
        raise EvaluateConfigError(f"evaluate.limits names {unknown}, not {task.kind} metrics; {task.kind} metrics "
                                  f"are {known}")
    return primary


# --- the models compared -------------------------------------------------------------------------

def score(task: Task, predictions: pd.DataFrame) -> Scores:
    """The metrics and details of a predictions dataset (with labels)."""
    module = metrics_module(task)
    return Scores(module.metrics(task, predictions), module.details(task, predictions))


def is_constant(task: Task, predictions: pd.DataFrame) -> bool:
    """Whether every row has the same scores (probabilities, or predicted value)."""
    values = model_contract.scores_of(predictions, task).reshape(len(predictions), -1)
    return len(values) == 0 or bool(np.ptp(values, axis=0).max() <= _EPS)


def baseline_predictions(task: Task, train_labels: Any, test_labels: Any, threshold: float = 0.5) -> pd.DataFrame:
    """The trivial baseline's predictions dataset on the test rows (see the module docstring)."""
    test_labels = np.asarray(test_labels)
    scores = metrics_module(task).baseline(task, train_labels, len(test_labels))
    return model_contract.predictions(task, scores, threshold, test_labels)


def _as_text(frame: pd.DataFrame) -> np.ndarray:
    return frame.astype(object).where(frame.notna(), "(missing)").astype(str).to_numpy()


def _as_float(frame: pd.DataFrame) -> np.ndarray:
    return frame.astype(np.float64).to_numpy()


def reference_model(task: Task, train: pd.DataFrame, exclude: tuple[str, ...] = ()):
    """The reference model (see the module docstring), fitted on ``train``'s feature columns (all but the
    label and ``exclude``) to the task's class codes or values; a scikit-learn Pipeline."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    features = [c for c in train.columns if c != task.label and c not in exclude]
    if not features:
        raise ValueError(f"the train split has no feature columns besides the label {task.label!r}")
    numeric = [c for c in features if is_numeric_dtype(train[c]) and not is_bool_dtype(train[c])]
    categorical = [c for c in features if c not in numeric]
    sample = train.sample(n=REFERENCE_MAX_ROWS, random_state=0) if len(train) > REFERENCE_MAX_ROWS else train
    encode = ColumnTransformer([
        ("numeric", make_pipeline(FunctionTransformer(_as_float), SimpleImputer(strategy="median"), StandardScaler()),
         numeric),
        ("categorical", make_pipeline(FunctionTransformer(_as_text),
                                      OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=MAX_CATEGORIES)),
         categorical),
    ])
    head = LogisticRegression(C=1.0, max_iter=1000) if task.is_classification else Ridge(alpha=1.0)
    return make_pipeline(encode, head).fit(sample[features], task.encode(sample[task.label]))


def reference_predictions(task: Task, train: pd.DataFrame, test: pd.DataFrame, threshold: float = 0.5,
                          exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """The reference model's predictions dataset on ``test`` (fitted on ``train``)."""
    model = reference_model(task, train, exclude)
    features = test.drop(columns=[task.label])
    if task.is_classification:
        scores = np.zeros((len(test), len(task.classes)))
        scores[:, model.classes_] = model.predict_proba(features)  # a class absent from train keeps 0
    else:
        scores = np.asarray(model.predict(features), dtype=np.float64)
    return model_contract.predictions(task, scores, threshold, test[task.label].to_numpy())


def champion_version(model_name: str) -> str | None:
    """The version behind ``model_name``'s ``champion`` alias at mlflow's current registry, or None when
    the model is not registered or has no champion; any other registry error propagates."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        registered = mlflow.MlflowClient().get_registered_model(model_name)
    except MlflowException as exc:  # RestException is a subclass
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    # A missing alias is INVALID_PARAMETER_VALUE from get_model_version_by_alias, which other faults
    # share; the registered model's own alias map tells absence apart without guessing.
    version = (registered.aliases or {}).get(CHAMPION_ALIAS)
    return None if version is None else str(version)


def champion_scores(task: Task, model_name: str, test: pd.DataFrame, threshold: float = 0.5) -> Champion | None:
    """The champion's scores on ``test`` (None without a champion). The version the alias points at is
    loaded by number, so the version reported is the one that scored; one that cannot score this task
    comes back ``skipped``, with the model contract's reason."""
    from kfmlops.predict import predict

    version = champion_version(model_name)
    if version is None:
        return None
    try:
        predictions = predict(f"models:/{model_name}/{version}", test, task, threshold)
    except model_contract.ModelContractError as exc:
        return Champion(version, skipped=f"champion v{version} cannot score this test split: {exc}")
    return Champion(version, scores=score(task, predictions))


# --- the checks ----------------------------------------------------------------------------------

def _worse_by(direction: str, value: float, other: float) -> float:
    """How much worse ``value`` is than ``other`` in the metric's direction (negative: better)."""
    return other - value if direction == "max" else value - other


def _limit_checks(task: Task, config: EvaluateConfig, primary: str, candidate: Scores) -> list[Check]:
    directions = metrics_module(task).DIRECTIONS
    checks = []
    for name, bound in config.limits.items():
        direction = directions[name]
        op_ok, op_bad = (">=", "<") if direction == "max" else ("<=", ">")
        if name not in candidate.metrics:
            checks.append(Check(f"limit:{name}", False, f"{name} (evaluate.limits {op_ok} {bound:g}) could not be "
                                "computed on this test split, so the limit is not met"))
            continue
        value = candidate.metrics[name]
        ok = _worse_by(direction, value, bound) <= _EPS
        role = "primary metric " if name == primary else ""
        checks.append(Check(f"limit:{name}", ok, f"{role}{name} {value:.4f} {op_ok if ok else op_bad} "
                                                 f"evaluate.limits.{name} {bound:g}"))
    return checks


def _baseline_check(task: Task, config: EvaluateConfig, primary: str, candidate: Scores, baseline: Scores,
                    constant: bool) -> Check:
    need = config.min_baseline_improvement
    if constant:
        return Check("baseline", False, "the candidate gives every test row the same scores (a constant predictor), "
                                        "so it learned nothing over the baseline")
    if primary not in candidate.metrics or primary not in baseline.metrics:
        return Check("baseline", False, f"{primary} could not be computed on this test split, so the candidate "
                                        "cannot be compared with the baseline")
    value, base = candidate.metrics[primary], baseline.metrics[primary]
    ideal = metrics_module(task).IDEAL[primary]
    if abs(ideal - base) <= _EPS:
        ok = abs(ideal - value) <= _EPS
        return Check("baseline", ok, f"the baseline's {primary} is already the ideal {ideal:g}; the candidate's is "
                                     f"{value:.4f}")
    share = (value - base) / (ideal - base)
    ok = share >= need - _EPS
    return Check("baseline", ok, f"{primary} {value:.4f} closes {share:.1%} of the gap between the baseline "
                                 f"({base:.4f}) and the ideal {ideal:g}; min_baseline_improvement {need:.1%}")


def _champion_check(task: Task, config: EvaluateConfig, primary: str, candidate: Scores,
                    champion: Champion | None) -> Check:
    if champion is None:
        return Check("champion", True, "no champion to compare with")
    who = f"champion v{champion.version}"
    if champion.scores is None:
        return Check("champion", True, f"{who} not compared: {champion.skipped}")
    if primary not in candidate.metrics or primary not in champion.scores.metrics:
        return Check("champion", False, f"{primary} could not be computed for both the candidate and {who}")
    direction = metrics_module(task).DIRECTIONS[primary]
    value, theirs = candidate.metrics[primary], champion.scores.metrics[primary]
    worse = _worse_by(direction, value, theirs)
    side = "below" if direction == "max" else "above"
    if worse <= 0:
        return Check("champion", True, f"{primary} {value:.4f} is no worse than {who} ({theirs:.4f})")
    ok = worse <= config.max_regression + _EPS
    limit = f"within max_regression {config.max_regression:g}" if ok else f"> max_regression {config.max_regression:g}"
    return Check("champion", ok, f"{primary} {value:.4f} is {worse:.4f} {side} {who} ({theirs:.4f}), {limit}")


def bless(task: Task, config: EvaluateConfig, candidate: Scores, baseline: Scores, *, reference: Scores | None = None,
          champion: Champion | None = None, constant: bool = False) -> Blessing:
    """Run every check (see the module docstring) on scores of the same test rows; ``constant``: the
    candidate gave every row the same scores (:func:`is_constant`)."""
    primary = primary_metric(task, config)
    checks = _limit_checks(task, config, primary, candidate)
    checks.append(_baseline_check(task, config, primary, candidate, baseline, constant))
    checks.append(_champion_check(task, config, primary, candidate, champion))
    return Blessing(task, primary, checks, candidate, baseline, reference, champion)


def evaluate(task: Task, predictions: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, config: EvaluateConfig,
             *, model_name: str | None = None, exclude: tuple[str, ...] = ()) -> Blessing:
    """The whole evaluation: the candidate's ``predictions`` of the ``test`` rows against the baseline and
    the reference model (both from ``train``) and, when ``model_name`` is given, the champion in mlflow's
    current registry. ``exclude``: columns the reference model does not read (``train.exclude_features``)."""
    primary_metric(task, config)  # a setting that does not fit the task fails before any work
    if task.label not in test.columns:
        raise ValueError(f"the test split has no label column {task.label!r}")
    if len(predictions) != len(test) or LABEL not in predictions.columns or \
            not np.array_equal(predictions[LABEL].to_numpy(), test[task.label].to_numpy()):
        raise ValueError(f"the predictions dataset ({len(predictions)} rows) is not of this test split "
                         f"({len(test)} rows): its {LABEL!r} column must be the test split's {task.label!r} column, "
                         "row for row")
    threshold = config.decision_threshold
    candidate = score(task, predictions)
    baseline = score(task, baseline_predictions(task, train[task.label], test[task.label], threshold))
    reference = score(task, reference_predictions(task, train, test, threshold, exclude))
    champion = champion_scores(task, model_name, test, threshold) if model_name else None
    return bless(task, config, candidate, baseline, reference=reference, champion=champion,
                 constant=is_constant(task, predictions))
