"""``kfmlops models`` on a real sqlite MLflow registry with real (tiny pyfunc) versions, tagged and
promoted by kfmlops.register: list, show, compare, and rollback along the champion history, with a
one-line reason for every refusal."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from kfmlops import audit, cli
from kfmlops.config import AuditConfig, MlflowConfig, ProvenanceConfig
from kfmlops.provenance import verify_key
from kfmlops.register import DEPLOY_STATUS_TAG, GateVerdict, Lineage, promote, task_tags
from kfmlops.registry import main
from kfmlops.tasks import Task

PASSED = {"evaluate": GateVerdict(True, []), "fairness": GateVerdict(True, [])}
UNFAIR = {"evaluate": GateVerdict(True, []), "fairness": GateVerdict(False, ["demographic parity difference 0.21 > 0.1"])}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """adult (binary, primary metric roc_auc) v1..v3 promoted in turn (v1 the first champion), v4
    failed fairness (challenger); 'other' has one version with no kfmlops tags and no aliases."""
    import mlflow
    from mlflow.tracking import MlflowClient

    class Half(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return [0.5] * len(model_input)

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("tests", artifact_location=(root / "artifacts").as_uri())
    client = MlflowClient(uri)
    config = MlflowConfig(tracking_uri=uri, model_name="adult")

    def version(model: str) -> str:
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(name="model", python_model=Half(), pip_requirements=[], registered_model_name=model)
        return str(info.registered_model_version)

    for roc, gates, champion in [(0.88, PASSED, True), (0.90, PASSED, True), (0.91, PASSED, True), (0.93, UNFAIR, False)]:
        v = version("adult")
        lineage = Lineage(dataset_fingerprint=f"sha256:data{v}", config_hash=f"cfg{v}", train_data=f"/data/train{v}.parquet",
                          code_commit="abc123", metrics={"roc_auc": roc, "pr_auc": roc - 0.2}, gates=gates,
                          primary_metric="roc_auc")
        tags = lineage.tags() | task_tags(Task("binary", "y", ("<=50K", ">50K")), "gbdt")
        for key, value in tags.items():
            client.set_model_version_tag("adult", v, key, value)
        client.set_registered_model_alias("adult", "challenger", v)
        if champion:
            promote(config, v)
            client.set_model_version_tag("adult", v, DEPLOY_STATUS_TAG, "promoted")
    version("other")
    return root


@pytest.fixture
def registry(built, tmp_path, monkeypatch) -> str:
    """A copy of the built registry for one test (the artifacts stay shared: nothing writes them);
    KFMLOPS_HOME (the audit log, the development keys) in tmp_path."""
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path / "home"))
    shutil.copy(built / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def models(capsys, uri: str, *args: str) -> tuple[int, str, str]:
    code = main(["--tracking-uri", uri, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_models_versions_and_aliases(registry, capsys):
    code, out, _ = models(capsys, registry, "--json", "list")
    assert code == 0
    adult, other = json.loads(out)
    assert adult["name"] == "adult" and adult["aliases"] == {"champion": "3", "challenger": "4"}
    assert [(v["version"], v["aliases"], v["all_gates_passed"], v["deploy_status"]) for v in adult["versions"]] == [
        ("4", ["challenger"], False, None), ("3", ["champion"], True, "promoted"),
        ("2", [], True, "promoted"), ("1", [], True, "promoted"),
    ]
    assert [(v["task"], v["primary_metric"], v["primary_value"]) for v in adult["versions"]] == [
        ("binary", "roc_auc", 0.93), ("binary", "roc_auc", 0.91), ("binary", "roc_auc", 0.9), ("binary", "roc_auc", 0.88)]
    assert other == {"name": "other", "aliases": {}, "versions": [{**other["versions"][0], "version": "1", "aliases": [],
                                                                    "task": None, "primary_metric": None,
                                                                    "primary_value": None, "all_gates_passed": None,
                                                                    "deploy_status": None}]}
    code, out, _ = models(capsys, registry, "list")
    lines = out.splitlines()
    assert lines[0] == "adult: challenger v4, champion v3" and lines[-3] == "other: no aliases"
    assert lines[1].split()[:5] == ["version", "aliases", "task", "primary", "metric"]
    assert lines[2].split()[:6] == ["4", "challenger", "binary", "roc_auc", "0.93", "failed"]
    assert lines[3].split()[:7] == ["3", "champion", "binary", "roc_auc", "0.91", "passed", "promoted"]
    assert lines[-1].split()[:5] == ["1", "-", "-", "-", "unknown"]


def test_show_defaults_to_the_champion(registry, capsys):
    code, out, _ = models(capsys, registry, "--json", "show", "adult")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == "3" and shown["aliases"] == ["champion"]
    assert shown["metrics"] == {"pr_auc": pytest.approx(0.71), "roc_auc": 0.91}
    assert shown["gates"] == {"evaluate": {"passed": True, "reasons": []}, "fairness": {"passed": True, "reasons": []}}
    assert shown["all_gates_passed"] is True and shown["deploy_status"] == "promoted" and shown["previous_champion"] == "2"
    assert shown["lineage"]["dataset_fingerprint"] == "sha256:data3" and shown["lineage"]["code_commit"] == "abc123"
    assert (shown["task"], shown["label"], shown["classes"], shown["trainer"], shown["primary_metric"]) == (
        "binary", "y", ["<=50K", ">50K"], "gbdt", "roc_auc")
    assert not {"task", "classes", "primary_metric"} & set(shown["lineage"])
    code, out, _ = models(capsys, registry, "show", "adult", "4")
    assert code == 0 and out.startswith("adult version 4 (challenger), created ")
    assert "  fairness: failed (demographic parity difference 0.21 > 0.1)\n" in out and "gates: failed\n" in out
    assert "deploy: not deployed\n" in out and "previous champion: none\n" in out and "  config_hash: cfg4\n" in out
    assert "task: binary (label y, classes <=50K, >50K), trainer gbdt\n" in out and "primary metric: roc_auc 0.93\n" in out
    code, out, _ = models(capsys, registry, "show", "other", "1")
    assert code == 0 and "task: not recorded\n" in out and "primary metric: -\n" in out


def test_compare_puts_metrics_side_by_side_with_deltas(registry, capsys):
    code, out, _ = models(capsys, registry, "--json", "compare", "adult", "2", "4")
    compared = json.loads(out)
    assert code == 0 and compared["versions"] == ["2", "4"] and compared["all_gates_passed"] == [True, False]
    assert compared["tasks"] == ["binary", "binary"] and compared["primary_metric"] == ["roc_auc", "roc_auc"]
    roc = next(r for r in compared["metrics"] if r["metric"] == "roc_auc")
    assert roc["2"] == 0.9 and roc["4"] == 0.93 and roc["delta"] == pytest.approx(0.03)
    code, out, _ = models(capsys, registry, "compare", "adult", "2", "4")
    assert out.splitlines()[0] == ("adult: version 2 vs 4 (binary (label y, classes <=50K, >50K) / binary (label y, "
                                   "classes <=50K, >50K); gates passed / failed)")
    assert out.splitlines()[2].split() == ["roc_auc", "*", "0.9000", "0.9300", "+0.0300"]  # the primary metric first
    assert out.splitlines()[3].split()[0] == "pr_auc"


def _tags(uri: str, version: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_model_version("adult", version).tags


def _champion(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    return str(MlflowClient(uri).get_registered_model("adult").aliases["champion"])


def test_rollback_walks_the_champion_history_and_records_it_on_both_versions(registry, capsys):
    code, out, _ = models(capsys, registry, "rollback", "adult", "--reason", "p99 latency regression", "--by", "alice")
    assert code == 0 and _champion(registry) == "2"
    assert out.startswith("adult: champion moved from version 3 to 2 by alice at ") and "(reason: p99 latency regression)" in out
    for v in ("2", "3"):
        tags = _tags(registry, v)
        assert {k: tags[f"kfmlops.rollback.{k}"] for k in ("from", "to", "by", "reason", "forced")} == {
            "from": "3", "to": "2", "by": "alice", "reason": "p99 latency regression", "forced": "false"}
        assert datetime.fromisoformat(tags["kfmlops.rollback.at"]).utcoffset().total_seconds() == 0
    assert _tags(registry, "2")["kfmlops.previous_champion"] == "1"  # its place in the history is kept

    code, out, _ = models(capsys, registry, "--json", "rollback", "adult", "--reason", "still bad", "--by", "bob")
    assert code == 0 and _champion(registry) == "1"
    assert {k: v for k, v in json.loads(out).items() if k != "at"} == {
        "name": "adult", "from_version": "2", "to_version": "1", "by": "bob", "reason": "still bad", "forced": False,
        "previous_champion": None}

    code, _, err = models(capsys, registry, "rollback", "adult", "--reason", "x")
    assert code == 1 and _champion(registry) == "1"
    assert err == ("kfmlops models: champion version 1 of 'adult' records no previous champion (kfmlops.previous_champion "
                   "is none or unset: it was the first): name the VERSION to roll back to\n")

    code, _, _ = models(capsys, registry, "rollback", "adult", "3", "--reason", "fixed upstream", "--by", "alice")
    assert code == 0 and _champion(registry) == "3" and _tags(registry, "3")["kfmlops.previous_champion"] == "2"
    assert _tags(registry, "1")["kfmlops.rollback.from"] == "1" and _tags(registry, "1")["kfmlops.rollback.to"] == "3"

    log = audit.log_path(AuditConfig(), "adult")  # every move is in the signed audit log, in order
    assert [(r.event, r.version, r.actor, r.reason, r.details["from"]) for r in audit.read_log(log)] == [
        ("rollback", "2", "alice", "p99 latency regression", "3"), ("rollback", "1", "bob", "still bad", "2"),
        ("rollback", "3", "alice", "fixed upstream", "1")]
    assert audit.verify(log, verify_key(ProvenanceConfig())).ok


def test_rollback_refuses_a_version_whose_gates_failed_unless_forced(registry, capsys):
    code, _, err = models(capsys, registry, "rollback", "adult", "4", "--reason", "try it")
    assert code == 1 and _champion(registry) == "3" and "kfmlops.rollback.to" not in _tags(registry, "4")
    assert err == ("kfmlops models: version 4 of 'adult' did not pass its gates (fairness: demographic parity difference "
                   "0.21 > 0.1): pass --force to make it champion anyway\n")
    code, out, _ = models(capsys, registry, "rollback", "adult", "4", "--reason", "audit override", "--by", "carol", "--force")
    assert code == 0 and _champion(registry) == "4" and "forced past failed gates" in out
    tags = _tags(registry, "4")
    assert tags["kfmlops.previous_champion"] == "3" and tags["kfmlops.rollback.forced"] == "true"  # never champion: gets the current one
    assert _tags(registry, "3")["kfmlops.rollback.by"] == "carol"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["show", "adlt"], "no registered model 'adlt' (models: adult, other)"),
        (["show", "adult", "9"], "model 'adult' has no version '9' (versions: 1, 2, 3, 4)"),
        (["compare", "adult", "2", "v3"], "model 'adult' has no version 'v3' (versions: 1, 2, 3, 4)"),
        (["show", "other"], "model 'other' has no 'champion' alias: name a VERSION (`kfmlops models list` shows them)"),
        (["rollback", "other", "--reason", "x"], "model 'other' has no 'champion' alias, so no previous one: name the VERSION"),
        (["rollback", "adult", "3", "--reason", "x"], "version 3 is already the champion of 'adult'"),
        (["rollback", "adult", "7", "--reason", "x"], "model 'adult' has no version '7' (versions: 1, 2, 3, 4)"),
        (["rollback", "nope", "--reason", "x"], "no registered model 'nope' (models: adult, other)"),
    ],
)
def test_errors_exit_1_with_one_line(registry, capsys, args, reason):
    code, out, err = models(capsys, registry, *args)
    assert code == 1 and out == "" and err.startswith(f"kfmlops models: {reason}") and err.count("\n") == 1
    assert _champion(registry) == "3"


def test_the_registry_comes_from_config_env_or_home(registry, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(tmp_path / "mlflow.db", home / "mlflow.db")
    monkeypatch.setenv("KFMLOPS_HOME", str(home))
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["--tracking-uri", empty, "list"]) == 1 and not (tmp_path / "empty.db").exists()
    assert capsys.readouterr().err == (f"kfmlops models: no MLflow store at {empty}: pass --tracking-uri or --config "
                                       "(its mlflow.tracking_uri), or set MLFLOW_TRACKING_URI\n")
    from mlflow.tracking import MlflowClient

    MlflowClient(empty).search_registered_models()  # an empty store

    def names(*args: str) -> list[str]:
        assert main([*args, "--json", "list"]) == 0
        return [m["name"] for m in json.loads(capsys.readouterr().out)]

    assert names() == ["adult", "other"]  # $KFMLOPS_HOME/mlflow.db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty)
    assert names() == []
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"data: {{source: x.csv, label: y}}\nmlflow: {{tracking_uri: '{registry}'}}\n")
    assert names("--config", str(config)) == ["adult", "other"]
    assert names("--config", str(config), "--tracking-uri", empty) == []
    assert main(["--tracking-uri", empty, "list"]) == 0 and capsys.readouterr().out == f"no registered models in {empty}\n"


def test_the_command_is_wired(registry, capsys):
    assert cli.main(["models", "--tracking-uri", registry, "--json", "show", "adult", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["previous_champion"] is None
