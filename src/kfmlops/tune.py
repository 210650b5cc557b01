"""Tune: hyperparameter search over the train settings, scored on validation, never on test.

Consumes the train split (Parquet with canonical labels, from :mod:`kfmlops.ingest`), its
:class:`~kfmlops.tasks.Task`, the :class:`~kfmlops.config.TrainConfig` to start from and a
:class:`~kfmlops.config.TuningConfig` (``tuning.space``: dotted paths into the train settings ->
ranges and choices; the trial budget, the parallelism, a timeout, the pruner, a seed); produces a
:class:`TuningResult`: every trial, the best one and the train settings it changes. No KFP here:
``components/tune.py`` wraps :func:`tune`, ``kfmlops tune`` (:mod:`kfmlops.tune_cli`) runs it from a
config file and :mod:`kfmlops.katib` writes the same search as a Katib ``Experiment``.

- **Objective.** Each trial fits the trainer with its settings on the train split and is scored by
  the trainer's validation metric (:data:`~kfmlops.train.common.METRIC`: ROC AUC, maximised;
  multiclass log loss and RMSE, minimised) on the seeded validation slice it holds out of the train
  split (``train.validation_fraction``). :func:`tune` is given the train split only: the test split
  never reaches a trial, so the test figures that evaluate reports stay unbiased by the search.
- **Trial 0 is the settings as given** (the config loader checks that each tuned setting's value lies
  in the space), is never pruned, and the best trial is the best of all: the tuned settings are never
  worse on validation than the configured ones.
- **Search.** Optuna's TPE sampler (seeded; its first ``n_trials // 3`` trials, at most 10, are
  random) and, with ``tuning.pruner``, a median pruner fed by the trainers' validation metric every 10
  gbdt rounds or every tabular-net epoch (a user trainer fits once: nothing to prune). A categorical
  choice that is not a plain value (a ``hidden_units`` list) is searched by its JSON text.
- **Parallel.** ``tuning.parallelism`` worker processes (``python -m kfmlops.tune worker``: fresh
  interpreters, so nothing of the caller's threads or CUDA state is inherited, and a caller's script
  is never re-imported) share one Optuna journal file; they split the trial budget
  between them and each trial trains in one process with ``cores / parallelism`` threads
  (``gbdt.threads``, ``cpu_threads``), without checkpoints. ``tuning.timeout_seconds``: no trial starts
  after it (a running trial finishes).
- **MLflow.** With an MLflow config, the search is a run (``tune``; a child of ``parent_run_id`` when
  given) recording the space, the budget and the best trial; every trial is a child run of it
  (``mlflow.parentRunId``) with its settings as params, its final and per-step validation metric
  and its state (FINISHED, KILLED when pruned, FAILED).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfmlops.config import Choice, FloatRange, MlflowConfig, TrainConfig, TuningConfig, train_setting, with_train_settings
from kfmlops.tasks import Task, metrics_module

log = logging.getLogger(__name__)

STUDY = "kfmlops"
TAG_PREFIX = "kfmlops.tuning."
"""Lineage tags of a search, on the pipeline's run and on the model version it trained."""
POLL_SECONDS = 0.5


class TuningFailed(RuntimeError):
    """No trial finished, or a worker process died; the message says why."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial: ``state`` complete, pruned or failed; ``value`` the validation metric (None unless
    complete); ``params`` the tuned settings by path; ``steps`` its reported (step, value) pairs."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    seconds: float
    steps: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class TuningResult:
    """What a search found. ``best_params``: the best trial's settings by dotted path (trial 0's are
    the configured ones); ``default_value``: trial 0's validation metric."""

    metric: str
    direction: str
    best_trial: int
    best_value: float
    default_value: float | None
    best_params: dict[str, Any]
    trials: list[TrialRecord]
    space: dict[str, Any]
    space_digest: str
    n_trials: int
    parallelism: int
    seconds: float
    run_id: str | None = None

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the best trial's settings."""
        return with_train_settings(config, self.best_params)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def tags(self) -> dict[str, str]:
        """The search as lineage tags (:data:`TAG_PREFIX`)."""
        values = {
            "space_digest": self.space_digest, "metric": self.metric, "direction": self.direction,
            "n_trials": str(self.n_trials), "parallelism": str(self.parallelism),
            "trials_complete": str(self.count("complete")), "trials_pruned": str(self.count("pruned")),
            "trials_failed": str(self.count("failed")), "best_trial": str(self.best_trial),
            "best_value": f"{self.best_value:.6g}", "best_params": json.dumps(self.best_params)[:5000],
            "default_value": "none" if self.default_value is None else f"{self.default_value:.6g}",
            "run_id": self.run_id or "none",
        }
        return {TAG_PREFIX + k: v for k, v in values.items()}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def direction(kind: str) -> str:
    """``maximize`` or ``minimize``: the direction of the validation metric of a task kind."""
    from kfmlops.train.common import METRIC

    return {"max": "maximize", "min": "minimize"}[metrics_module(kind).DIRECTIONS[METRIC[kind]]]


