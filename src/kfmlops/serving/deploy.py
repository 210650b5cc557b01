"""Deploy: a registered model version in, validated and rolled out as a canary, promoted or rolled back.

Consumes the test split Parquet (from :mod:`kfmlops.ingest`; the label column is dropped), the
data's :class:`~kfmlops.tasks.Task`, a :class:`~kfmlops.serving.config.DeployConfig` and the
:class:`~kfmlops.config.MlflowConfig` of the registry; produces a :class:`DeployResult` and tags
the version with the outcome. No KFP here: the component wraps :func:`deploy`.

1. **Resolve**: the version is ``config.model_version`` or the ``champion`` alias. If the alias is
   elsewhere, :func:`kfmlops.register.promote` moves it (recording ``kfmlops.previous_champion``).
   The previous champion is the rollback target.
2. **Validate before push**: the candidate predictor (ours, whatever the model's framework) runs
   as a local process; it gets the test rows (p99 latency, error and rejection rates against the
   SLOs; every row's served scores within ``max_prediction_diff`` of the registry model's own
   scores, :func:`kfmlops.model_contract.load`, over the whole score vector:
   :func:`~kfmlops.serving.outputs.score_diff`) and a battery of malformed requests (each must be a
   4xx, and the predictor must still be ready afterwards). A model whose MLflow flavors do not fit
   ``inference_service.runtime`` is refused here too. A failure ends here: ``rejected``, and the
   alias goes back.
3. **Roll out** by ``config.strategy``; the outcome is ``promoted`` (the candidate takes all
   traffic) or ``rolled_back`` (traffic back on the previous version, and the ``champion`` alias on
   the previous champion). ``DeployResult.canary`` holds the strategy's check.

   - ``canary``: the target (:mod:`kfmlops.serving.rollout`) puts the candidate up with
     ``canary_traffic_percent`` of the traffic (all of it on a first rollout) and the canary check
     probes the candidate's own URL (in the runtime's protocol; the scores are compared on our own
     runtime only, since KServe's runtimes answer in their own format). Healthy: the candidate
     takes 100%. Unhealthy, or a step failed: rolled back.

   The others run locally: the previous version's predictor starts beside the candidate's, both
   behind a :class:`~kfmlops.serving.router.Router` (on a first rollout there is nothing to run
   beside, and the candidate is checked as a canary at 100%):

   - ``blue-green``: green (the candidate) is checked on its own URL while blue serves; the route
     switches in one assignment; the live route is checked; failing, it switches back to blue at
     once (blue is still up).
   - ``shadow``: blue answers the test traffic; each request is mirrored to the candidate; both
     answers go to the inference log and are compared (:func:`~kfmlops.serving.experiment.compare_shadow`);
     within ``max_disagreement`` (and the candidate's error rate), the candidate takes the route.
   - ``ab``: keys are split between the arms; the test rows go through the router in batches, each
     batch's labels (the test split's) imported after its predictions are logged (labels arrive
     later); once each arm holds ``min_samples_per_arm`` labelled rows the test runs once
     (:func:`~kfmlops.serving.experiment.ab_test`): the challenger significantly better is
     promoted; the champion better, an inconclusive test, or too few rows before the traffic or
     ``max_duration_s`` ran out keep the champion (rolled back, the reason says which).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from kfmlops.config import MlflowConfig, ProvenanceConfig, Settings
from kfmlops.register import (
    CHAMPION,
    DEPLOY_REASONS_TAG,
    DEPLOY_STATUS_TAG,
    PREVIOUS_CHAMPION_TAG,
    TAG_LIMIT,
    current_champion,
    promote,
)
from kfmlops.monitoring.config import InferenceLogConfig
from kfmlops.monitoring.store import InferenceLog, import_ground_truth
from kfmlops.serving.config import Check, DeployConfig, Probe
from kfmlops.serving.inferenceservice import PROTOCOL, check_runtime
from kfmlops.serving.outputs import score_diff
from kfmlops.serving.probe import bad_requests, probe, send_bad_requests
from kfmlops.serving.process import PredictorProcess, PredictorStartError
from kfmlops.serving.rollout import KServeTarget, LocalTarget, RolloutTarget
from kfmlops.serving.router import Router, Routes, Upstream
from kfmlops.tasks import Task

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """The stage cannot start: no version to deploy, or no test rows."""


@dataclass(frozen=True)
class CheckResult:
    """One check of a running predictor: ``passed`` and, when not, the ``reasons``."""

    passed: bool
    reasons: list[str]
    probe: dict
    max_prediction_diff: float | None = None
    bad_requests: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class DeployResult:
    status: Literal["promoted", "rolled_back", "rejected"]
    model_name: str
    version: str
    previous_version: str | None
    champion: str | None
    target: str
    traffic_percent: int
    validation: CheckResult
    canary: CheckResult | None  # the rollout strategy's check (canary, blue-green, shadow or A/B)
    steps: list[str]
    manifest: str | None = None
    strategy: str = "canary"

    def to_json(self) -> dict:
        return asdict(self)

    def audit_entry(self, actor: str):
        """The rollout as an audit log entry: ``deployed`` (promoted), ``rollback`` (the canary failed:
        traffic and ``champion`` back on the previous version) or ``rejected`` (failed validation)."""
        from kfmlops.audit import Entry, Event

        event = {"promoted": Event.DEPLOYED, "rolled_back": Event.ROLLBACK, "rejected": Event.REJECTED}[self.status]
        failed = [r for check in (self.validation, self.canary) if check and not check.passed for r in check.reasons]
        return Entry(event=event, model=self.model_name, version=str(self.version), actor=actor,
                     reason="; ".join(failed) or f"deploy {self.status}",
                     details={"status": self.status, "target": self.target, "traffic_percent": self.traffic_percent,
                              "previous_version": self.previous_version, "champion": self.champion,
                              "strategy": self.strategy})


@dataclass(frozen=True)
class Reference:
    """What the deploy stage knows of the registry model: its own scores of the probe rows, the
    signature of the columns it reads, whether our predictor knows its categories (a kfmlops
    bundle), and why ``inference_service.runtime`` cannot serve it (None when it can)."""

    scores: np.ndarray
    signature: list[tuple[str, str, bool]]
    knows_categories: bool
    runtime_problem: str | None


def version_config(settings: Settings, version: str) -> DeployConfig:
    """``settings.deploy`` for rolling out ``version``: the served binary label's threshold is
    ``settings.evaluate.decision_threshold``, the one evaluation judged the model at, and ``:explain``
    answers at most ``settings.explain.serving_max_rows`` rows."""
    service = settings.deploy.inference_service
    serving = service.serving.model_copy(update={"decision_threshold": settings.evaluate.decision_threshold,
                                                 "explain_max_rows": settings.explain.serving_max_rows})
    return settings.deploy.model_copy(update={
        "model_version": str(version), "inference_service": service.model_copy(update={"serving": serving})})


def deploy(
    test_path: str | Path,
    task: Task,
    config: DeployConfig,
    mlflow_config: MlflowConfig,
    provenance: ProvenanceConfig = ProvenanceConfig(),
) -> DeployResult:
    """Validate, canary and promote (or roll back) one model version; see the module docstring.

    ``provenance`` says where the verify key comes from: the candidate predictor refuses to start
    on a model whose signed provenance does not verify (the validation then fails).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from kfmlops.provenance import verify_key
    from kfmlops.tracking import tracking_uri

    logging.getLogger("httpx").setLevel(logging.WARNING)  # else one INFO line per probe request: thousands
    uri = tracking_uri(mlflow_config)
    mlflow.set_tracking_uri(uri)  # models:/ URIs below resolve against the global registry
    client = MlflowClient(uri, uri)
    name = mlflow_config.model_name
    champion = current_champion(mlflow_config)
    version = config.model_version or champion
    if version is None:
        raise DeployError(f"nothing to deploy: model {name!r} has no '{CHAMPION}' alias and deploy.model_version is unset")
    steps = []
    if champion != version:
        previous = promote(mlflow_config, version).previous_champion
        steps.append(f"champion alias moved from {previous} to {version}")
    else:
        tag = client.get_model_version(name, version).tags.get(PREVIOUS_CHAMPION_TAG, "none")
        previous = None if tag == "none" else tag

    frame = pd.read_parquet(test_path)
    labels = frame[task.label] if task.label in frame.columns else None
    if config.strategy == "ab" and labels is None:
        raise DeployError(f"{test_path} has no label column {task.label!r}: an A/B test needs labels")
    frame = frame.drop(columns=[task.label]) if labels is not None else frame
    if frame.empty:
        raise DeployError(f"{test_path} has no rows to validate with")
    model_uri = f"models:/{name}/{version}"
    serving = config.inference_service.serving
    # The candidate loads its model while this process computes the registry model's own predictions.
    candidate = PredictorProcess(model_uri, model_name=name, tracking_uri=uri, serving=serving,
                                 verify_key=verify_key(provenance)).launch()
    try:
        rows = max(config.validation.probe.rows, config.canary.probe.rows)
        reference = _reference(model_uri, task, frame.head(rows), config.inference_service.runtime)
        expected = reference.scores
    except BaseException:
        candidate.stop()
        raise

    def result(status, validation, canary=None, percent=0, manifest=None) -> DeployResult:
        champion = version if status == "promoted" else _restore(client, name, version, previous)
        if status != "promoted":
            steps.append(f"champion alias restored to {champion}")
        outcome = DeployResult(status, name, version, previous, champion, config.target, percent, validation, canary, steps,
                               manifest, config.strategy)
        return _finish(client, outcome, (canary or validation).reasons)

    if reference.runtime_problem is not None:
        candidate.stop()
        steps.append("validation failed: the model does not fit the configured runtime")
        return result("rejected", CheckResult(False, [reference.runtime_problem], {}))
    try:
        candidate.wait_ready()
    except PredictorStartError as exc:
        steps.append("validation failed: the candidate predictor did not start")
        return result("rejected", CheckResult(False, [str(exc)[-2000:]], {}))
    with candidate:
        battery = bad_requests(
            reference.signature, _first_valid_row(frame), max_rows=serving.max_rows,
            unseen_rejected=reference.knows_categories and serving.unseen_categories == "reject",
        )
        validation = _check(candidate, name, frame, task, config.validation, expected, config.max_prediction_diff, battery)
        steps.append(f"validation {'passed' if validation.passed else 'failed'}")
        if not validation.passed:
            return result("rejected", validation)

        def target() -> RolloutTarget:
            if config.target == "local":
                return LocalTarget(candidate.url, previous)
            return KServeTarget(
                config.inference_service,
                storage_uri=client.get_model_version_download_uri(name, version),
                registered_model=name,
                ready_timeout_s=config.ready_timeout_s,
                poll_interval_s=config.poll_interval_s,
            )

        if config.strategy == "canary" or previous is None:
            if config.strategy != "canary":
                steps.append(f"{config.strategy}: no previous version to run beside, so a canary at 100%")
            canary, percent, rollout = _canary(target, version, name, frame, task, config, expected, steps)
        else:
            live = PredictorProcess(f"models:/{name}/{previous}", model_name=name, tracking_uri=uri, serving=serving,
                                    verify_key=verify_key(provenance))
            canary, percent = _routed(live, Upstream("candidate", version, candidate.url), previous, name, frame, labels,
                                      task, config, expected, steps)
            rollout = None
    manifest = getattr(rollout, "manifest", None)
    if canary.passed:
        return result("promoted", validation, canary, percent, manifest)
    if rollout is not None:
        try:
            rollout.rollback()
            steps.append(f"traffic rolled back to {previous}")
        except Exception as exc:  # the alias still goes back; the failure is reported with the rest
            canary.reasons.append(f"rollback failed: {type(exc).__name__}: {exc}")
            steps.append("traffic rollback failed")
    return result("rolled_back", validation, canary, 0, manifest)


