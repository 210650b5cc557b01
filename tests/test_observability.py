"""Dashboards and alerts, tested for real.

- The committed PrometheusRule and dashboards are what :mod:`kfmlops.monitoring.alerts` and
  :mod:`kfmlops.monitoring.dashboards` generate.
- Every metric a dashboard panel or a rule reads is one the code registers (the predictor's
  metrics, a real sink's registry, the drift exporter's registries for a full summary, with each
  type's sample suffixes) or a series the rules record: no panel on a metric nobody emits.
- ``promtool check rules`` on the rules (production and test windows) and on every dashboard
  query; ``promtool test rules`` runs ``tests/rules/*.test.yaml`` (each alert fires when it should
  and stays quiet when it should not).
- A real Prometheus on loopback (1 s scrapes and evaluations, the rules rendered from the same
  source with every window scaled by 1/60) scrapes a real predictor and a real sink while bad
  and slow requests arrive, and its ``/api/v1/alerts`` reports the client-error and latency
  burn-rate alerts firing (here 14-20 s after the traffic started; marked slow, ``make test`` runs it).

promtool and prometheus come from Debian's ``prometheus`` package (``make system-deps``); a test
that needs one skips without it.
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from serving_fixtures import served_store  # noqa: F401  (fixture)
from test_sink import _event, running_sink

import kfmlops.serving.metrics  # noqa: F401  (registers the predictor's metrics)
from kfmlops.monitoring import alerts, dashboards
from kfmlops.monitoring.config import InferenceLogConfig, PolicyConfig, SinkConfig
from kfmlops.monitoring.policy import FAILED, SUBMITTED, LedgerEntry
from kfmlops.monitoring.prometheus import registry_for
from kfmlops.monitoring.sink import REQUEST, Sink
from kfmlops.monitoring.sink_metrics import SinkMetrics
from kfmlops.monitoring.store import InferenceLog
from kfmlops.serving.process import LOOPBACK, PredictorProcess, free_port
from kfmlops.serving.predictor import records

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "manifests" / "base" / "monitoring"
RULE_TESTS = Path(__file__).resolve().parent / "rules"
FAST = alerts.PRODUCTION.scaled(1 / 60)  # 5m -> 5s, 1h -> 1m, for: 2m -> 2s
# An 8,000-row request takes about 0.2 s on an idle 2-core machine: under the production 0.5 s, so the
# real-Prometheus test holds the predictor to 0.1 s (a bucket of the histogram) to make its slow requests miss.
TEST_OBJECTIVES = alerts.Objectives(latency_s=0.1)
ALERT_TIMEOUT_S = 90.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (Debian's prometheus package; `make system-deps` installs it)")
    return path


# --------------------------------------------------------------------------- generated files


def test_committed_rule_and_dashboards_are_generated():
    assert (MONITORING / "prometheusrule.yaml").read_text() == alerts.prometheus_rule(), (
        "stale: python -m kfmlops.monitoring.alerts manifests/base/monitoring/prometheusrule.yaml")
    for uid in dashboards.DASHBOARDS:
        assert (MONITORING / "dashboards" / f"{uid}.json").read_text() == dashboards.render(uid), (
            "stale: python -m kfmlops.monitoring.dashboards manifests/base/monitoring/dashboards")


def test_scaled_windows_keep_their_proportions():
    assert (FAST.page_short, FAST.page_long, FAST.page_for, FAST.errors) == (5, 60, 2, 5)
    assert alerts.duration(21600) == "6h" and alerts.duration(90) == "90s" and alerts.duration(1800) == "30m"
    with pytest.raises(ValueError, match="not a bucket"):
        alerts.Objectives(latency_s=0.3)


# --------------------------------------------------------------------------- metric names


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names (inside ``{}``, ``by (...)``, ``on (...)``...), strings or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match.group(0) not in _KEYWORDS and not expr[match.end():].lstrip().startswith("("):
            names.add(match.group(0))
    return names


def test_metric_names_are_extracted():
    expr = ('sum by (model, kind) (rate(a_total{kind="server", x=~"$model"}[5m])) / on (model) group_left () '
            'sum(rate(b_total[$__rate_interval])) > 14.4 * 1e-2 and time() - c_seconds > 3600 or d:rec:ratio_rate5m')
    assert metric_names(expr) == {"a_total", "b_total", "c_seconds", "d:rec:ratio_rate5m"}


def _sample_names(registry) -> set[str]:
    """The series names a registry exposes, from each family's type (labelled families with no
    children yet included): counters ``_total``, histograms ``_bucket``/``_sum``/``_count``."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "summary": ("", "_sum", "_count"), "info": ("_info",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def _drift_summary(task: str, performance: dict[str, float]) -> dict:
    """A drift summary with every section the exporter reads (the shape kfmlops.monitoring.drift writes)."""
    column = {"column": "age", "method": "wasserstein", "score": 0.2, "threshold": 0.1, "drifted": True}
    return {
        "model": "m", "status": "checked", "run_at": 1.7e9, "rows": 5000, "labelled_rows": 400,
        "task": {"kind": task}, "drift": {"share": 0.5, "dataset_drift": True, "columns": [column]},
        "prediction_drift": {"columns": [{**column, "column": "prediction"}]},
        "performance": {"task": task, "rows": 400, **performance}, "retrain": {"submitted": True},
    }