def space_json(tuning: TuningConfig) -> dict[str, Any]:
    return {path: p.model_dump(mode="json") for path, p in sorted(tuning.space.items())}


def space_digest(tuning: TuningConfig) -> str:
    """SHA-256 of the canonical JSON of the search space."""
    return hashlib.sha256(json.dumps(space_json(tuning), sort_keys=True).encode()).hexdigest()


def trial_threads(parallelism: int) -> int:
    """Threads of each trial: the cores this process may use, shared among the workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // parallelism)


def trial_config(base: TrainConfig, params: dict[str, Any], threads: int) -> TrainConfig:
    """What one trial trains with: ``base`` with ``params``, in one process of ``threads`` threads, no checkpoints."""
    config = with_train_settings(base, params)
    return config.model_copy(update={"processes": 1, "checkpoint_dir": None, "cpu_threads": threads,
                                     "gbdt": config.gbdt.model_copy(update={"threads": threads})})


def _label(value: Any) -> Any:
    """How Optuna holds a choice: plain values as they are, anything else (a list) as its JSON text."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value)


def suggest(trial, tuning: TuningConfig) -> dict[str, Any]:
    """The trial's settings by path, drawn from the space."""
    params = {}
    for path, p in tuning.space.items():
        if isinstance(p, Choice):
            labels = [_label(c) for c in p.choices]
            params[path] = p.choices[labels.index(trial.suggest_categorical(path, labels))]
        elif isinstance(p, FloatRange):
            params[path] = trial.suggest_float(path, p.low, p.high, log=p.log)
        else:
            params[path] = trial.suggest_int(path, p.low, p.high, step=p.step, log=p.log)
    return params


def decode(params: dict[str, Any], tuning: TuningConfig) -> dict[str, Any]:
    """Optuna's params of a trial back into setting values."""
    out = {}
    for path, value in params.items():
        p = tuning.space[path]
        out[path] = p.choices[[_label(c) for c in p.choices].index(value)] if isinstance(p, Choice) else value
    return out


@dataclass(frozen=True)
class _Job:
    """What a worker process needs; travels as a JSON file."""

    worker: int
    train_path: str
    task: dict
    base: dict  # TrainConfig
    tuning: dict  # TuningConfig
    journal: str
    n_trials: int
    deadline: float | None  # time.time()
    threads: int
    mlflow: dict | None
    run_id: str | None
    experiment_id: str | None