def _canary(
    make_target, version: str, name: str, frame: pd.DataFrame, task: Task, config: DeployConfig, expected: np.ndarray,
    steps: list[str],
) -> tuple[CheckResult, int, RolloutTarget | None]:
    """Put the candidate up on the target, probe it, promote it when healthy: (the check, its share, the target)."""
    percent, target = config.canary_traffic_percent, None
    runtime = config.inference_service.runtime if config.target == "kserve" else "kfmlops"
    ours = runtime == "kfmlops"
    try:
        target = make_target()
        if target.live_version() is None:
            percent = 100
            steps.append("first rollout: no previous version, so no canary split")
        url = target.start(version, percent)
        steps.append(f"canary: version {version} at {percent}% of traffic")
        if not ours:
            steps.append(f"canary scores not compared: KServe's {runtime} runtime answers in its own format")
        canary = _check_url(url, name, frame, task if ours else None, config.canary, expected, config.max_prediction_diff,
                            PROTOCOL[runtime])
        steps.append(f"canary {'healthy' if canary.passed else 'unhealthy'}")
        if canary.passed:
            target.promote()
            steps.append(f"promoted: version {version} at 100%")
            return canary, 100, target
    except Exception as exc:  # a failed step is an unhealthy canary: roll back
        log.exception("canary step failed")
        canary = CheckResult(False, [f"{type(exc).__name__}: {exc}"], {})
        steps.append("canary step failed")
    return canary, 0, target


