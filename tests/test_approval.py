"""The approval gate on a real sqlite MLflow registry with real (tiny pyfunc) versions: a request
holds promotion; approval by someone else moves champion and is audited; self-approval, expired,
stale (champion moved) and already-decided requests are refused and change nothing."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from kfmlops import approval, audit
from kfmlops.config import AuditConfig, GovernanceConfig, MlflowConfig, Settings
from kfmlops.provenance import verify_key
from kfmlops.register import CHAMPION, aliases, promote

STARTER = "alice"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """Model 'adult' with v1 champion and v2 a candidate whose run alice started."""
    import mlflow

    class Half(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return [0.5] * len(model_input)

    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("tests", artifact_location=(tmp_path / "artifacts").as_uri())
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment, tags={approval.STARTED_BY_TAG: STARTER}):
            mlflow.pyfunc.log_model(name="model", python_model=Half(), pip_requirements=[], registered_model_name="adult")
    cfg = Settings(mlflow=MlflowConfig(tracking_uri=uri, model_name="adult"),
                   audit=AuditConfig(directory=str(tmp_path / "audit")),
                   governance=GovernanceConfig(require_approval=True, approval_ttl_hours=24))
    promote(cfg.mlflow, "1")
    return cfg


def ask(settings: Settings) -> approval.Request:
    return approval.request(settings.mlflow, settings.governance, "2", "1", now=T0)


def test_request_records_who_when_and_until_when_and_moves_nothing(settings):
    asked = ask(settings)
    assert (asked.status, asked.started_by, asked.champion_at_request) == ("pending", STARTER, "1")
    assert asked.expires_at == "2026-12-02T09:00:00+00:00"
    assert approval.current(settings.mlflow, "2") == asked
    assert approval.current(settings.mlflow, "1") is None
    assert aliases(settings.mlflow)[CHAMPION] == "1"


def test_approval_by_someone_else_moves_champion_and_is_audited(settings):
    ask(settings)
    decision = approval.approve(settings, "2", "bob", "reviewed the card", now=T0 + timedelta(hours=23))
    assert decision.previous_champion == "1"
    assert (decision.request.status, decision.request.decided_by) == ("approved", "bob")
    assert aliases(settings.mlflow)[CHAMPION] == "2"
    assert approval.current(settings.mlflow, "2").status == "approved"
    log = audit.log_path(settings.audit, "adult")
    records = audit.read_log(log)
    assert [(r.event, r.actor, r.version) for r in records] == [("approved", "bob", "2"), ("alias_moved", "bob", "2")]
    assert records[0].details["started_by"] == STARTER and records[1].details["from"] == "1"
    assert audit.verify(log, verify_key(settings.provenance)).ok


@pytest.mark.parametrize("who, at, expected", [
    (STARTER, T0 + timedelta(hours=1), "alice started the run"),
    ("bob", T0 + timedelta(hours=24), "expired at 2026-12-02T09:00:00+00:00"),
])
def test_self_approval_and_expired_requests_are_refused_and_change_nothing(settings, who, at, expected):
    ask(settings)
    with pytest.raises(approval.ApprovalError, match=re.escape(expected)):
        approval.approve(settings, "2", who, "lgtm", now=at)
    assert aliases(settings.mlflow)[CHAMPION] == "1"
    assert approval.current(settings.mlflow, "2").status == "pending"
    assert not audit.log_path(settings.audit, "adult").exists()


def test_four_eyes_off_lets_the_starter_approve(settings):
    ask(settings)
    relaxed = settings.model_copy(update={"governance": GovernanceConfig(require_approval=True, four_eyes=False)})
    approval.approve(relaxed, "2", STARTER, "solo team", now=T0)
    assert aliases(settings.mlflow)[CHAMPION] == "2"


def test_a_request_judged_against_another_champion_is_stale(settings):
    ask(settings)
    promote(settings.mlflow, "2")
    promote(settings.mlflow, "1")  # same champion again: not stale
    approval.approve(settings, "2", "bob", "ok", now=T0)
    assert aliases(settings.mlflow)[CHAMPION] == "2"

    approval.request(settings.mlflow, settings.governance, "1", "2", now=T0)
    promote(settings.mlflow, "1")
    with pytest.raises(approval.ApprovalError, match="champion moved from 2 to 1"):
        approval.approve(settings, "1", "bob", "ok", now=T0)


def test_rejected_stays_challenger_and_cannot_be_approved_then(settings):
    ask(settings)
    approval.reject(settings, "2", "carol", "fairness by age looks off", now=T0)
    assert approval.current(settings.mlflow, "2").status == "rejected"
    with pytest.raises(approval.ApprovalError, match="already rejected by carol"):
        approval.approve(settings, "2", "bob", "ok", now=T0)
    with pytest.raises(approval.ApprovalError, match="already rejected"):
        approval.reject(settings, "2", "bob", "again")
    assert aliases(settings.mlflow)[CHAMPION] == "1"
    events = [r.event for r in audit.read_log(audit.log_path(settings.audit, "adult"))]
    assert events == ["rejected"]


def test_a_version_never_asked_for_cannot_be_approved(settings):
    with pytest.raises(approval.ApprovalError, match="no approval was requested"):
        approval.approve(settings, "2", "bob", "ok")


def test_cli_approves_with_a_reason_and_refuses_with_one_line(settings, tmp_path, capsys):
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "x.csv", "label": "y"},
                                      "settings": settings.model_dump(mode="json", exclude_defaults=True)}))
    approval.request(settings.mlflow, settings.governance, "2", "1")
    base = ["adult", "2", "--config", str(config), "--reason", "reviewed"]
    assert approval.approve_main([*base, "--by", STARTER, "--no-deploy"]) == 1
    assert "four-eyes" in capsys.readouterr().err
    assert approval.approve_main([*base, "--by", "bob", "--no-deploy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["request"]["status"] == "approved" and out["previous_champion"] == "1"
    assert "deploy" not in out
    assert approval.reject_main([*base, "--by", "bob"]) == 1
    assert "already approved by bob" in capsys.readouterr().err
