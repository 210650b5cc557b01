"""The account of one training run: a JSON document (``summary.json``) and the text people read.

:func:`collect` reads what the run recorded in MLflow (metrics, fairness by group, gate verdicts,
aliases, deploy status) into a plain dict; :func:`render` turns that dict into text. Scripts read
the JSON (``kfmlops run --json``), people the text, and both say the same thing.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kfmlops.config import MlflowConfig
from kfmlops.register import CHAMPION, DEPLOY_REASONS_TAG, DEPLOY_STATUS_TAG, TRAINER_TAG
from kfmlops.register import aliases as registry_aliases
from kfmlops.tasks import Task, metrics_module
from kfmlops.tracking import tracking_uri

STEP_DOCUMENTS = ("ingest", "validation", "evaluation", "fairness")
"""The JSON documents ingest, validate, evaluate and fairness log into the pipeline's MLflow run."""
ROLES = ("candidate", "reference", "baseline", "champion")
"""The models an evaluation document scores."""


def collect(mlflow_config: MlflowConfig, version: str, *, seconds: float, steps: list[dict],
            run_dir: Path, logs: Path | None) -> dict[str, Any]:
    """A succeeded run's summary: what the run of model ``version`` recorded in MLflow (model, task,
    data, metrics of the candidate, reference, baseline and champion, fairness, gates, deploy), its
    steps and where its files are."""
    from kfmlops import approval
    from kfmlops.tracking import client

    uri = tracking_uri(mlflow_config)
    store = client(mlflow_config)
    mv = store.get_model_version(mlflow_config.model_name, version)
    documents = step_documents(store, mv.run_id)
    if missing := [name for name in STEP_DOCUMENTS if name not in documents]:
        raise ValueError(f"MLflow run {mv.run_id} of version {version} holds no {', '.join(missing)} document")
    evaluation, fairness, validation = documents["evaluation"], documents["fairness"], documents["validation"]
    task = Task.from_json(evaluation["task"])
    names = list(metrics_module(task).DIRECTIONS)
    aliases = registry_aliases(mlflow_config)
    champion = aliases.get(CHAMPION)
    gates = [
        {"name": "validate", "passed": validation["passed"],
         "reasons": [f"{validation['warnings']} warnings, {validation['errors']} errors"]},
        {"name": "evaluate", "passed": evaluation["blessed"], "reasons": evaluation["reasons"]},
        {"name": "fairness", "passed": fairness["passed"], "reasons": fairness["reasons"]},
    ]
    return {
        "status": "succeeded",
        "seconds": round(seconds, 2),
        "steps": steps,
        "model": {
            "name": mlflow_config.model_name,
            "version": version,
            "trainer": mv.tags.get(TRAINER_TAG),
            "aliases": sorted(a for a, v in aliases.items() if v == version),
            "champion": champion,
            "promoted": champion == version,
            "mlflow_run_id": mv.run_id,
        },
        "task": task.to_json(),
        "data": {k: documents["ingest"].get(k) for k in ("label", "train_rows", "test_rows", "fingerprint",
                                                          "dropped_unlabelled", "label_mapping", "label_counts")},
        "metrics": {
            "primary": evaluation["primary_metric"],
            **{role: task_metrics(evaluation.get(role), names) for role in ROLES},
            "champion_version": evaluation.get("champion_version"),
            "confusion_matrix": evaluation["candidate"].get("confusion_matrix"),
        },
        "fairness": fairness["features"],
        "gates": gates,
        "approval": asdict(request) if (request := approval.current(mlflow_config, version)) else None,
        "deploy": {"status": mv.tags.get(DEPLOY_STATUS_TAG),
                   "reasons": json.loads(mv.tags.get(DEPLOY_REASONS_TAG, "[]"))},
        "mlflow": {"tracking_uri": uri},
        "paths": paths(run_dir, logs),
    }


def step_documents(store, run_id: str) -> dict[str, dict[str, Any]]:
    """The JSON documents the pipeline's steps logged into MLflow run ``run_id`` (``<name>.json`` for
    each of :data:`STEP_DOCUMENTS`), by name; one the run does not hold is left out."""
    found = {name: run_document(store, run_id, f"{name}.json") for name in STEP_DOCUMENTS}
    return {name: document for name, document in found.items() if document is not None}