@dataclass(frozen=True)
class _Run:
    """What a routed strategy works with: the model name, the test rows (and their labels), the task,
    the settings, the candidate's reference scores, the inference log's root and the steps so far."""

    name: str
    frame: pd.DataFrame
    labels: pd.Series | None
    task: Task
    config: DeployConfig
    expected: np.ndarray
    root: str
    steps: list[str]

    def check(self, url: str, check: Check, compare: bool = True) -> CheckResult:
        """:func:`_check_url` of ``url`` with the test rows (the scores compared with the candidate's when ``compare``)."""
        return _check_url(url, self.name, self.frame, self.task if compare else None, check, self.expected,
                          self.config.max_prediction_diff)

    def served(self, since: datetime) -> pd.DataFrame:
        """The versions' logged predictions since ``since``, labels joined (:func:`~kfmlops.serving.experiment.served_frame`)."""
        from kfmlops.serving.experiment import logged_rows, served_frame

        threshold = self.config.inference_service.serving.decision_threshold
        return served_frame(logged_rows(self.root, self.name, since), self.task, threshold)


def _routed(live: PredictorProcess, candidate: Upstream, previous: str, name: str, frame: pd.DataFrame,
            labels: pd.Series | None, task: Task, config: DeployConfig, expected: np.ndarray, steps: list[str],
            ) -> tuple[CheckResult, int]:
    """Blue-green, shadow or A/B: ``live`` (the previous version's predictor, started here) beside the
    candidate, both behind a router; returns (the strategy's check, the candidate's final share)."""
    strategy = {"blue-green": _blue_green, "shadow": _shadow, "ab": _ab}[config.strategy]
    try:
        with live, tempfile.TemporaryDirectory(prefix="kfmlops-rollout-") as scratch:
            champion = Upstream("champion", previous, live.url)
            run = _Run(name, frame, labels, task, config, expected, config.log_root or scratch, steps)
            with InferenceLog(InferenceLogConfig(root=run.root)) as log_, \
                    Router(Routes(live=champion), model_name=name, log=log_) as router:
                steps.append(f"{config.strategy}: versions {previous} (champion) and {candidate.version} (candidate) "
                             "up behind the router; the champion answers")
                check = strategy(router, champion, candidate, run)
                log.info("%s check of version %s: %s %s", config.strategy, candidate.version,
                         "passed" if check.passed else "failed", json.dumps(check.probe, default=str)[:3000])
                if check.passed:
                    router.switch(Routes(live=candidate))
                    steps.append(f"promoted: version {candidate.version} answers all traffic")
                    return check, 100
                router.switch(Routes(live=champion))
                steps.append(f"traffic back on version {previous} alone")
                return check, 0
    except Exception as exc:  # a failed step: the champion keeps the traffic
        log.exception("%s step failed", config.strategy)
        steps.append(f"{config.strategy} step failed")
        return CheckResult(False, [f"{type(exc).__name__}: {exc}"], {}), 0


