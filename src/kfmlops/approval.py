"""Human approval before promotion: a candidate that passed every automatic gate waits as
``challenger`` until a person approves (it becomes ``champion`` and is deployed) or rejects it.

With ``governance.require_approval`` on, the pipeline's promote step calls :func:`request` instead of
moving ``champion``: the version is tagged ``kfmlops.approval.status=pending`` with when it asked,
when the request expires (``approval_ttl_hours``), who started the run (``kfmlops.started_by`` on
the run, from :func:`kfmlops.audit.actor` where the run was started) and which version was champion
when the candidate was judged; an ``approval_requested`` record goes to the audit log, and the
pipeline run ends there.

Why the run ends instead of waiting: a step that waits holds a pod (and, on KFP, a run that looks
stuck) for as long as the approver takes, days at worst, and a pod that is evicted meanwhile loses
the wait. Ending the run keeps the state where it already lives, on the registry version, so the
decision is resumable from anywhere with access to the registry: ``kfmlops approve NAME VERSION
--reason TEXT`` (:func:`approve`) re-checks the request, moves ``champion``, appends ``approved`` and
``alias_moved`` records, and then deploys the version with the same code the pipeline's deploy step
runs (:func:`deploy_approved`; ``--no-deploy`` leaves that to the next rollout). ``kfmlops reject``
(:func:`reject`) closes the request.

Approval is refused (:class:`ApprovalError`, nothing changes) when the version has no pending
request, when the request expired, when the approver started the run and ``four_eyes`` is on, and
when ``champion`` moved since the candidate was judged against it (the comparison it passed is
stale: rerun the pipeline).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from kfmlops import model_card
from kfmlops.config import GovernanceConfig, MlflowConfig, Settings

TAG = "kfmlops.approval."
STATUS_TAG = TAG + "status"
STARTED_BY_TAG = "kfmlops.started_by"
"""On the pipeline's MLflow run: who started it (the four-eyes rule refuses them as approver)."""
TEST_DATA_TAG = "kfmlops.test_data"
"""On the version: the test split's URI, which deploy probes the predictor with after approval."""
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


class ApprovalError(RuntimeError):
    """An approval or rejection is refused; the message says why and what to do."""


@dataclass(frozen=True)
class Request:
    """A version's approval state, as its registry tags record it."""

    model: str
    version: str
    status: str
    started_by: str
    requested_at: str
    expires_at: str
    champion_at_request: str | None
    decided_by: str | None = None
    decided_at: str | None = None
    reason: str | None = None

    def expired(self, now: datetime) -> bool:
        return now >= datetime.fromisoformat(self.expires_at)

    def tags(self) -> dict[str, str]:
        fields = {k: v for k, v in asdict(self).items() if k not in ("model", "version") and v is not None}
        return {TAG + k: str(v) for k, v in fields.items()}


def started_by(run_tags: dict[str, str]) -> str:
    """Who started a run: its ``kfmlops.started_by`` tag, else the actor of this process."""
    from kfmlops.audit import actor

    return run_tags.get(STARTED_BY_TAG) or actor()


def request(mlflow_config: MlflowConfig, governance: GovernanceConfig, version: str,
            champion: str | None, now: datetime | None = None) -> Request:
    """Tag ``version`` as waiting for approval (see the module docstring); ``champion``: the version it
    was judged against. Produces the pending :class:`Request`."""
    from kfmlops.tracking import client

    registry = client(mlflow_config)
    name = mlflow_config.model_name
    run = registry.get_run(registry.get_model_version(name, version).run_id)
    at = now or datetime.now(timezone.utc)
    pending = Request(name, str(version), PENDING, started_by(run.data.tags), at.isoformat(timespec="seconds"),
                      (at + timedelta(hours=governance.approval_ttl_hours)).isoformat(timespec="seconds"),
                      champion)
    for key, value in pending.tags().items():
        registry.set_model_version_tag(name, version, key, value)
    return pending


def current(mlflow_config: MlflowConfig, version: str) -> Request | None:
    """``version``'s approval state, or None when no approval was ever asked for it."""
    from kfmlops.tracking import client

    tags = client(mlflow_config).get_model_version(mlflow_config.model_name, version).tags or {}
    if STATUS_TAG not in tags:
        return None
    fields = {k[len(TAG):]: v for k, v in tags.items() if k.startswith(TAG)}
    return Request(model=mlflow_config.model_name, version=str(version), **{
        k: fields.get(k) for k in ("status", "started_by", "requested_at", "expires_at", "champion_at_request",
                                   "decided_by", "decided_at", "reason")})


