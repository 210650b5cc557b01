"""``kfmlops tune --config FILE``: a pipeline config's hyperparameter search on this machine, or
(``--emit-katib FILE``) the same search as a Katib Experiment for a cluster.

Locally: the data is ingested into the run folder (``$KFMLOPS_HOME/tune/<time>/``, or ``--out``), the
search (:func:`kfmlops.tune.tune`) runs on its train split, one line per finished trial goes to the
console, then a table of the configured against the best settings; the folder keeps ``tune.log``
(every worker's log) and ``summary.json`` (what ``--json`` prints). ``--trials``, ``--parallelism``
and ``--timeout`` override ``tuning.n_trials``, ``tuning.parallelism`` and ``tuning.timeout_seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from kfmlops.config import PipelineConfig, Settings, TuningConfig
from kfmlops.typed import ConfigError


def with_overrides(settings: Settings, trials: int | None, parallelism: int | None, timeout: float | None) -> Settings:
    """``settings`` with the command line's budget, validated again."""
    raw = settings.tuning.model_dump(mode="json")
    raw |= {k: v for k, v in (("n_trials", trials), ("parallelism", parallelism), ("timeout_seconds", timeout))
            if v is not None}
    tuning = TuningConfig.model_validate(raw)
    return Settings.parse({**settings.model_dump(mode="json"), "tuning": tuning.model_dump(mode="json")})


def task_kind(config: PipelineConfig) -> str:
    """``data.task``, else the kind ingest infers from the data."""
    if config.data.task:
        return config.data.task
    from kfmlops.ingest import ingest

    with tempfile.TemporaryDirectory(prefix="kfmlops-tune-task-") as tmp:
        return ingest(config.data, config.settings.ingest, Path(tmp) / "train.parquet", Path(tmp) / "test.parquet").task["kind"]


def progress_line(record, done: int, n_trials: int, best: tuple[int, float] | None, metric: str) -> str:
    """One finished trial: its number, how many are done, its outcome, the best so far, its settings."""
    value = f"val {metric} {record.value:.5f}" if record.value is not None else record.state
    if record.state == "pruned" and record.steps:
        value = f"pruned at step {record.steps[-1][0]} (val {metric} {record.steps[-1][1]:.5f})"
    if record.state == "failed":
        value = f"failed: {record.error}"
    shown = " ".join(f"{k}={_short(v)}" for k, v in record.params.items())
    best_text = f" | best #{best[0]} {best[1]:.5f}" if best else ""
    return f"trial {record.number:>3} ({done}/{n_trials} done) {value} in {record.seconds:.1f} s{best_text} | {shown}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value


def render(result, log: Path) -> str:
    """The configured settings (trial 0) against the best, and the budget spent."""
    default = next(t for t in result.trials if t.number == 0)
    rows = [("setting", "configured (trial 0)", f"best (trial {result.best_trial})")]
    rows += [(path, _short(default.params[path]), _short(result.best_params[path])) for path in result.best_params]
    rows.append((f"val {result.metric}", "-" if result.default_value is None else f"{result.default_value:.5f}",
                 f"{result.best_value:.5f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"{len(result.trials)} trials ({result.count('complete')} complete, {result.count('pruned')} pruned, "
                 f"{result.count('failed')} failed) with {result.parallelism} worker(s) in {result.seconds:.0f} s "
                 f"({result.direction} val {result.metric}, on the validation slice of the train split)")
    if result.run_id:
        lines.append(f"MLflow run {result.run_id} (one child run per trial)")
    lines.append(f"log: {log}")
    changed = {k: v for k, v in result.best_params.items() if v != default.params[k]}
    lines.append("train settings to use: " + (json.dumps(changed) if changed else "the configured ones (none beat them)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from kfmlops.local_run import DEFAULT_CONFIG
    from kfmlops.tracking import kfmlops_home

    parser = argparse.ArgumentParser(prog="kfmlops tune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config YAML (its tuning section)")
    parser.add_argument("--trials", type=int, help="trial budget, the configured settings included (tuning.n_trials)")
    parser.add_argument("--parallelism", type=int, help="worker processes (tuning.parallelism)")
    parser.add_argument("--timeout", type=float, help="seconds after which no trial starts (tuning.timeout_seconds)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (progress on stderr)")
    parser.add_argument("--out", help="run folder (default: $KFMLOPS_HOME/tune/<time>)")
    parser.add_argument("--emit-katib", metavar="FILE", help="write the search as a Katib Experiment (YAML) and exit")
    parser.add_argument("--name", default="kfmlops-tune", help="the Experiment's name (--emit-katib)")
    parser.add_argument("--namespace", default="kubeflow", help="the Experiment's namespace (--emit-katib)")
    args = parser.parse_args(argv)
    out: TextIO = sys.stderr if args.json else sys.stdout
    try:
        config = PipelineConfig.from_yaml(args.config)
        settings = with_overrides(config.settings, args.trials, args.parallelism, args.timeout)
        if not settings.tuning.n_trials:
            raise ConfigError(f"{args.config}: tuning.n_trials is 0: set it in the config or pass --trials N")
    except ConfigError as exc:
        print(f"kfmlops tune: {exc}", file=sys.stderr)
        return 2
    config = config.model_copy(update={"settings": settings})
    if args.emit_katib:
        return emit_katib(config, Path(args.emit_katib), args.name, args.namespace, out)
    run_dir = Path(args.out) if args.out else kfmlops_home() / "tune" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    summary = run(config, run_dir, out)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    return 0


def run(config: PipelineConfig, run_dir: Path, out: TextIO) -> dict[str, Any]:
    """Ingest, search, print progress and the table to ``out``; returns the summary (also in summary.json)."""
    from kfmlops.ingest import ingest
    from kfmlops.tasks import Task
    from kfmlops.train.common import METRIC
    from kfmlops.tune import direction, tune

    settings = config.settings
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "tune.log"
    print(f"kfmlops tune: {settings.tuning.n_trials} trials over {sorted(settings.tuning.space)} with "
          f"{settings.tuning.parallelism} worker(s); data from {config.data.source}", file=out, flush=True)
    done = ingest(config.data, settings.ingest, run_dir / "train.parquet", run_dir / "test.parquet")
    task = Task.from_json(done.task)
    best: list[tuple[int, float]] = []
    finished: list[int] = []
    sign = 1 if direction(task.kind) == "maximize" else -1

    def on_trial(record) -> None:
        if record.value is not None and (not best or sign * record.value > sign * best[0][1]):
            best[:] = [(record.number, record.value)]
        finished.append(record.number)
        line = progress_line(record, len(finished), settings.tuning.n_trials, best[0] if best else None, METRIC[task.kind])
        print(line, file=out, flush=True)

    result = tune(done.train_path, task, settings.train, settings.tuning, mlflow=settings.mlflow, log_path=log,
                  on_trial=on_trial)
    print("\n" + render(result, log), file=out, flush=True)
    summary = {"result": result.to_json(), "tuned_train_settings": result.apply(settings.train).model_dump(mode="json"),
               "paths": {"run_dir": str(run_dir), "log": str(log), "train_split": done.train_path}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def emit_katib(config: PipelineConfig, path: Path, name: str, namespace: str, out: TextIO) -> int:
    import yaml

    from kfmlops.katib import katib_experiment

    experiment = katib_experiment(config.data, config.settings, task_kind(config), name=name, namespace=namespace)
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    print(f"wrote {path}: Katib Experiment {namespace}/{name} ({config.settings.tuning.n_trials} trials, "
          f"{len(config.settings.tuning.space)} parameters); submit it with kubectl apply -f {path}", file=out)
    return 0
