"""Rollout strategies beside the canary: blue-green, shadow and A/B, against real predictor processes.

One registry (``rollout_store``) holds three versions of ``adult``: 1 and 2 the same tabular net
(equal arms), 3 a scikit-learn logistic regression fitted on flipped labels (a deliberately worse
model, wrong where the others are right); the test rows are Adult's complete ones. Each strategy's promote and roll-back path runs through
:func:`kfmlops.serving.deploy.deploy` on target ``local``; the router's own guarantees (the
instant switch, a shadow's answer never returned, sticky keys) are checked on the router in front
of real predictors; the statistical tests on known figures; the cluster manifests against the CRD
schemas (``tests/schemas``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import yaml
from schemas import validate_crd
from serving_fixtures import BLESSED, served_store, sklearn_model  # noqa: F401  (fixtures)

from kfmlops.audit import Event, log_event, read_log
from kfmlops.config import AuditConfig, MlflowConfig, ProvenanceConfig, Settings
from kfmlops.monitoring.config import InferenceLogConfig
from kfmlops.monitoring.store import InferenceLog
from kfmlops.provenance import generate_keypair
from kfmlops.register import CHAMPION, current_champion, register
from kfmlops.serving import routing_specs
from kfmlops.serving.config import AbTest, BlueGreen, Check, DeployConfig, InferenceServiceConfig, Probe, RequestLogger, Shadow, Slo
from kfmlops.serving.deploy import deploy
from kfmlops.serving.inferenceservice import to_yaml
from kfmlops.serving.experiment import ab_test, compare_shadow, logged_rows, served_frame, statistical_test
from kfmlops.serving.predictor import records
from kfmlops.serving.process import PredictorProcess
from kfmlops.serving.router import ARM_HEADER, REQUEST_ID_HEADER, Router, Routes, Upstream, in_challenger
from kfmlops.tasks import Task
from kfmlops.tracking import start_run

# Loose latency SLOs: the 2-core machine is shared, and latency is not what these tests judge.
QUICK = Check(probe=Probe(rows=300, concurrency=4, timeout_s=60), slo=Slo(p99_latency_ms=10_000))
FAILING = Check(probe=QUICK.probe, slo=Slo(p99_latency_ms=0.001))  # no predictor answers in 1 µs


@dataclass(frozen=True)
class RolloutStore:
    mlflow: MlflowConfig
    settings: Settings  # for the audit log: this registry, an audit directory, the signing key
    test_path: str
    task: Task
    features: pd.DataFrame
    verify_key: bytes
    good: str = "1"
    twin: str = "2"
    bad: str = "3"


@pytest.fixture(scope="module")
def store(served_store, adult, tmp_path_factory) -> RolloutStore:
    root = tmp_path_factory.mktemp("rollouts")
    config = MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="rollouts", model_name="adult")
    private, public = generate_keypair()
    task = served_store.task
    # Complete rows only: the scikit-learn model's signature marks every column required (no nulls).
    test = pd.read_parquet(adult.test_path).dropna().reset_index(drop=True)
    test.to_parquet(root / "test.parquet")
    features = test.drop(columns=[task.label])
    for name in ("good", "twin"):
        register(served_store.model_dir, start_run(config, name, {}), config, BLESSED, features, task=task, signing_key=private)
    flipped = pd.read_parquet(adult.train_path).sample(n=3000, random_state=0)
    negative, positive = task.classes
    flipped[task.label] = np.where(flipped[task.label] == negative, positive, negative)
    flipped.to_parquet(root / "flipped.parquet")
    bad_dir = sklearn_model(str(root / "flipped.parquet"), task, root / "bad")
    register(bad_dir, start_run(config, "bad", {}), config, BLESSED, features, task=task, signing_key=private)
    (root / "signing.pem").write_bytes(private)
    settings = Settings(mlflow=config, audit=AuditConfig(directory=str(root / "audit")),
                        provenance=ProvenanceConfig(signing_key_file=str(root / "signing.pem"), development_keys=False))
    return RolloutStore(config, settings, str(root / "test.parquet"), task, features, public)


def _champion(store: RolloutStore, version: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(store.mlflow.tracking_uri).set_registered_model_alias("adult", CHAMPION, version)


def _deploy(store: RolloutStore, champion: str, candidate: str, **overrides):
    """Deploy ``candidate`` over ``champion`` locally and write the outcome to the audit log."""
    _champion(store, champion)
    config = DeployConfig(**{"model_version": candidate, "validation": QUICK, **overrides})
    os.environ["KFMLOPS_VERIFY_KEY"] = store.verify_key.decode()
    try:
        result = deploy(store.test_path, store.task, config, store.mlflow, ProvenanceConfig(development_keys=False))
    finally:
        del os.environ["KFMLOPS_VERIFY_KEY"]
    log_event(store.settings, result.audit_entry("tester"))
    return result


def _last_audit(store: RolloutStore):
    return read_log(Path(store.settings.audit.directory) / "adult.jsonl")[-1]


@pytest.fixture(scope="module")
def predictors(store):
    """The good (version 1) and the bad (version 3) model, each in its own predictor process."""
    os.environ["KFMLOPS_VERIFY_KEY"] = store.verify_key.decode()
    try:
        good = PredictorProcess("models:/adult/1", model_name="adult", tracking_uri=store.mlflow.tracking_uri).launch()
        bad = PredictorProcess("models:/adult/3", model_name="adult", tracking_uri=store.mlflow.tracking_uri).launch()
        good.wait_ready(), bad.wait_ready()
    finally:
        del os.environ["KFMLOPS_VERIFY_KEY"]
    yield Upstream("champion", "1", good.url), Upstream("candidate", "3", bad.url)
    good.stop(), bad.stop()


def _answer(url: str, rows: list[dict], headers: dict | None = None) -> httpx.Response:
    response = httpx.post(f"{url}/v1/models/adult:predict", content=orjson.dumps({"instances": rows}),
                          headers={"content-type": "application/json", **(headers or {})}, timeout=30)
    assert response.status_code == 200, response.text
    return response


# --- blue-green ---------------------------------------------------------------------------------------


def test_blue_green_promotes_green_after_the_switch(store):
    result = _deploy(store, store.good, store.twin, strategy="blue-green", blue_green=BlueGreen(green=QUICK, after_switch=QUICK))
    assert result.status == "promoted", result
    assert (result.strategy, result.traffic_percent, result.champion) == ("blue-green", 100, store.twin)
    assert result.canary.probe["switch_s"] < 0.001 and "switch_back_s" not in result.canary.probe
    assert result.canary.max_prediction_diff < 1e-5  # the live route answered with green's scores after the switch
    assert any(s.startswith("blue-green: route switched to green") for s in result.steps)
    assert _last_audit(store).event == Event.DEPLOYED and _last_audit(store).details["strategy"] == "blue-green"


def test_blue_green_switches_back_to_blue_when_the_live_route_fails(store):
    result = _deploy(store, store.good, store.twin, strategy="blue-green", blue_green=BlueGreen(green=QUICK, after_switch=FAILING))
    assert result.status == "rolled_back", result
    assert result.canary.probe["switch_back_s"] < 0.001
    assert any("switched back to blue" in s for s in result.steps)
    assert "after the switch: p99 latency" in result.canary.reasons[0]
    assert current_champion(store.mlflow) == store.good
    record = _last_audit(store)
    assert record.event == Event.ROLLBACK and "after the switch" in record.reason


def test_the_router_switches_instantly_under_traffic_and_back(store, predictors):
    """Blue answers, the route switches to green, then back: the very next request after each switch
    is answered by the new side, and no request fails while the switches happen under load."""
    blue, green = predictors
    rows = records(store.features.head(400))
    direct_blue = _answer(blue.url, rows).json()["predictions"]
    direct_green = _answer(green.url, rows).json()["predictions"]
    assert direct_blue != direct_green
    with Router(Routes(live=blue), model_name="adult") as router:
        assert _answer(router.url, rows).json()["predictions"] == direct_blue
        with ThreadPoolExecutor(4) as pool:
            load = [pool.submit(_answer, router.url, rows[i : i + 1]) for i in range(400)]
            seconds = [router.switch(Routes(live=green if k % 2 == 0 else blue)) for k in range(50)]
            statuses = [f.result().status_code for f in load]
        assert set(statuses) == {200} and max(seconds) < 0.001
        router.switch(Routes(live=green))
        assert _answer(router.url, rows).json()["predictions"] == direct_green
        router.switch(Routes(live=blue))
        assert _answer(router.url, rows).json()["predictions"] == direct_blue


class FakeCoreApi:
    """Stands in for ``CoreV1Api``: records the Service patches."""

    def __init__(self):
        self.patches = []

    def patch_namespaced_service(self, name, namespace, body):
        self.patches.append((namespace, name, body))


def test_kfmlops_models_rollback_switches_the_blue_green_service_back_on_command(store, tmp_path, monkeypatch, capsys):
    import json

    from kfmlops import kube
    from kfmlops.registry import main as models

    api = FakeCoreApi()
    monkeypatch.setattr(kube, "core_v1_api", lambda: api)
    _champion(store, store.twin)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"source": "unused.csv", "label": "y"},
        "mlflow": {"tracking_uri": store.mlflow.tracking_uri, "model_name": "adult"},
        "audit": {"directory": store.settings.audit.directory},
        "provenance": {"signing_key_file": store.settings.provenance.signing_key_file, "development_keys": False},
        "deploy": {"inference_service": {"name": "adult", "namespace": "models"}},
    }))
    code = models(["--config", str(config), "--json", "rollback", "adult", store.good, "--reason", "green misbehaves",
                   "--by", "ops", "--switch", "blue"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["to_version"] == store.good and current_champion(store.mlflow) == store.good
    selector = {"serving.kserve.io/inferenceservice": "adult-blue", "component": "predictor"}
    assert out["switched"] == selector and api.patches == [("models", "adult", {"spec": {"selector": selector}})]
    assert _last_audit(store).event == Event.ROLLBACK and _last_audit(store).actor == "ops"


# --- shadow -------------------------------------------------------------------------------------------


def test_shadow_with_an_agreeing_candidate_is_promoted(store):
    shadow = Shadow(check=QUICK, min_compared=200)
    result = _deploy(store, store.good, store.twin, strategy="shadow", shadow=shadow)
    assert result.status == "promoted", result
    comparison = result.canary.probe["comparison"]
    assert comparison["compared"] == 300 and comparison["disagreement"] == 0.0 and comparison["max_score_diff"] < 1e-6
    assert result.canary.probe["mirrored"]["requests"] == 300 and result.canary.probe["mirrored"]["errors"] == 0


def test_shadow_reports_a_disagreeing_candidate_and_rolls_back(store):
    result = _deploy(store, store.good, store.bad, strategy="shadow", shadow=Shadow(check=QUICK))
    assert result.status == "rolled_back", result
    comparison = result.canary.probe["comparison"]
    assert comparison["disagreement"] > 0.05 and comparison["max_score_diff"] > 0.2
    assert "disagrees with the champion" in result.canary.reasons[0]
    assert current_champion(store.mlflow) == store.good
    assert _last_audit(store).event == Event.ROLLBACK


def test_shadow_never_returns_the_candidates_answer(store, predictors, tmp_path):
    live, candidate = predictors
    rows = records(store.features.head(200))
    direct_live = [_answer(live.url, [r]).json()["predictions"][0] for r in rows]
    with InferenceLog(InferenceLogConfig(root=str(tmp_path))) as log_:
        routes = Routes(live=live, candidate=candidate, mode="mirror")
        with Router(routes, model_name="adult", log=log_) as router:
            answers = [_answer(router.url, [r], {REQUEST_ID_HEADER: f"r{i}"}) for i, r in enumerate(rows)]
            router.settle()
            since = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
            frame = served_frame(logged_rows(tmp_path, "adult", since.to_pydatetime()), store.task, 0.5)
    assert [a.json()["predictions"][0] for a in answers] == direct_live  # the champion's answers, every one
    assert all(ARM_HEADER not in a.headers for a in answers) and [a.headers[REQUEST_ID_HEADER] for a in answers][:2] == ["r0", "r1"]
    assert router.stats()["candidate"]["requests"] == 200  # ... though the candidate answered each copy
    comparison = compare_shadow(frame, store.task, "1", "3", 0.1)
    assert comparison["compared"] == 200 and comparison["disagreement"] > 0.05  # logged beside the live answer


# --- A/B ----------------------------------------------------------------------------------------------


def test_ab_keys_are_sticky_and_split_close_to_the_target(store, predictors):
    champion, challenger = predictors
    keys = [f"user-{i}" for i in range(20_000)]
    share = np.mean([in_challenger(k, 30, "salt") for k in keys])
    assert abs(share - 0.30) < 0.015
    assert [in_challenger(k, 30, "salt") for k in keys[:100]] == [in_challenger(k, 30, "salt") for k in keys[:100]]
    assert [in_challenger(k, 30, "salt") for k in keys[:200]] != [in_challenger(k, 30, "other") for k in keys[:200]]
    row = records(store.features.head(1))
    routes = Routes(live=champion, candidate=challenger, mode="split", percent=30)
    with Router(routes, model_name="adult") as router:
        sent = [f"user-{i}" for i in range(150)] * 2
        arms = {}
        for key in sent:
            response = _answer(router.url, row, {"x-kfmlops-key": key})
            arms.setdefault(key, set()).add(response.headers[ARM_HEADER])
            expected = "candidate" if in_challenger(key, 30, "") else "champion"
            assert response.headers[ARM_HEADER] == expected
    assert all(len(seen) == 1 for seen in arms.values())  # the same key always reaches the same arm
    assert 0.18 < np.mean([arms[k] == {"candidate"} for k in arms]) < 0.42


def test_the_statistical_tests_on_known_figures():
    champion, challenger = np.array([1.0] * 80 + [0.0] * 20), np.array([1.0] * 90 + [0.0] * 10)
    verdict = ab_test(champion, challenger, test="two-proportion-z", alpha=0.05, min_samples=100)
    assert verdict.statistic == pytest.approx(1.9803, abs=1e-3) and verdict.p_value == pytest.approx(0.0477, abs=1e-3)
    assert verdict.decision == "challenger" and verdict.values == {"champion": 0.8, "challenger": 0.9}
    assert ab_test(champion, challenger, test="two-proportion-z", alpha=0.01, min_samples=100).decision == "inconclusive"
    # the minimum sample comes first: however large the difference, no decision below it
    waiting = ab_test(np.zeros(99), np.ones(500), test="two-proportion-z", alpha=0.05, min_samples=100)
    assert (waiting.decision, waiting.p_value) == ("waiting", None)
    rng = np.random.default_rng(0)
    worse, better = rng.normal(0, 2.0, 500) ** 2, rng.normal(0, 1.0, 400) ** 2
    from scipy import stats

    welch = ab_test(worse, better, test="welch-t", alpha=0.05, min_samples=100)
    assert welch.p_value == pytest.approx(stats.ttest_ind(better, worse, equal_var=False).pvalue)
    assert welch.decision == "challenger" and welch.metric == "mean squared error"
    assert ab_test(better, worse, test="welch-t", alpha=0.05, min_samples=100).decision == "champion"
    regression = Task("regression", "wage", ())
    assert statistical_test(regression, "auto") == "welch-t"
    with pytest.raises(ValueError, match="does not fit a regression task"):
        statistical_test(regression, "two-proportion-z")


AB = dict(challenger_percent=50, min_samples_per_arm=400, batch_rows=200, max_duration_s=300, key_column="fnlwgt")


def _looks_respect_the_minimum(result, minimum: int) -> None:
    looks = result.canary.probe["looks"]
    assert all(min(look.values()) < minimum for look in looks[:-1])  # no decision before the minimum sample
    assert min(looks[-1].values()) >= minimum


def test_ab_a_clearly_better_challenger_is_promoted(store):
    result = _deploy(store, store.bad, store.good, strategy="ab", ab=AbTest(**AB))
    assert result.status == "promoted", result
    verdict = result.canary.probe["verdict"]
    assert verdict["decision"] == "challenger" and verdict["p_value"] < 0.05 and verdict["test"] == "two-proportion-z"
    assert verdict["values"]["challenger"] > verdict["values"]["champion"] + 0.3
    _looks_respect_the_minimum(result, 400)
    assert current_champion(store.mlflow) == store.good
    record = _last_audit(store)
    assert record.event == Event.DEPLOYED and record.details["strategy"] == "ab"


def test_ab_a_worse_challenger_is_rolled_back(store):
    result = _deploy(store, store.good, store.bad, strategy="ab", ab=AbTest(**AB))
    assert result.status == "rolled_back", result
    assert result.canary.probe["verdict"]["decision"] == "champion"
    assert "the champion is better" in result.canary.reasons[0]
    assert current_champion(store.mlflow) == store.good
    assert _last_audit(store).event == Event.ROLLBACK


def test_ab_equal_arms_are_inconclusive_and_the_champion_is_kept(store):
    result = _deploy(store, store.good, store.twin, strategy="ab", ab=AbTest(**AB))
    assert result.status == "rolled_back", result
    verdict = result.canary.probe["verdict"]
    assert verdict["decision"] == "inconclusive" and verdict["p_value"] >= 0.05
    _looks_respect_the_minimum(result, 400)
    assert "inconclusive, the champion is kept" in result.canary.reasons[0]
    assert current_champion(store.mlflow) == store.good
    record = _last_audit(store)
    assert record.event == Event.ROLLBACK and "inconclusive" in record.reason


def test_ab_without_enough_traffic_decides_nothing(store):
    result = _deploy(store, store.good, store.twin, strategy="ab", ab=AbTest(**{**AB, "min_samples_per_arm": 100_000, "max_duration_s": 1}))
    assert result.status == "rolled_back"
    verdict = result.canary.probe["verdict"]
    assert verdict["decision"] == "inconclusive" and verdict["p_value"] is None
    assert "ran out before each arm had 100000 labelled rows" in verdict["reason"]


# --- cluster manifests ---------------------------------------------------------------------------------

SERVICE = InferenceServiceConfig(name="adult", namespace="models", labels={"team": "ml"},
                                 logger=RequestLogger(url="http://kfmlops-sink.kfmlops.svc.cluster.local/"))
MODEL = dict(storage_uri="s3://models/adult/4", registered_model="adult", model_version="4")


def test_blue_green_manifests_validate_and_the_switch_is_one_selector_patch():
    isvc, service = routing_specs.blue_green(SERVICE, colour="green", **MODEL)
    for manifest in (isvc, service):
        validate_crd(manifest)
        validate_crd(yaml.safe_load(to_yaml(manifest)))
    assert isvc["metadata"]["name"] == "adult-green"
    assert isvc["metadata"]["annotations"][routing_specs.DEPLOYMENT_MODE] == "RawDeployment"
    assert service["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "adult-green", "component": "predictor"}
    back = routing_specs.switch_patch(SERVICE, "blue")
    assert back == {"spec": {"selector": {"serving.kserve.io/inferenceservice": "adult-blue", "component": "predictor"}}}
    with pytest.raises(ValueError, match="colour"):
        routing_specs.blue_green(SERVICE, colour="red", **MODEL)


def test_shadow_manifests_mirror_the_live_host_to_the_candidate():
    isvc, virtual = routing_specs.shadow(SERVICE, mirror_percent=50, **MODEL)
    validate_crd(isvc), validate_crd(virtual)
    assert isvc["metadata"]["name"] == "adult-shadow" and isvc["spec"]["predictor"]["logger"]["url"].startswith("http://kfmlops-sink")
    (route,) = virtual["spec"]["http"]
    assert virtual["spec"]["hosts"] == ["adult-predictor.models.svc.cluster.local"]
    assert route["route"] == [{"destination": {"host": "adult-predictor.models.svc.cluster.local", "port": {"number": 80}}, "weight": 100}]
    assert route["mirror"]["host"] == "adult-shadow-predictor.models.svc.cluster.local"
    assert route["mirrorPercentage"] == {"value": 50.0}


def test_ab_manifests_route_by_the_arm_header_then_by_weight():
    isvc, virtual = routing_specs.ab_test(SERVICE, AbTest(challenger_percent=20), **MODEL)
    validate_crd(isvc), validate_crd(virtual)
    sticky_champion, sticky_challenger, split = virtual["spec"]["http"]
    assert sticky_challenger["match"] == [{"headers": {"x-kfmlops-arm": {"exact": "challenger"}}}]
    assert sticky_challenger["route"][0]["destination"]["host"] == "adult-challenger-predictor.models.svc.cluster.local"
    assert [r["weight"] for r in split["route"]] == [80, 20]
    assert split["route"][1]["headers"] == {"response": {"set": {"x-kfmlops-arm": "challenger"}}}


def test_the_schema_check_catches_a_misplaced_mirror_field():
    from schemas import CRDValidationError

    _, virtual = routing_specs.shadow(SERVICE, **MODEL)
    virtual["spec"]["http"][0]["mirrorPercent"] = virtual["spec"]["http"][0].pop("mirrorPercentage")
    with pytest.raises(CRDValidationError, match="mirrorPercent"):
        validate_crd(virtual)


def test_strategies_other_than_canary_are_refused_on_the_kserve_target():
    from pydantic import ValidationError

    assert DeployConfig().strategy == "canary"
    with pytest.raises(ValidationError, match="routing_specs"):
        DeployConfig(strategy="shadow", target="kserve")
    with pytest.raises(ValidationError, match="ab.key_header|key_header"):
        DeployConfig(strategy="ab", ab={"key_header": "Not A Header"})