def refusals(pending: Request | None, approver: str, governance: GovernanceConfig, champion: str | None,
             now: datetime) -> list[str]:
    """Why ``approver`` may not approve ``pending`` now; empty when they may."""
    if pending is None:
        return ["no approval was requested for this version (it did not pass every gate with "
                "governance.require_approval on)"]
    if pending.status != PENDING:
        return [f"the request was already {pending.status} by {pending.decided_by} at {pending.decided_at}"]
    problems = []
    if pending.expired(now):
        problems.append(f"the request expired at {pending.expires_at}: rerun the pipeline for a fresh judgement")
    if governance.four_eyes and approver == pending.started_by:
        problems.append(f"{approver} started the run that produced this version; four-eyes: someone else must approve")
    if champion != pending.champion_at_request:
        problems.append(f"champion moved from {pending.champion_at_request or 'none'} to {champion or 'none'} since the "
                        "candidate was judged against it: rerun the pipeline")
    return problems


@dataclass(frozen=True)
class Decision:
    """A recorded approval or rejection; ``previous_champion`` only for an approval."""

    request: Request
    previous_champion: str | None = None


def approve(settings: Settings, version: str, approver: str, reason: str, now: datetime | None = None) -> Decision:
    """Approve ``version``: check :func:`refusals`, move ``champion``, record the decision on the
    version and in the audit log. Raises :class:`ApprovalError` (and changes nothing) when refused."""
    from kfmlops.audit import Entry, Event, log_event
    from kfmlops.register import current_champion, promote

    at = now or datetime.now(timezone.utc)
    pending = current(settings.mlflow, version)
    champion = current_champion(settings.mlflow)
    problems = refusals(pending, approver, settings.governance, champion, at)
    if problems:
        raise ApprovalError(f"cannot approve {settings.mlflow.model_name} v{version}: " + "; ".join(problems))
    decided = _decide(settings.mlflow, pending, APPROVED, approver, reason, at)
    previous = promote(settings.mlflow, version).previous_champion
    name = settings.mlflow.model_name
    log_event(settings, Entry(
        event=Event.APPROVED, model=name, version=str(version), actor=approver, reason=reason,
        details={"started_by": pending.started_by, "requested_at": pending.requested_at}))
    log_event(settings, Entry(
        event=Event.ALIAS_MOVED, model=name, version=str(version), actor=approver, reason=f"approved: {reason}",
        details={"alias": "champion", "from": previous or "none"}))
    model_card.refresh(settings, version)
    return Decision(decided, previous)


def reject(settings: Settings, version: str, actor: str, reason: str, now: datetime | None = None) -> Decision:
    """Reject ``version``'s pending request: it stays ``challenger`` and can no longer be approved."""
    from kfmlops.audit import Entry, Event, log_event

    pending = current(settings.mlflow, version)
    if pending is None or pending.status != PENDING:
        raise ApprovalError(f"cannot reject {settings.mlflow.model_name} v{version}: "
                            + refusals(pending, actor, settings.governance, None, datetime.now(timezone.utc))[0])
    decided = _decide(settings.mlflow, pending, REJECTED, actor, reason, now or datetime.now(timezone.utc))
    log_event(settings, Entry(
        event=Event.REJECTED, model=settings.mlflow.model_name, version=str(version), actor=actor, reason=reason,
        details={"started_by": pending.started_by, "requested_at": pending.requested_at}))
    model_card.refresh(settings, version)
    return Decision(decided)


def _decide(mlflow_config: MlflowConfig, pending: Request, status: str, who: str, reason: str, at: datetime) -> Request:
    from dataclasses import replace

    from kfmlops.register import TAG_LIMIT
    from kfmlops.tracking import client

    decided = replace(pending, status=status, decided_by=who, decided_at=at.isoformat(timespec="seconds"),
                      reason=reason[:TAG_LIMIT])
    registry = client(mlflow_config)
    for key, value in decided.tags().items():
        registry.set_model_version_tag(mlflow_config.model_name, pending.version, key, value)
    return decided