def _blue_green(router: Router, blue: Upstream, green: Upstream, run: _Run) -> CheckResult:
    """Check green on its own URL, switch the route, check the live route; failing, switch back at once."""
    settings = run.config.blue_green
    own = run.check(green.url, settings.green)
    run.steps.append(f"blue-green: green (version {green.version}) {'passed' if own.passed else 'failed'} on its own URL")
    if not own.passed:
        return CheckResult(False, [f"green: {r}" for r in own.reasons], {"green": own.probe}, own.max_prediction_diff)
    switched = router.switch(Routes(live=green))
    run.steps.append(f"blue-green: route switched to green in {switched * 1e6:.0f} µs; blue stays up")
    after = run.check(router.url, settings.after_switch)
    figures = {"green": own.probe, "after_switch": after.probe, "switch_s": switched}
    if not after.passed:
        figures["switch_back_s"] = router.switch(Routes(live=blue))
        run.steps.append(f"blue-green: the live route failed after the switch; switched back to blue in "
                         f"{figures['switch_back_s'] * 1e6:.0f} µs")
    return CheckResult(after.passed, [f"after the switch: {r}" for r in after.reasons], figures, after.max_prediction_diff)


def _shadow(router: Router, live: Upstream, candidate: Upstream, run: _Run) -> CheckResult:
    """Mirror the test traffic to the candidate; compare the logged answers."""
    from kfmlops.serving.experiment import compare_shadow

    settings = run.config.shadow
    since = datetime.now(timezone.utc)
    router.switch(Routes(live=live, candidate=candidate, mode="mirror"))
    run.steps.append(f"shadow: the champion answers; every request mirrored to version {candidate.version}")
    served = run.check(router.url, settings.check, compare=False)  # the champion's answers: no reference to compare
    router.settle()
    comparison = compare_shadow(run.served(since), run.task, live.version, candidate.version, settings.regression_tolerance)
    mirrored = router.stats().get(candidate.arm, {"requests": 0, "errors": 0})
    error_rate = mirrored["errors"] / mirrored["requests"] if mirrored["requests"] else 1.0
    reasons = [f"live route: {r}" for r in served.reasons]
    if comparison["compared"] < settings.min_compared:
        reasons.append(f"{comparison['compared']} rows compared < min_compared {settings.min_compared}")
    elif comparison["disagreement"] > settings.max_disagreement:
        reasons.append(f"the candidate disagrees with the champion on {comparison['disagreement']:.2%} of rows > "
                       f"{settings.max_disagreement:.2%} (largest score difference {comparison['max_score_diff']:.3g})")
    if error_rate > settings.max_candidate_error_rate:
        reasons.append(f"the candidate failed {error_rate:.2%} of mirrored requests > {settings.max_candidate_error_rate:.2%}")
    run.steps.append(f"shadow: {comparison['compared']} rows compared, disagreement {comparison['disagreement']}")
    return CheckResult(not reasons, reasons, {"live": served.probe, "comparison": comparison, "mirrored": mirrored},
                       comparison["max_score_diff"])