def exported_names(tmp_path) -> set[str]:
    """Every series name the predictor, the sink and the drift exporter register."""
    names = {n for n in _sample_names(REGISTRY) if n.startswith("kfmlops_")}
    config = SinkConfig(log=InferenceLogConfig(root=str(tmp_path / "log")))
    sink = Sink(InferenceLog(config.log), config)
    names |= _sample_names(SinkMetrics(lambda: sink).registry)
    policy = PolicyConfig(signals=["performance"], min_performance={"roc_auc": 0.8, "rmse": 4.0})
    retrains = [LedgerEntry("w1", "m", 1.0, SUBMITTED, [], {}), LedgerEntry("w2", "m", 2.0, FAILED, [], {})]
    for task, performance in (("binary", {"roc_auc": 0.7}), ("regression", {"rmse": 5.0})):
        names |= _sample_names(registry_for(_drift_summary(task, performance), "m", policy, retrains))
    return names


def _queries() -> dict[str, str]:
    """Every PromQL expression of the rules and the dashboards, by where it is."""
    found = {f"rule {r.get('alert') or r['record']}": r["expr"] for g in alerts.rule_groups() for r in g["rules"]}
    for uid in dashboards.DASHBOARDS:
        for panel in dashboards.dashboard(uid)["panels"]:
            for target in panel["targets"]:
                found[f"{uid} / {panel['title']} / {target['refId']}"] = target["expr"]
        variable = dashboards.dashboard(uid)["templating"]["list"][1]["query"]["query"]
        found[f"{uid} / $model"] = re.fullmatch(r"label_values\((\w+), model\)", variable)[1]
    return found


def test_every_queried_metric_is_exported(tmp_path):
    exported = exported_names(tmp_path)
    recorded = {r["record"] for g in alerts.rule_groups() for r in g["rules"] if "record" in r}
    assert {"kfmlops_request_duration_seconds_bucket", "kfmlops_sink_requests_total", "kfmlops_drift_feature_score",
            "kfmlops_retrain_latest_claimed_timestamp_seconds", "kfmlops_drift_performance_maximum"} <= exported
    unknown = {where: sorted(metric_names(expr) - exported - recorded) for where, expr in _queries().items()}
    assert not {k: v for k, v in unknown.items() if v}, "queries on metrics nobody emits"
    read = set().union(*map(metric_names, _queries().values()))
    assert read - recorded, "no metric found in the queries: the extraction is broken"