def tune(
    train_path: str | Path,
    task: Task,
    base: TrainConfig,
    tuning: TuningConfig,
    *,
    mlflow: MlflowConfig | None = None,
    parent_run_id: str | None = None,
    log_path: str | Path | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> TuningResult:
    """Search ``tuning.space`` around ``base`` on the train split at ``train_path`` (see the module
    docstring); ``on_trial`` is called once per finished trial, in the order they finish. Workers log
    to ``log_path`` (default: this process's stderr). Raises :class:`TuningFailed` when no trial completes."""
    import optuna

    if not tuning.n_trials or not tuning.space:
        raise ValueError("tuning.n_trials and tuning.space must both be set to tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    parallelism = min(tuning.parallelism, tuning.n_trials)
    run_id, experiment_id = _start_run(mlflow, parent_run_id, tuning, task) if mlflow else (None, None)
    try:
        with tempfile.TemporaryDirectory(prefix="kfmlops-tune-") as tmp:
            journal = str(Path(tmp) / "study.journal")
            study = optuna.create_study(storage=_storage(journal), study_name=STUDY, direction=direction(task.kind))
            study.enqueue_trial({path: _label(train_setting(base, path)) for path in tuning.space})  # trial 0
            deadline = time.time() + tuning.timeout_seconds if tuning.timeout_seconds else None
            jobs = [_Job(i, str(train_path), task.to_json(), base.model_dump(mode="json"), tuning.model_dump(mode="json"),
                         journal, tuning.n_trials // parallelism + (i < tuning.n_trials % parallelism), deadline,
                         trial_threads(parallelism), mlflow.model_dump(mode="json") if mlflow else None, run_id,
                         experiment_id)
                    for i in range(parallelism)]
            trials = _run_workers(jobs, Path(tmp), study, tuning, on_trial, log_path)
        result = _result(trials, task, tuning, parallelism, time.monotonic() - started, run_id)
    except BaseException as exc:
        if run_id:
            _end_run(mlflow, run_id, None, exc)
        raise
    if run_id:
        _end_run(mlflow, run_id, result, None)
    return result


def _storage(journal: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(journal))


def _run_workers(jobs: list[_Job], tmp: Path, study, tuning: TuningConfig, on_trial, log_path) -> list[TrialRecord]:
    """Start the workers, report each trial as it finishes, wait for all of them. A worker that dies
    stops the others; the error ends with the tail of the log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the caller's user trainers import
    seen: dict[int, TrialRecord] = {}
    with ExitStack() as files:
        log_file = files.enter_context(open(log_path, "a")) if log_path else None
        procs = []
        for job in jobs:
            spec = tmp / f"worker{job.worker}.json"
            spec.write_text(json.dumps(asdict(job)))
            procs.append(subprocess.Popen([sys.executable, "-m", "kfmlops.tune", "worker", str(spec)], env=env,
                                          stdout=log_file, stderr=log_file))
        try:
            while True:
                codes = [p.poll() for p in procs]
                for record in _finished(study, tuning):
                    if record.number not in seen:
                        seen[record.number] = record
                        if on_trial:
                            on_trial(record)
                failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
                if failed is not None:
                    tail = Path(log_path).read_text()[-3000:] if log_path else "(its log is on stderr above)"
                    raise TuningFailed(f"tuning worker {failed} died (exit {codes[failed]}):\n{tail}")
                if all(code == 0 for code in codes):
                    break
                time.sleep(POLL_SECONDS)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    return [seen[n] for n in sorted(seen)]


def _states() -> dict:
    """Optuna's finished states -> ours."""
    from optuna.trial import TrialState

    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def _finished(study, tuning: TuningConfig) -> list[TrialRecord]:
    return [_record(t, tuning) for t in study.get_trials(deepcopy=False, states=tuple(_states()))]


def _record(frozen, tuning: TuningConfig) -> TrialRecord:
    state = _states()[frozen.state]
    seconds = (frozen.datetime_complete - frozen.datetime_start).total_seconds() if frozen.datetime_complete else 0.0
    return TrialRecord(number=frozen.number, state=state, value=frozen.value if state == "complete" else None,
                       params=decode(frozen.params, tuning), seconds=seconds,
                       steps=sorted((int(k), float(v)) for k, v in frozen.intermediate_values.items()),
                       error=frozen.user_attrs.get("error"))


def worker_main(spec_path: str) -> int:
    """One worker process (``python -m kfmlops.tune worker SPEC``): its share of the trials, until its
    budget or the deadline."""
    job = _Job(**json.loads(Path(spec_path).read_text()))
    os.environ["OMP_NUM_THREADS"] = str(job.threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker {job.worker} %(levelname)s %(name)s: %(message)s")
    import optuna
    import pandas as pd

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuning = TuningConfig.model_validate(job.tuning)
    if not job.n_trials:
        return 0
    frame = pd.read_parquet(job.train_path)
    task, base = Task.from_json(job.task), TrainConfig.model_validate(job.base)
    sampler = optuna.samplers.TPESampler(seed=tuning.seed + job.worker,
                                         n_startup_trials=max(1, min(10, tuning.n_trials // 3)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=tuning.pruner_startup_trials,
                                          n_warmup_steps=tuning.pruner_warmup_steps)
              if tuning.pruner else optuna.pruners.NopPruner())
    study = optuna.load_study(study_name=STUDY, storage=_storage(job.journal), sampler=sampler, pruner=pruner)
    callbacks = [_trial_logger(job, tuning, task)] if job.run_id else []
    timeout = None if job.deadline is None else max(0.0, job.deadline - time.time())
    study.optimize(lambda trial: objective(trial, frame, task, base, tuning, job.threads), n_trials=job.n_trials,
                   timeout=timeout, catch=(Exception,), callbacks=callbacks)
    return 0


def objective(trial, frame, task: Task, base: TrainConfig, tuning: TuningConfig, threads: int) -> float:
    """Fit with the trial's settings on ``frame`` (the train split) and return the validation metric;
    pruned (``optuna.TrialPruned``) when the pruner stops it."""
    import optuna

    from kfmlops.train import fit_frame

    params = suggest(trial, tuning)
    config = trial_config(base, params, threads)
    pruned_at: list[int] = []

    def report(step: int, value: float) -> bool:
        trial.report(value, step)
        if trial.number > 0 and trial.should_prune():  # trial 0, the configured settings, always runs to the end
            pruned_at.append(step)
            return True
        return False

    log.info("tune: trial %d: %s", trial.number, params)
    try:
        with tempfile.TemporaryDirectory(prefix="kfmlops-trial-") as out:
            result = fit_frame(frame, task, config, Path(out) / "model", report=report)
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
        log.warning("tune: trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
        raise
    if pruned_at:
        log.info("tune: trial %d pruned at step %d", trial.number, pruned_at[0])
        raise optuna.TrialPruned(f"pruned at step {pruned_at[0]}")
    log.info("tune: trial %d: val %s %.6f", trial.number, result.metric, result.val_score)
    return result.val_score


def _result(trials: list[TrialRecord], task: Task, tuning: TuningConfig, parallelism: int, seconds: float,
            run_id: str | None) -> TuningResult:
    from kfmlops.train.common import METRIC

    complete = [t for t in trials if t.state == "complete"]
    if not complete:
        errors = [f"trial {t.number}: {t.error}" for t in trials if t.error][:3]
        raise TuningFailed(f"no trial of {len(trials)} completed" + (f": {'; '.join(errors)}" if errors else ""))
    sign = 1 if direction(task.kind) == "maximize" else -1
    best = max(complete, key=lambda t: (sign * t.value, -t.number))  # ties: the earliest, trial 0 first
    default = next((t.value for t in trials if t.number == 0 and t.state == "complete"), None)
    return TuningResult(metric=METRIC[task.kind], direction=direction(task.kind), best_trial=best.number,
                        best_value=float(best.value), default_value=default, best_params=best.params, trials=trials,
                        space=space_json(tuning), space_digest=space_digest(tuning), n_trials=tuning.n_trials,
                        parallelism=parallelism, seconds=seconds, run_id=run_id)


def _start_run(mlflow: MlflowConfig, parent_run_id: str | None, tuning: TuningConfig, task: Task) -> tuple[str, str]:
    from kfmlops.tracking import client, use
    from kfmlops.train.common import METRIC

    experiment_id = use(mlflow)
    tags = {"mlflow.runName": "tune", TAG_PREFIX + "space_digest": space_digest(tuning)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    store = client(mlflow)
    run = store.create_run(experiment_id, tags=tags)
    params = {"n_trials": tuning.n_trials, "parallelism": tuning.parallelism, "timeout_seconds": tuning.timeout_seconds,
              "pruner": tuning.pruner, "seed": tuning.seed, "metric": METRIC[task.kind], "direction": direction(task.kind),
              "space": json.dumps(space_json(tuning))[:6000]}
    from kfmlops.tracking import log_to_run

    log_to_run(mlflow, run.info.run_id, params={f"tuning.{k}": v for k, v in params.items()},
               documents={"tuning_space.json": space_json(tuning)})
    return run.info.run_id, experiment_id


def _end_run(mlflow: MlflowConfig, run_id: str, result: TuningResult | None, error: BaseException | None) -> None:
    from kfmlops.tracking import ERROR_TAG, end_run, log_to_run

    if result is None:
        log_to_run(mlflow, run_id, tags={ERROR_TAG: f"{type(error).__name__}: {error}"[:5000]})
        end_run(mlflow, run_id, "FAILED")
        return
    metrics = {f"best_val_{result.metric}": result.best_value, "trials_complete": result.count("complete"),
               "trials_pruned": result.count("pruned"), "trials_failed": result.count("failed"),
               "seconds": result.seconds}
    if result.default_value is not None:
        metrics[f"default_val_{result.metric}"] = result.default_value
    log_to_run(mlflow, run_id, metrics=metrics, tags=result.tags(), documents={"tuning.json": result.to_json()})
    end_run(mlflow, run_id)


def _trial_logger(job: _Job, tuning: TuningConfig, task: Task):
    """An Optuna callback recording each finished trial as a child run of the search's run."""
    from mlflow.entities import Metric, Param, RunTag

    from kfmlops.tracking import client
    from kfmlops.train.common import METRIC

    store = client(MlflowConfig.model_validate(job.mlflow))
    name = f"val_{METRIC[task.kind]}"
    status = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}

    def log_trial(study, frozen) -> None:
        record = _record(frozen, tuning)
        run = store.create_run(job.experiment_id, tags={"mlflow.parentRunId": job.run_id,
                                                        "mlflow.runName": f"trial-{frozen.number}"})
        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for step, value in record.steps]
        if record.value is not None:
            metrics.append(Metric(name, record.value, now, record.steps[-1][0] + 1 if record.steps else 0))
        metrics.append(Metric("trial_seconds", record.seconds, now, 0))
        tags = [RunTag(TAG_PREFIX + "trial", str(frozen.number)), RunTag(TAG_PREFIX + "state", record.state)]
        if record.error:
            tags.append(RunTag(TAG_PREFIX + "error", record.error))
        store.log_batch(run.info.run_id, metrics=metrics, tags=tags,
                        params=[Param(k, str(v)[:6000]) for k, v in record.params.items()])
        store.set_terminated(run.info.run_id, status[record.state])

    return log_trial


def run_trial(frame, task: Task, config: TrainConfig, *, out=None) -> float:
    """One trial outside a search (a Katib trial): fit, print ``val_<metric>=<value>`` at every
    reported step and once more at the end (Katib's StdOut collector reads these lines; its
    metricStrategy ``latest`` takes the last), and return the final value."""
    from kfmlops.train import METRIC, fit_frame

    name = f"val_{METRIC[task.kind]}"
    out = out or sys.stdout

    def report(step: int, value: float) -> bool:
        print(f"{name}={value:.8g}", file=out, flush=True)
        return False

    with tempfile.TemporaryDirectory(prefix="kfmlops-trial-") as tmp:
        result = fit_frame(frame, task, config, Path(tmp) / "model", report=report)
    print(f"{name}={result.val_score:.8g}", file=out, flush=True)
    return result.val_score


def parse_assignment(text: str) -> tuple[str, Any]:
    """``path=value`` -> (path, value): the value read as JSON when it is JSON, else as text."""
    path, sep, value = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected PATH=VALUE, got {text!r}")
    try:
        return path, json.loads(value)
    except json.JSONDecodeError:
        return path, value


def trial_main(argv: list[str] | None = None) -> int:
    """``python -m kfmlops.tune trial --data JSON --settings JSON --set PATH=VALUE ...``: ingest the data
    spec into a temporary folder and run one trial on its train split (see :func:`run_trial`)."""
    import pandas as pd

    from kfmlops.config import DataSpec, Settings
    from kfmlops.ingest import ingest

    parser = argparse.ArgumentParser(prog="python -m kfmlops.tune trial", description=trial_main.__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=json.loads, help="kfmlops.config.DataSpec as JSON")
    parser.add_argument("--settings", default={}, type=json.loads, help="kfmlops.config.Settings as JSON")
    parser.add_argument("--set", dest="assignments", action="append", default=[], type=parse_assignment,
                        metavar="PATH=VALUE", help="a train setting of this trial (Katib substitutes the values)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.parse(args.settings)
    config = with_train_settings(settings.train, dict(args.assignments))
    config = config.model_copy(update={"processes": 1, "checkpoint_dir": None})
    with tempfile.TemporaryDirectory(prefix="kfmlops-trial-data-") as tmp:
        done = ingest(DataSpec.parse(args.data), settings.ingest, Path(tmp) / "train.parquet", Path(tmp) / "test.parquet")
        frame = pd.read_parquet(done.train_path)  # the test split is written by ingest and never read
    run_trial(frame, Task.from_json(done.task), config)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["trial"]:
        return trial_main(argv[1:])
    if argv[:1] == ["worker"] and len(argv) == 2:
        return worker_main(argv[1])
    print("usage: python -m kfmlops.tune trial --data JSON [--settings JSON] [--set PATH=VALUE ...]\n"
          "       python -m kfmlops.tune worker SPEC  (started by kfmlops.tune.tune)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