def run_document(store, run_id: str, path: str) -> Any:
    """The JSON document at artifact ``path`` of MLflow run ``run_id`` (``store``: an MlflowClient);
    None when the run holds no such artifact."""
    folder = posixpath.dirname(path) or None
    if path not in {a.path for a in store.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory(prefix="kfmlops-document-") as tmp:
        return json.loads(Path(store.download_artifacts(run_id, path, tmp)).read_text())


def task_metrics(scores: dict[str, Any] | None, names: list[str]) -> dict[str, float | None] | None:
    """The task's scalar metrics out of a recorded scores document (``None`` for a model not scored)."""
    return {name: scores.get(name) for name in names} if scores else None


def group_columns(feature: dict[str, Any]) -> list[str]:
    """The figures a recorded fairness feature gives for each group (selection rate, TPR, MAE, ...)."""
    rows = feature["by_group"]
    return [k for k in rows[0] if k not in ("group", "count", "gated")] if rows else []


def failed(*, step: str | None, reason: str, log: Path | None, seconds: float, steps: list[dict],
           run_dir: Path, logs: Path) -> dict[str, Any]:
    """A failed run's summary: the step that failed, its last exception line and its log."""
    return {"status": "failed", "seconds": round(seconds, 2), "steps": steps,
            "error": {"step": step, "reason": reason, "log": str(log) if log else None},
            "paths": paths(run_dir, logs)}


def refused(error: Exception) -> dict[str, Any]:
    """The summary of a run refused before any step started (a config or preflight error)."""
    return {"status": "failed", "seconds": 0.0, "steps": [],
            "error": {"step": None, "reason": f"{type(error).__name__}: {error}", "log": None}, "paths": None}


def paths(run_dir: Path, logs: Path | None) -> dict[str, str | None]:
    return {"run_dir": str(run_dir), "logs": str(logs) if logs else None, "summary": str(run_dir / "summary.json")}


def render(summary: dict[str, Any]) -> str:
    """The summary as text: the first line names the model, version and outcome."""
    if summary["status"] != "succeeded":
        error = summary["error"]
        if not summary["paths"]:
            return _error_line(error)
        lines = [f"kfmlops training run failed ({summary['seconds']:.1f} s)", ""]
        if error.get("log"):
            lines.append(f"  full log of {error['step']}: {error['log']}")
        lines.append(f"  every step's log:  {summary['paths']['logs']}")
        return "\n".join(lines + ["", _error_line(error)])

    model, metrics, task = summary["model"], summary["metrics"], Task.from_json(summary["task"])
    trainer = f", trainer {model['trainer']}" if model.get("trainer") else ""
    out = [f"kfmlops training run: {model['name']} version {model['version']}{trainer} ({summary['seconds']:.1f} s)", ""]
    out += _data_lines(summary["data"], task) + [""]
    out += _metric_lines(metrics) + [""]
    out += _fairness_lines(summary["fairness"])
    out += ["", "Gates"]
    for gate in summary["gates"]:
        out.append(f"  {gate['name']:<9} {'PASS' if gate['passed'] else 'FAIL'}")
        out += [f"            {r}" for r in gate["reasons"]]

    champion, deploy = model["champion"], summary["deploy"]
    out += ["", f"Model {model['name']} v{model['version']}: aliases {', '.join(model['aliases']) or 'none'}"]
    failed = [g["name"] for g in summary["gates"] if not g["passed"]]
    held = f"champion stays v{champion}" if champion else "there is no champion"
    waiting = summary.get("approval")
    if model["promoted"]:
        out.append("  promoted to champion: every gate passed")
    elif waiting and waiting["status"] == "pending":
        out.append(f"  every gate passed; waits for approval until {waiting['expires_at']} ({held}):")
        out.append(f"    kfmlops approve {model['name']} {model['version']} --reason TEXT   "
                   f"(the run was started by {waiting['started_by']})")
    elif failed:
        out.append(f"  not promoted ({', '.join(failed)} gate failed): {held}")
    else:
        out.append(f"  every gate passed, but the deploy step {deploy['status'] or 'did not finish'}: {held}")
    if deploy["status"]:
        out.append(f"  deploy: {deploy['status']}")
        out += [f"    {r}" for r in deploy["reasons"]]
    paths, uri = summary["paths"], summary["mlflow"]["tracking_uri"]
    out += [
        "",
        "Where things are",
        f"  run directory   {paths['run_dir']}",
        "    validate/report, evaluate/report, fairness/report are HTML; predict/predictions is Parquet",
        *([f"  step logs       {paths['logs']}"] if paths["logs"] else []),
        f"  summary (JSON)  {paths['summary']}",
        f"  MLflow store    {uri}  (browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1)",
    ]
    return "\n".join(out)


def _data_lines(data: dict[str, Any], task: Task) -> list[str]:
    out = [f"Data: {data['train_rows']:,} train rows, {data['test_rows']:,} test rows; "
           f"{data.get('dropped_unlabelled') or 0:,} rows dropped for a missing label"]
    classes = f", classes {', '.join(map(str, task.classes[:6]))}" + (" ..." if len(task.classes) > 6 else "")
    out.append(f"  task {task.kind} (label {task.label}{classes if task.classes else ''}): {task.reason}")
    for name, values in (data.get("label_mapping") or {}).items():
        shown = ", ".join(f"{v!r} {n:,}" for v, n in sorted(values.items(), key=lambda kv: -kv[1])[:4])
        more = f" and {len(values) - 4} more values" if len(values) > 4 else ""
        out.append(f"  label {data['label']} {name}: {shown}{more}")
    return out


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    """The task's test metrics, the primary one first: candidate, reference, baseline, champion."""
    primary, champion = metrics["primary"], metrics["champion"]
    roles = [r for r in ROLES if metrics[r]]
    heads = [f"champion v{metrics['champion_version']}" if r == "champion" else r for r in roles]
    out = [f"Test metrics (primary {primary}; " + (f"vs champion v{metrics['champion_version']})" if champion
                                                    else "no champion yet)"),
           f"  {'':<12}" + "".join(f"{h:>14}" for h in heads)]
    names = [primary, *(n for n in metrics["candidate"] if n != primary)]
    for name in names:
        cells = "".join(f"{_f(metrics[r].get(name), 4):>14}" for r in roles)
        mark = "*" if name == primary else " "
        out.append(f"  {name + mark:<12}{cells}")
    matrix = metrics.get("confusion_matrix")
    if matrix and len(matrix) == 2:
        (tn, fp), (fn, tp) = matrix
        out.append(f"  confusion   tn={tn} fp={fp} fn={fn} tp={tp}")
    elif matrix and len(matrix) <= 8:
        out.append("  confusion (a row per true class, a column per predicted class)")
        out += ["    " + " ".join(f"{n:>7}" for n in row) for row in matrix]
    return out


def _fairness_lines(features: list[dict[str, Any]]) -> list[str]:
    """Each sensitive feature's disparity figures, then its groups' figures."""
    out = ["Fairness by group"]
    if not features:
        return out + ["  not assessed: data.sensitive_features is empty"]
    for feature in features:
        figures = ", ".join(f"{c['figure']} {_f(c['value'], 3)}" for c in feature["checks"])
        out.append(f"  {feature['feature']}: {figures}")
        columns = group_columns(feature)
        out.append(f"    {'group':<20} " + " / ".join(columns) + " / rows")
        for g in feature["by_group"]:
            gated = "" if g["gated"] else "  (too few rows: not gated)"
            values = " / ".join(_f(g[c], 3) for c in columns)
            out.append(f"    {str(g['group']):<20} {values} / {g['count']}{gated}")
    return out


def _error_line(error: dict[str, Any]) -> str:
    where = f" at step {error['step']}" if error.get("step") else " before any step ran"
    return f"kfmlops run failed{where}: {error['reason']}"


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