def _ab(router: Router, champion: Upstream, challenger: Upstream, run: _Run) -> CheckResult:
    """Split the test rows between the arms in batches, import each batch's labels after its
    predictions, and test once, when both arms hold the minimum sample."""
    from kfmlops.serving.experiment import ab_test, arm_outcomes, statistical_test

    settings = run.config.ab
    test = statistical_test(run.task, settings.test)
    since, deadline = datetime.now(timezone.utc), time.monotonic() + settings.max_duration_s
    router.switch(Routes(live=champion, candidate=challenger, mode="split", percent=settings.challenger_percent,
                         key_header=settings.key_header, key_column=settings.key_column, salt=settings.salt))
    run.steps.append(f"ab: {settings.challenger_percent}% of keys to version {challenger.version}; {test} at alpha "
                     f"{settings.alpha} once each arm has {settings.min_samples_per_arm} labelled rows")
    experiment = f"ab-{challenger.version}-{time.time_ns()}-"
    looks, verdict = [], None
    for start in range(0, len(run.frame), settings.batch_rows):
        batch = run.frame.iloc[start : start + settings.batch_rows]
        prefix = f"{experiment}{start}-"
        probe(router.url, run.name, batch, Probe(rows=len(batch), concurrency=4), None, request_ids=prefix)
        router.settle()
        _import_labels(run.root, prefix, run.labels.iloc[start : start + len(batch)])  # labels arrive after predictions
        outcomes = arm_outcomes(run.served(since), run.task, {"champion": champion.version, "challenger": challenger.version})
        verdict = ab_test(outcomes["champion"], outcomes["challenger"], test=test, alpha=settings.alpha,
                          min_samples=settings.min_samples_per_arm)
        looks.append(verdict.samples)
        if verdict.decision != "waiting" or time.monotonic() > deadline:
            break
    if verdict.decision == "waiting":
        verdict = replace(verdict, decision="inconclusive", reason="the test traffic or max_duration_s ran out before "
                          f"each arm had {settings.min_samples_per_arm} labelled rows ({verdict.samples})")
    run.steps.append(f"ab: {verdict.decision}: {verdict.reason}")
    figures = {"verdict": verdict.to_json(), "looks": looks, "arms": router.stats()}
    if verdict.decision == "challenger":
        return CheckResult(True, [], figures)
    kept = "the champion is better" if verdict.decision == "champion" else "inconclusive, the champion is kept"
    return CheckResult(False, [f"A/B {kept}: {verdict.reason}"], figures)


def _import_labels(root: str, prefix: str, labels: pd.Series) -> None:
    """Commit ``labels`` under the log as the labels of requests ``{prefix}0``, ``{prefix}1``, ..."""
    truth = pd.DataFrame({"request_id": [f"{prefix}{i}" for i in range(len(labels))], "label": labels.astype(str).to_numpy()})
    with tempfile.TemporaryDirectory(prefix="kfmlops-labels-") as tmp:
        path = Path(tmp) / "labels.parquet"
        truth.to_parquet(path)
        import_ground_truth(root, str(path))