def deploy_approved(settings: Settings, version: str, actor: str):
    """Deploy an approved ``version`` as the pipeline's deploy step would have (validate, canary,
    promote or roll back), probing with the test split its run recorded; logs the outcome to the
    audit log. Produces the :class:`~kfmlops.serving.deploy.DeployResult`."""
    import mlflow

    from kfmlops.audit import log_event
    from kfmlops.model_contract import METADATA_KEY, ModelInfo
    from kfmlops.serving.deploy import deploy, version_config
    from kfmlops.tracking import client, use

    use(settings.mlflow)
    name = settings.mlflow.model_name
    tags = client(settings.mlflow).get_model_version(name, version).tags or {}
    if TEST_DATA_TAG not in tags:
        raise ApprovalError(f"{name} v{version} records no test split ({TEST_DATA_TAG}): deploy it with "
                            "kfmlops' deploy step instead")
    metadata = mlflow.models.get_model_info(f"models:/{name}/{version}").metadata or {}
    task = ModelInfo.from_json(metadata[METADATA_KEY]).task
    result = deploy(tags[TEST_DATA_TAG], task, version_config(settings, version), settings.mlflow, settings.provenance)
    log_event(settings, result.audit_entry(actor))
    model_card.refresh(settings, version)
    return result


def _parser(action: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"kfmlops {action}",
                                     description=f"{action.capitalize()} a model version that waits for approval.")
    parser.add_argument("name", help="the registered model")
    parser.add_argument("version")
    parser.add_argument("--reason", required=True, help="why: recorded on the version and in the audit log")
    parser.add_argument("--by", help="who (default: $KFMLOPS_ACTOR, else the pod's service account, else the login name)")
    parser.add_argument("--config", help="pipeline config YAML (its mlflow, governance, deploy, audit, provenance sections)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    if action == "approve":
        parser.add_argument("--no-deploy", action="store_true", help="move champion only; deploy later")
    return parser


def approve_main(argv: list[str] | None = None) -> int:
    """``kfmlops approve NAME VERSION --reason TEXT``: 0 when approved (and deployed), 1 otherwise."""
    return _main("approve", argv)


def reject_main(argv: list[str] | None = None) -> int:
    """``kfmlops reject NAME VERSION --reason TEXT``: 0 when rejected, 1 otherwise."""
    return _main("reject", argv)


def _main(action: str, argv: list[str] | None) -> int:
    from mlflow.exceptions import MlflowException

    from kfmlops.audit import AuditError, actor
    from kfmlops.config import PipelineConfig
    from kfmlops.tracking import answer
    from kfmlops.typed import ConfigError

    args = _parser(action).parse_args(argv)
    try:
        settings = PipelineConfig.from_yaml(args.config).settings if args.config else Settings()
        if args.name != settings.mlflow.model_name:
            settings = settings.model_copy(update={"mlflow": settings.mlflow.model_copy(update={"model_name": args.name})})
        who = actor(args.by)
        out: dict[str, Any]
        if action == "reject":
            out = {"request": asdict(reject(settings, args.version, who, args.reason).request)}
        else:
            decision = approve(settings, args.version, who, args.reason)
            out = {"request": asdict(decision.request), "previous_champion": decision.previous_champion}
            if not args.no_deploy:
                out["deploy"] = deploy_approved(settings, args.version, who).to_json()
    except (ApprovalError, ConfigError, AuditError) as exc:
        print(f"kfmlops {action}: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"kfmlops {action}: the registry answered: {answer(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(out, default=str) if args.json else _text(action, out))
    return 0 if out.get("deploy", {}).get("status", "promoted") == "promoted" else 1


def _text(action: str, out: dict[str, Any]) -> str:
    req = out["request"]
    lines = [f"{req['model']} v{req['version']} {req['status']} by {req['decided_by']}: {req['reason']}"]
    if action == "approve":
        lines.append(f"  champion: v{req['version']} (was {out['previous_champion'] or 'none'})")
        if "deploy" in out:
            deployed = out["deploy"]
            lines.append(f"  deploy: {deployed['status']} ({deployed['target']}, {deployed['traffic_percent']}% traffic)")
            lines += [f"    {r}" for check in (deployed["validation"], deployed["canary"]) if check and not check["passed"]
                      for r in check["reasons"]]
    return "\n".join(lines)
