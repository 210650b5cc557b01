"""The account of one training run: a JSON document (``summary.json``) and the text people read.

:func:`collect` reads what the run recorded in MLflow (metrics, fairness by group, gate verdicts,
aliases, deploy status) into a plain dict; :func:`render` turns that dict into text. Scripts read
the JSON (``kfmlops run --json``), people the text, and both say the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kfmlops.config import MlflowConfig
from kfmlops.register import CHAMPION, DEPLOY_REASONS_TAG, DEPLOY_STATUS_TAG
from kfmlops.register import aliases as registry_aliases
from kfmlops.tracking import tracking_uri

METRICS = ("roc_auc", "pr_auc", "accuracy", "f1", "log_loss", "brier")


def collect(mlflow_config: MlflowConfig, version: str, *, seconds: float, steps: list[dict],
            run_dir: Path, logs: Path | None) -> dict[str, Any]:
    """A succeeded run's summary: what the run of model ``version`` recorded in MLflow (model,
    data, metrics, fairness, gates, deploy), its steps and where its files are."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(mlflow_config)
    client = MlflowClient(uri, uri)
    mlflow.set_tracking_uri(uri)
    mv = client.get_model_version(mlflow_config.model_name, version)
    documents = {name: mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{name}.json")
                 for name in ("ingest", "validation", "evaluation", "fairness")}
    evaluation, fairness, validation = documents["evaluation"], documents["fairness"], documents["validation"]
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
            "aliases": sorted(a for a, v in aliases.items() if v == version),
            "champion": champion,
            "promoted": champion == version,
            "mlflow_run_id": mv.run_id,
        },
        "data": {k: documents["ingest"].get(k) for k in ("label", "train_rows", "test_rows", "fingerprint",
                                                          "dropped_unlabelled", "label_mapping")},
        "metrics": {
            "candidate": {k: evaluation["candidate"][k] for k in (*METRICS, "confusion_matrix")},
            "champion": ({k: evaluation["champion"][k] for k in METRICS} if evaluation.get("champion") else None),
            "champion_version": evaluation.get("champion_version"),
        },
        "fairness": fairness["features"],
        "gates": gates,
        "deploy": {"status": mv.tags.get(DEPLOY_STATUS_TAG),
                   "reasons": json.loads(mv.tags.get(DEPLOY_REASONS_TAG, "[]"))},
        "mlflow": {"tracking_uri": uri},
        "paths": paths(run_dir, logs),
    }


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

    model, metrics = summary["model"], summary["metrics"]
    cand, champ = metrics["candidate"], metrics["champion"]
    out = [f"kfmlops training run: {model['name']} version {model['version']} ({summary['seconds']:.1f} s)", ""]
    data = summary["data"]
    out.append(f"Data: {data['train_rows']:,} train rows, {data['test_rows']:,} test rows; "
               f"{data.get('dropped_unlabelled') or 0:,} rows dropped for a missing label")
    for name, values in (data.get("label_mapping") or {}).items():
        shown = ", ".join(f"{v!r} {n:,}" for v, n in sorted(values.items(), key=lambda kv: -kv[1])[:4])
        more = f" and {len(values) - 4} more values" if len(values) > 4 else ""
        out.append(f"  label {data['label']} {name}: {shown}{more}")
    out.append("")
    out.append("Test metrics" + (f" (vs champion v{metrics['champion_version']})" if champ else " (no champion yet)"))
    for name in METRICS:
        line = f"  {name:<9} {cand[name]:.4f}"
        if champ:
            line += f"   champion {champ[name]:.4f}   delta {cand[name] - champ[name]:+.4f}"
        out.append(line)
    (tn, fp), (fn, tp) = cand["confusion_matrix"]
    out += [f"  confusion  tn={tn} fp={fp} fn={fn} tp={tp}", ""]

    out.append("Fairness by group (selection rate / TPR / FPR / accuracy / rows)")
    if not summary["fairness"]:
        out.append("  not assessed: data.sensitive_features is empty")
    for feature in summary["fairness"]:
        out.append(
            f"  {feature['feature']}: DP diff {_f(feature['demographic_parity_difference'])}, "
            f"DP ratio {_f(feature['demographic_parity_ratio'])}, EO diff {_f(feature['equalized_odds_difference'])}"
        )
        for g in feature["by_group"]:
            gated = "" if g["gated"] else "  (too few rows: not gated)"
            out.append(
                f"    {str(g['group']):<20} {_f(g['selection_rate'])} / {_f(g['tpr'])} / {_f(g['fpr'])} / "
                f"{_f(g['accuracy'])} / {g['count']}{gated}"
            )
    out += ["", "Gates"]
    for gate in summary["gates"]:
        out.append(f"  {gate['name']:<9} {'PASS' if gate['passed'] else 'FAIL'}")
        out += [f"            {r}" for r in gate["reasons"]]

    champion, deploy = model["champion"], summary["deploy"]
    out += ["", f"Model {model['name']} v{model['version']}: aliases {', '.join(model['aliases']) or 'none'}"]
    failed = [g["name"] for g in summary["gates"] if not g["passed"]]
    held = f"champion stays v{champion}" if champion else "there is no champion"
    if model["promoted"]:
        out.append("  promoted to champion: every gate passed")
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
        "    validate/report, evaluate/report, fairness/report are HTML; evaluate/predictions is Parquet",
        *([f"  step logs       {paths['logs']}"] if paths["logs"] else []),
        f"  summary (JSON)  {paths['summary']}",
        f"  MLflow store    {uri}  (browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1)",
    ]
    return "\n".join(out)


def _error_line(error: dict[str, Any]) -> str:
    where = f" at step {error['step']}" if error.get("step") else " before any step ran"
    return f"kfmlops run failed{where}: {error['reason']}"


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"