def _reference(model_uri: str, task: Task, rows: pd.DataFrame, runtime: str) -> Reference:
    """The registry model's own scores of ``rows`` and what the checks need to know of it."""
    import tempfile

    import mlflow.artifacts
    from mlflow.models import Model

    from kfmlops import model_contract
    from kfmlops.serving.schema import signature_of

    with tempfile.TemporaryDirectory(prefix="kfmlops-deploy-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        loaded = model_contract.load(local, task)
        mlmodel = Model.load(local)
        scores = loaded.scores(rows)
        knows_categories = model_contract.bundle_path(local) is not None
    signature = signature_of(mlmodel) or [(c, "", True) for c in loaded.features]
    if loaded.features:
        signature = [entry for entry in signature if entry[0] in set(loaded.features)]
    return Reference(scores, signature, knows_categories, check_runtime(runtime, mlmodel.flavors))


def _check(candidate: PredictorProcess, name: str, frame: pd.DataFrame, task: Task, check: Check, expected: np.ndarray,
           max_diff: float, battery) -> CheckResult:
    """The validation check: SLO probe and parity, then the malformed-request battery."""
    result = _check_url(candidate.url, name, frame, task, check, expected, max_diff)
    answers = send_bad_requests(candidate.url, name, battery)
    reasons = list(result.reasons)
    reasons += [f"bad request {a.case!r} answered {a.status}, not 4xx: {a.message[:200]}" for a in answers if not a.refused]
    if not candidate.alive():
        reasons.append(f"the predictor died during the battery:\n{candidate.log_tail(1000)}")
    answers_json = [{"case": a.case, "status": a.status, "refused": a.refused} for a in answers]
    return CheckResult(not reasons, reasons, result.probe, result.max_prediction_diff, answers_json)


def _check_url(url: str, name: str, frame: pd.DataFrame, task: Task | None, check: Check, expected: np.ndarray,
               max_diff: float, protocol: str = "v1") -> CheckResult:
    """Probe ``url`` with test rows; judge latency, error and rejection rates and (with a ``task``) the
    served scores against ``expected``."""
    report = probe(url, name, frame, check.probe, task, protocol)
    slo, reasons = check.slo, []
    if report.requests == 0:
        reasons.append("no request completed within the probe's time")
    if report.p99_ms > slo.p99_latency_ms:
        reasons.append(f"p99 latency {report.p99_ms:.1f} ms > {slo.p99_latency_ms} ms")
    if report.error_rate > slo.max_error_rate:
        reasons.append(f"error rate {report.error_rate:.2%} > {slo.max_error_rate:.2%} ({report.error_samples[:2]})")
    if report.rejected_rate > slo.max_rejected_rate:
        reasons.append(f"{report.rejected_rate:.2%} of test requests rejected > {slo.max_rejected_rate:.2%} ({report.error_samples[:2]})")
    got = report.predictions
    scored = ~np.isnan(got.reshape(len(got), -1)).any(axis=1)
    diff = score_diff(task, got[scored], expected[: len(got)][scored]) if task is not None and scored.any() else None
    if diff is not None and diff > max_diff:
        reasons.append(f"predictions differ from the registry model's by up to {diff:.3g} > {max_diff}")
    return CheckResult(not reasons, reasons, report.summary(), diff)


def _first_valid_row(frame: pd.DataFrame) -> dict:
    from kfmlops.serving.predictor import records

    complete = frame.dropna()
    return records((complete if not complete.empty else frame).head(1))[0]


def _restore(client, name: str, version: str, previous: str | None) -> str | None:
    """Point ``champion`` back at ``previous`` (or remove it when there was none); returns the alias's version."""
    if previous is None:
        client.delete_registered_model_alias(name, CHAMPION)
    else:
        client.set_registered_model_alias(name, CHAMPION, previous)
    log.warning("model %s version %s not deployed; champion alias back on %s", name, version, previous)
    return previous


def _finish(client, result: DeployResult, reasons: list[str]) -> DeployResult:
    client.set_model_version_tag(result.model_name, result.version, DEPLOY_STATUS_TAG, result.status)
    client.set_model_version_tag(result.model_name, result.version, DEPLOY_REASONS_TAG, json.dumps(reasons)[:TAG_LIMIT])
    log.info("deploy %s version %s: %s", result.model_name, result.version, result.status)
    return result
