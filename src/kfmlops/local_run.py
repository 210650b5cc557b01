"""``kfmlops run``: the training pipeline (or, with ``--model-uri``, the bring-your-own-model
pipeline) on this machine through ``kfp.local``, then a summary. ``--from-version V`` trains on
exactly the data version ``V`` of the config's model was trained and tested on (its snapshots,
:mod:`kfmlops.snapshots`).

The same compiled components run here (``SubprocessRunner(use_venv=False)``: each task is a
subprocess of this interpreter, so the installed kfmlops is what runs) and in a cluster pod.
Local state lives under ``$KFMLOPS_HOME`` (default ``./.kfmlops``): the MLflow store
(``mlflow.db`` + ``artifacts/``) and the pipeline root (``pipeline_root/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from kfmlops import preflight
from kfmlops.config import PipelineConfig, Settings
from kfmlops.durable import write_text_atomically
from kfmlops.ingest import IngestError
from kfmlops.registry import RegistryError
from kfmlops.residency import ResidencyError
from kfmlops.snapshots import retrain_config
from kfmlops.task_logs import Step, TaskLogs, failure_reason
from kfmlops.tracking import kfmlops_home, tracking_uri
from kfmlops.typed import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "adult.yaml"


class PipelineFailed(RuntimeError):
    """A step failed: ``step`` names it, ``reason`` is its last exception line, ``log`` its full log."""

    def __init__(self, message: str, *, step: str | None, reason: str, run_dir: Path, logs: Path,
                 log: Path | None, steps: list[Step], seconds: float) -> None:
        super().__init__(message)
        self.step, self.reason, self.run_dir, self.logs, self.log = step, reason, run_dir, logs, log
        self.steps, self.seconds = steps, seconds


@dataclass(frozen=True)
class LocalRun:
    version: str
    pipeline_root: Path  # this run's directory: one folder of outputs per step, logs/, summary.json
    seconds: float
    steps: list[Step] = field(default_factory=list)
    logs: Path | None = None


def run_pipeline(
    arguments: dict[str, Any],
    *,
    pipeline_root: str | os.PathLike | None = None,
    runner: Any = None,
    progress: TextIO | None = None,
    verbose: bool = True,
) -> LocalRun:
    """Run the training pipeline locally with these pipeline arguments (the bring-your-own-model
    pipeline when they hold a ``model_uri``); returns the registered version.

    ``runner`` is a ``kfp.local`` runner; the default runs each task as a subprocess of this
    interpreter (``SubprocessRunner(use_venv=False)``), a ``DockerRunner`` runs it in the image.
    Each task's output goes to ``<run dir>/logs/<task>.log``; ``progress`` gets one line per
    finished task, and with ``verbose`` everything is echoed to the console as well.
    """
    from kfp import local

    from kfmlops.pipelines import bring_your_own_model, training

    pipeline = bring_your_own_model if "model_uri" in arguments else training
    settings = Settings.parse(arguments.get("settings"))  # fail on a bad setting before any step starts
    # Every task is its own process: give them all the same, absolute store.
    pinned = settings.mlflow.model_copy(update={"tracking_uri": tracking_uri(settings.mlflow)})
    arguments = {**arguments, "settings": settings.model_copy(update={"mlflow": pinned}).to_parameter()}
    root = Path(pipeline_root) if pipeline_root else kfmlops_home() / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    before = set(root.glob(f"{pipeline.name}-*"))
    staging = root / f".logs-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
    logs = TaskLogs(staging, progress=progress, echo=sys.__stdout__ if verbose else None)
    started = time.monotonic()
    error: RuntimeError | None = None
    try:
        with logs.capture():
            task = pipeline(**arguments)
    except RuntimeError as exc:
        error = exc
    seconds = time.monotonic() - started
    created = sorted(set(root.glob(f"{pipeline.name}-*")) - before)
    run_dir = created[-1] if created else staging
    log_dir = _move_logs(logs, staging, run_dir)
    if error is None:
        return LocalRun(str(task.output), run_dir, seconds, logs.steps, log_dir)
    failed = logs.failed()
    reason = (failure_reason(failed.log) if failed else None) or str(error).splitlines()[0]
    step = failed.name if failed else None
    raise PipelineFailed(f"step {step} failed: {reason}" if step else reason, step=step, reason=reason,
                         run_dir=run_dir, logs=log_dir, log=failed.log if failed else None,
                         steps=logs.steps, seconds=seconds) from None


def _move_logs(logs: TaskLogs, staging: Path, run_dir: Path) -> Path:
    """The staged logs into ``<run_dir>/logs`` (the run's folder exists only once kfp.local made it)."""
    if run_dir == staging:
        return staging
    target = run_dir / "logs"
    shutil.move(staging, target)
    for step in logs.steps:
        step.log = target / step.log.name
    return target


def run_and_summarise(config: PipelineConfig, *, progress: TextIO | None, verbose: bool,
                      pipeline_root: str | None = None, model_uri: str | None = None) -> dict[str, Any]:
    """Run the pipeline for ``config`` (releasing ``model_uri`` instead of training, when given) and
    return its summary (see :mod:`kfmlops.run_summary`), also written to ``summary.json`` in the run
    directory; a failed run gets one too."""
    from kfmlops import run_summary

    arguments = config.pipeline_arguments() | ({"model_uri": model_uri} if model_uri else {})
    try:
        run = run_pipeline(arguments, pipeline_root=pipeline_root, progress=progress, verbose=verbose)
    except PipelineFailed as exc:
        summary = run_summary.failed(step=exc.step, reason=exc.reason, log=exc.log, seconds=exc.seconds,
                                     steps=[s.to_json() for s in exc.steps], run_dir=exc.run_dir, logs=exc.logs)
    else:
        summary = run_summary.collect(config.settings.mlflow, run.version, seconds=run.seconds,
                                      steps=[s.to_json() for s in run.steps], run_dir=run.pipeline_root,
                                      logs=run.logs)
    write_text_atomically(summary["paths"]["summary"], json.dumps(summary, indent=1, default=str))
    return summary


def main(argv: list[str] | None = None) -> int:
    from kfmlops import run_summary

    parser = argparse.ArgumentParser(prog="kfmlops run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config YAML (default: the Adult demo)")
    parser.add_argument("--pipeline-root", help="where task outputs go (default: $KFMLOPS_HOME/pipeline_root)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (progress on stderr)")
    parser.add_argument("--verbose", action="store_true", help="also print every step's full log")
    parser.add_argument("--model-uri", help="release this MLflow model (a path, an artifact URI, models:/NAME/VERSION) "
                                            "through the gates instead of training one")
    parser.add_argument("--from-version", metavar="VERSION",
                        help="train on exactly the train and test snapshots of this registered version of the config's "
                             "model (kfmlops data show VERSION), in place of data.source and data.test_source")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per step, no download bars
    out = sys.stderr if args.json else sys.stdout
    try:
        config = PipelineConfig.from_yaml(args.config)
        if args.from_version:
            config = retrain_config(config, args.from_version)
        print(f"kfmlops run: {config.settings.mlflow.model_name} from {config.data.source}", file=out, flush=True)
        preflight.check(config)  # what a look at the config and the data headers finds, before any step
    except (ConfigError, IngestError, ResidencyError, RegistryError) as exc:
        summary = run_summary.refused(exc)
    else:
        summary = run_and_summarise(config, progress=out, verbose=args.verbose, pipeline_root=args.pipeline_root,
                                    model_uri=args.model_uri)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
        if summary["status"] != "succeeded":
            print(run_summary.render(summary).splitlines()[-1], file=sys.stderr)
    else:
        print(("\n" if summary["steps"] else "") + run_summary.render(summary))
    return 0 if summary["status"] == "succeeded" else 1