# --------------------------------------------------------------------------- promtool


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_checks_the_rules_and_every_dashboard_query(tmp_path):
    (tmp_path / "production.yaml").write_text(alerts.rule_file())
    (tmp_path / "fast.yaml").write_text(alerts.rule_file(FAST))
    # Dashboard queries as recording rules: promtool parses each one (Grafana's variables substituted).
    grafana = {"$__rate_interval": "5m", "$model": ".*"}
    rules = [{"record": f"dashboard:query_{i}", "expr": re.sub(r"\$__rate_interval|\$model", lambda m: grafana[m[0]], e)}
             for i, e in enumerate(_queries().values())]
    (tmp_path / "dashboards.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = _promtool("check", "rules", "production.yaml", "fast.yaml", "dashboards.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == 3


def test_promtool_unit_tests_of_every_alert(tmp_path):
    (tmp_path / "kfmlops-rules.yaml").write_text(alerts.rule_file())
    tests = sorted(RULE_TESTS.glob("*.test.yaml"))
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
    tested = {t["alertname"] for f in tests for case in yaml.safe_load(f.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert tested == {r["alert"] for g in alerts.rule_groups() for r in g["rules"] if "alert" in r}, "an alert never fires in a test"
    out = _promtool("test", "rules", *(t.name for t in tests), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(tests)


# --------------------------------------------------------------------------- a real Prometheus


class Prometheus:
    """``prometheus`` on 127.0.0.1 scraping ``targets`` (job -> host:port) every second, with ``rules``."""

    def __init__(self, binary: str, directory: Path, targets: dict[str, str], rules: str):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        (directory / "rules.yaml").write_text(rules)
        (directory / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }))
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}"], stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def firing(self) -> set[str]:
        data = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return {a["labels"]["alertname"] for a in data if a["state"] == "firing"}

    def query(self, expr: str) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()["data"]["result"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _traffic(predictor_url: str, sink_url: str, rows: list[dict], stop: threading.Event) -> dict[str, int]:
    """Until ``stop`` is set: per round, one good request, two bad ones (a missing column: 400),
    eight concurrent large ones (slow: past the test's 0.1 s objective) and two sink events."""
    predict = f"{predictor_url}/v1/models/adult:predict"
    bad = [{k: v for k, v in row.items() if k != "age"} for row in rows[:5]]
    counts = {"good": 0, "bad": 0, "slow": 0, "slow_seconds_max": 0}
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        round_ = 0
        while not stop.is_set():
            assert client.post(predict, json={"instances": rows[:5]}).status_code == 200
            counts["good"] += 1
            for _ in range(2):
                assert client.post(predict, json={"instances": bad}).status_code == 400
                counts["bad"] += 1
            started = time.monotonic()
            answers = list(pool.map(lambda _: httpx.post(predict, json={"instances": rows}, timeout=60), range(8)))
            assert all(a.status_code == 200 for a in answers)
            counts["slow"] += 8
            counts["slow_seconds_max"] = max(counts["slow_seconds_max"], round(time.monotonic() - started, 2))
            assert client.post(f"{sink_url}/", **_event(REQUEST, f"r{round_}", {"instances": rows[:1]})).status_code == 200
            assert client.post(f"{sink_url}/", content=b"{}").status_code == 400
            round_ += 1
    return counts


@pytest.mark.slow  # about 45 s: the predictor's start and ~20 s of traffic (plus the shared model's training)
def test_a_real_prometheus_fires_the_error_and_latency_alerts(served_store, tmp_path):
    binary = _binary("prometheus")
    rows = records(served_store.features.head(8000))
    with PredictorProcess("models:/adult@champion", model_name="adult", tracking_uri=served_store.mlflow.tracking_uri,
                          verify_key=served_store.verify_key) as predictor, \
            running_sink(SinkConfig(log=InferenceLogConfig(root=str(tmp_path / "log")))) as sink_url:
        prometheus = Prometheus(binary, tmp_path, {"predictor": f"{LOOPBACK}:{predictor.port}",
                                                   "sink": sink_url.removeprefix("http://")},
                                alerts.rule_file(FAST, TEST_OBJECTIVES))
        try:
            prometheus.wait_ready()
            wanted = {"KfmlopsPredictorClientErrors", "KfmlopsLatencyBudgetBurnFast"}
            stop = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(1) as driver:
                traffic = driver.submit(_traffic, predictor.url, sink_url, rows, stop)
                started = time.monotonic()
                firing: set[str] = set()
                while not wanted <= firing and time.monotonic() - started < ALERT_TIMEOUT_S and not traffic.done():
                    time.sleep(1)
                    firing = prometheus.firing()
                seconds = time.monotonic() - started
                stop.set()
                counts = traffic.result()
            assert wanted <= firing, f"after {seconds:.0f} s firing {sorted(firing)}; traffic {counts}"
            assert "KfmlopsPredictorServerErrors" not in firing and "KfmlopsSinkFailing" not in firing
            up = {r["metric"]["job"]: r["value"][1] for r in prometheus.query("up")}
            assert up == {"predictor": "1", "sink": "1"}
            sink_codes = {r["metric"]["code"] for r in prometheus.query("kfmlops_sink_requests_total")}
            assert sink_codes == {"200", "400"}
            print(f"\nalerts {sorted(wanted)} firing {seconds:.1f} s after the traffic started; traffic {counts}")
        finally:
            prometheus.stop()
