"""``kfmlops run``: the training pipeline on this machine through ``kfp.local``, then a summary.

The same compiled components run here (``SubprocessRunner(use_venv=False)``: each task is a
subprocess of this interpreter, so the installed kfmlops is what runs) and in a cluster pod.
Local state lives under ``$KFMLOPS_HOME`` (default ``./.kfmlops``): the MLflow store
(``mlflow.db`` + ``artifacts/``) and the pipeline root (``pipeline_root/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfmlops.config import PipelineConfig, Settings
from kfmlops.typed import ConfigError
from kfmlops.register import CHAMPION
from kfmlops.register import DEPLOY_REASONS_TAG, DEPLOY_STATUS_TAG
from kfmlops.register import aliases as registry_aliases
from kfmlops.tracking import kfmlops_home, tracking_uri

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "adult.yaml"


class PipelineFailed(RuntimeError):
    """A step failed; the message names it and where its outputs are."""


@dataclass(frozen=True)
class LocalRun:
    version: str
    pipeline_root: Path
    seconds: float


def run_pipeline(
    arguments: dict[str, Any], *, pipeline_root: str | os.PathLike | None = None, runner: Any = None
) -> LocalRun:
    """Run the training pipeline locally with these pipeline arguments; returns the registered version.

    ``runner`` is a ``kfp.local`` runner; the default runs each task as a subprocess of this
    interpreter (``SubprocessRunner(use_venv=False)``), a ``DockerRunner`` runs it in the image.
    """
    from kfp import local

    from kfmlops.pipelines import training

    settings = Settings.parse(arguments.get("settings"))  # fail on a bad setting before any step starts
    # Every task is its own process: give them all the same, absolute store.
    pinned = settings.mlflow.model_copy(update={"tracking_uri": tracking_uri(settings.mlflow)})
    arguments = {**arguments, "settings": settings.model_copy(update={"mlflow": pinned}).to_parameter()}
    root = Path(pipeline_root) if pipeline_root else kfmlops_home() / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    started = time.monotonic()
    before = set(root.glob("kfmlops-training-*"))
    try:
        task = training(**{k: v for k, v in arguments.items() if v is not None})
    except RuntimeError as exc:
        outputs = sorted(set(root.glob("kfmlops-training-*")) - before)
        where = f"; the steps' outputs are in {outputs[-1]}" if outputs else ""
        raise PipelineFailed(f"{exc}{where}") from None
    outputs = sorted(set(root.glob("kfmlops-training-*")) - before)
    return LocalRun(str(task.output), outputs[-1] if outputs else root, time.monotonic() - started)


def summary(config: PipelineConfig, run: LocalRun) -> str:
    """A readable account of one run: metrics, fairness by group, gate verdicts, version, aliases, locations."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = config.settings.mlflow
    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    mv = client.get_model_version(cfg.model_name, run.version)
    aliases = registry_aliases(cfg)
    evaluation = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/evaluation.json")
    fairness = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/fairness.json")
    validation = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/validation.json")

    out = [f"kfmlops training run: {cfg.model_name} version {run.version} ({run.seconds:.1f} s)", ""]
    cand, champ = evaluation["candidate"], evaluation.get("champion")
    out.append("Test metrics" + (f" (vs champion v{evaluation['champion_version']})" if champ else " (no champion yet)"))
    for name in ("roc_auc", "pr_auc", "accuracy", "f1", "log_loss", "brier"):
        line = f"  {name:<9} {cand[name]:.4f}"
        if champ:
            line += f"   champion {champ[name]:.4f}   delta {cand[name] - champ[name]:+.4f}"
        out.append(line)
    (tn, fp), (fn, tp) = cand["confusion_matrix"]
    out += [f"  confusion  tn={tn} fp={fp} fn={fn} tp={tp}", ""]

    out.append("Fairness by group (selection rate / TPR / FPR / accuracy / rows)")
    for feature in fairness["features"]:
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
    out.append("")

    gates = [
        ("validate", validation["passed"], [f"{validation['warnings']} warnings, {validation['errors']} errors"]),
        ("evaluate", evaluation["blessed"], evaluation["reasons"]),
        ("fairness", fairness["passed"], fairness["reasons"]),
    ]
    out.append("Gates")
    for name, passed, reasons in gates:
        out.append(f"  {name:<9} {'PASS' if passed else 'FAIL'}")
        out += [f"            {r}" for r in reasons]
    mine = sorted(a for a, v in aliases.items() if v == run.version)
    champion = aliases.get(CHAMPION)
    out += ["", f"Model {cfg.model_name} v{run.version}: aliases {', '.join(mine) or 'none'}"]
    failed = [name for name, passed, _ in gates if not passed]
    deployed = mv.tags.get(DEPLOY_STATUS_TAG)
    held = f"champion stays v{champion}" if champion else "there is no champion"
    if champion == run.version:
        out.append("  promoted to champion: every gate passed")
    elif failed:
        out.append(f"  not promoted ({', '.join(failed)} gate failed): {held}")
    else:
        out.append(f"  every gate passed, but the deploy step {deployed or 'did not finish'}: {held}")
    if deployed:
        out.append(f"  deploy: {deployed}")
        out += [f"    {r}" for r in json.loads(mv.tags.get(DEPLOY_REASONS_TAG, "[]"))]
    out += [
        "",
        "Where things are",
        f"  reports and artifacts  {run.pipeline_root}",
        "    validate/report, evaluate/report, fairness/report are HTML; evaluate/predictions is Parquet",
        f"  MLflow store           {uri}",
        f"  browse it with         mlflow ui --backend-store-uri {uri} --host 127.0.0.1",
    ]
    return "\n".join(out)


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kfmlops run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config YAML (default: the Adult demo)")
    parser.add_argument("--pipeline-root", help="where task outputs go (default: $KFMLOPS_HOME/pipeline_root)")
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig.from_yaml(args.config)
        run = run_pipeline(config.pipeline_arguments(), pipeline_root=args.pipeline_root)
    except (ConfigError, PipelineFailed) as exc:
        print(f"kfmlops run failed: {exc}")
        return 1
    print("\n" + summary(config, run))
    return 0
