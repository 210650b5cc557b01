"""An example of kfmlops monitoring end to end on this machine: drift detection and retraining.

``python examples/drift_demo.py`` (``make drift-demo``) serves the champion of the demo model
(``pipelines/configs/adult.yaml``, registered as ``adult-income``; when there is none the training
pipeline runs first) with the real KServe predictor on a loopback port, and replays the Adult test
split through it in two phases of one hour each:

1. the test split as it is, then its labels (the model's class names, ``<=50K`` / ``>50K``): the
   drift job finds no drift and starts nothing;
2. a sample of it skewed the way real populations shift (older people working longer hours, more
   managers and professionals, fewer service, cleaning and clerical jobs), then its labels: the
   drift job fires and submits the training pipeline through the local submitter (``kfp.local``)
   on the served model's training data plus the window's labelled rows; the new version passes
   (or fails) the same gates on the same test rows.

Logging: the predictor does not log its traffic itself (on a cluster, KServe's inference logger
sends every request and response as CloudEvents to ``kfmlops sink``). The demo plays the logger's
part: it posts V1 requests of ``--batch-rows`` rows over HTTP and turns each request/response pair
into the sink's records with :func:`kfmlops.monitoring.sink.records_for`, stamped with the served
version, appended to the :class:`~kfmlops.monitoring.store.InferenceLog` under
``$KFMLOPS_HOME/inference-log``. Ground truth (request id, row -> label) is imported with
:func:`~kfmlops.monitoring.store.import_ground_truth`, as ``kfmlops sink import-labels`` does.

Clock: the phases' traffic is timestamped in two consecutive whole hours H1, H2, and each drift
job runs as of the end of its hour plus the window's settle time (``--now`` of ``kfmlops
drift``). H1 is two hours before now; when an earlier demo already used those hours, or
retrained less than the policy's cool-down (and 24 h, the daily cap) before phase 2's job would
run, it is the first hour after that (simulated future hours), so a repeated demo never shares a
window with an earlier one and its retrain is not blocked by the earlier one's. ``--start`` sets
H1.

Output: progress lines, then per phase the rows checked, the drift share, the drifted columns
with their scores, prediction drift (the predicted class and P(>50K)), the performance figures on
the labelled rows, the decision and why; the retraining run's summary (:func:`kfmlops.local_run.summary`: metrics,
fairness, each gate's verdict, the new version and its aliases); a recap. kfp.local's task logs
go to ``training.log`` / ``phase-2/pipeline.log`` (one progress line per finished task).
Everything this run writes is under ``$KFMLOPS_HOME/drift/demo/<H1>/``: per phase the drift
job's ``drift.yaml`` (rerun it with ``kfmlops drift --config ... --now ...``: the ledger refuses
a second retrain of the same window), ``summary.json``, ``report.html`` and Evidently's reports,
``labels.parquet``; ``test.parquet`` (the replayed test split), ``demo.json`` (what ran, where)
and ``predictor.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfmlops.config import PipelineConfig
from kfmlops.monitoring.config import DriftConfig, InferenceLogConfig
from kfmlops.tasks import Task
from kfmlops.typed import ConfigError

DEFAULT_DRIFT_CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "adult-drift.yaml"
HOUR = timedelta(hours=1)
# Phase 2's population: weights on the test split's rows (sampled without replacement).
OLDER, LONGER_HOURS = (45, 4.0), (45, 3.0)  # (at least, weight)
MORE_OCCUPATIONS = (("Exec-managerial", "Prof-specialty"), 2.5)
FEWER_OCCUPATIONS = (("Other-service", "Handlers-cleaners", "Adm-clerical"), 0.5)


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why."""


class _Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.out = None  # the terminal while stdout goes elsewhere

    def __call__(self, message: str) -> None:
        print(f"[drift-demo {time.monotonic() - self.started:6.1f}s] {message}", file=self.out or sys.stdout, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


# ---------------------------------------------------------------- data


def served_test_split(training: PipelineConfig, work: Path) -> tuple[pd.DataFrame, Task]:
    """The served model's test split as the pipeline ingests it (normalised columns, canonical
    labels: the class names) and the label's task."""
    from kfmlops.ingest import ingest

    result = ingest(training.data, training.settings.ingest, work / "train.parquet", work / "test.parquet")
    frame = pd.read_parquet(result.test_path)
    (work / "train.parquet").unlink(missing_ok=True)
    return frame, Task.from_json(result.task)


def shifted_sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """``rows`` rows of ``frame`` drawn without replacement with weights that favour older people,
    longer hours and managerial/professional jobs over service, cleaning and clerical ones: the
    population shifts, every row keeps its true label."""
    occupation = frame["occupation"].fillna("")
    weights = (
        np.where(frame["age"] >= OLDER[0], OLDER[1], 1.0)
        * np.where(frame["hours_per_week"] >= LONGER_HOURS[0], LONGER_HOURS[1], 1.0)
        * np.where(occupation.isin(MORE_OCCUPATIONS[0]), MORE_OCCUPATIONS[1],
                   np.where(occupation.isin(FEWER_OCCUPATIONS[0]), FEWER_OCCUPATIONS[1], 1.0))
    )
    rows = min(rows, len(frame))
    picked = np.random.default_rng(seed).choice(len(frame), rows, replace=False, p=weights / weights.sum())
    return frame.iloc[np.sort(picked)].reset_index(drop=True)


def _name(uri: str | None) -> str:
    return Path(uri).name if uri else "cut from the training data"


def _describe_population(frame: pd.DataFrame, task: Task) -> str:
    top = frame["occupation"].value_counts(normalize=True).head(3)
    jobs = ", ".join(f"{k} {v:.0%}" for k, v in top.items())
    return (f"mean age {frame['age'].mean():.1f}, mean hours/week {frame['hours_per_week'].mean():.1f}, "
            f"top occupations {jobs}; {(frame[task.label] == task.positive).mean():.1%} are {task.positive}")


# ---------------------------------------------------------------- serving and logging


def replay(
    http, model: str, version: str, frame: pd.DataFrame, label: str, hour: datetime, log, batch_rows: int
) -> tuple[int, pd.DataFrame]:
    """Send ``frame``'s features as V1 requests of ``batch_rows`` rows, timestamped across ``hour``,
    and log each request/response pair as the KServe logger + ``kfmlops sink`` would; returns the
    number of requests and the ground truth (request_id, row_index, label) for the logged rows."""
    from kfmlops.monitoring.sink import REQUEST, RESPONSE, InferenceEvent, records_for
    from kfmlops.serving.predictor import records

    features = frame.drop(columns=[label])
    batches = range(0, len(frame), batch_rows)
    step = HOUR / max(len(batches), 1)
    truth_ids, truth_rows = [], []
    for n, start in enumerate(batches):
        request = {"instances": records(features.iloc[start:start + batch_rows])}
        response = http.post(f"/v1/models/{model}:predict", json=request)
        if response.status_code != 200:
            raise DemoError(f"the predictor answered {response.status_code} to rows {start}..: {response.text[:500]}")
        request_id, at = uuid.uuid4().hex, hour + step * (n + 0.5)
        pair = [InferenceEvent(request_id, kind, model, "default", at, body)
                for kind, body in ((REQUEST, request), (RESPONSE, response.json()))]
        logged = [replace(r, model_version=version) for r in records_for(*pair)]  # a V1 response names no version
        if len(logged) != len(request["instances"]):
            raise DemoError(f"{len(request['instances'])} rows sent, {len(logged)} predictions logged")
        log.append(logged)
        truth_ids += [request_id] * len(logged)
        truth_rows += [r.row_index for r in logged]
    truth = pd.DataFrame({"request_id": truth_ids, "row_index": np.asarray(truth_rows, np.int32),
                          "label": frame[label].to_numpy()})  # canonical: the model's class names
    return len(batches), truth


# ---------------------------------------------------------------- clock


def _floor_hour(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def first_hour(config: DriftConfig, ledger_dir: Path, start: datetime | None) -> datetime:
    """H1 (see the module docstring)."""
    from kfmlops.monitoring.policy import Ledger
    from kfmlops.monitoring.store import partition_dir

    if start is not None:
        return _floor_hour(start if start.tzinfo else start.replace(tzinfo=timezone.utc))
    settle = timedelta(minutes=config.window.settle_minutes)
    h1 = _floor_hour(datetime.now(timezone.utc) - settle) - 2 * HOUR
    model_dir = partition_dir(config.log_root, config.model_name, "x").parent
    used = [datetime.strptime(p.name.removeprefix("hour="), "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
            for p in model_dir.glob("hour=*")] if model_dir.is_dir() else []
    if used:
        h1 = max(h1, max(used) + HOUR)
    claims = Ledger(ledger_dir).entries(config.model_name)
    if claims:  # phase 2's job runs at H1 + 2 h + settle: past the cool-down and the daily cap
        wait = timedelta(hours=max(config.policy.cooldown_hours, 24.0))
        earliest = datetime.fromtimestamp(max(c.claimed_at for c in claims), timezone.utc) + wait - 2 * HOUR - settle
        h1 = max(h1, _floor_hour(earliest) + (HOUR if earliest != _floor_hour(earliest) else timedelta(0)))
    return h1


# ---------------------------------------------------------------- registry


def ensure_champion(training: PipelineConfig, say: _Progress, log_path: Path) -> str:
    """The champion's version of the demo model; runs the training pipeline first when there is none."""
    from kfmlops.local_run import run_pipeline
    from kfmlops.register import CHAMPION, aliases
    from kfmlops.tracking import tracking_uri

    cfg = training.settings.mlflow
    champion = aliases(cfg).get(CHAMPION)
    if champion is not None:
        say(f"serving {cfg.model_name} v{champion}, the champion in {tracking_uri(cfg)}")
        return champion
    say(f"{cfg.model_name} has no champion in {tracking_uri(cfg)}: running the training pipeline first "
        f"(kfmlops run, through kfp.local; task logs: {log_path}) ...")
    run = run_pipeline(training.pipeline_arguments())
    champion = aliases(cfg).get(CHAMPION)
    if champion is None:
        raise DemoError(f"the training pipeline registered v{run.version} but it failed a gate: there is no champion to "
                        f"serve (see `kfmlops run` and the reports in {run.pipeline_root})")
    say(f"trained and promoted {cfg.model_name} v{run.version} in {run.seconds:.0f} s ({run.pipeline_root})")
    return champion


def version_trained_on(training: PipelineConfig, source: str) -> str | None:
    """The newest version of the demo model whose ``kfmlops.train_data`` lineage tag is ``source``."""
    from mlflow.tracking import MlflowClient

    from kfmlops.monitoring.lineage import TRAIN_DATA_TAG
    from kfmlops.tracking import tracking_uri

    cfg = training.settings.mlflow
    versions = MlflowClient(tracking_uri(cfg)).search_model_versions(f"name='{cfg.model_name}'")
    found = [int(v.version) for v in versions if v.tags.get(TRAIN_DATA_TAG) == source]
    return str(max(found)) if found else None


# ---------------------------------------------------------------- drift job


def phase_config(base: DriftConfig, log_root: Path, out: Path) -> DriftConfig:
    """The drift job of one phase: the demo's log, a one-hour window, reports in ``out``; written
    to ``out/drift.yaml`` so that ``kfmlops drift --config`` can rerun it."""
    import yaml

    config = base.model_copy(update={
        "log_root": str(log_root), "output_dir": str(out), "window": base.window.model_copy(update={"hours": 1}),
    })
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return config


def describe(summary: dict[str, Any], config: DriftConfig) -> list[str]:
    """A drift run's summary as readable lines."""
    policy = config.policy
    decision = summary["decision"]
    served, reference = summary.get("served") or {}, summary.get("reference") or {}
    window = summary["window"]
    lines = [f"  window            {window.get('start')} .. {window.get('end')} (model {summary['model']})",
             f"  rows checked      {summary['rows']:,} ({summary['labelled_rows']:,} labelled)"]
    if served:
        lines.append(f"  served            v{served['version']} ({served['model_uri']})")
    if reference:
        lines.append(f"  reference         {reference['rows']:,} rows: the served version's training data ({reference['uri']})")
    drift = summary.get("drift")
    if drift:
        share = "n/a" if drift["share"] is None else f"{drift['share']:.0%}"
        lines.append(f"  drift share       {share} of {drift['checked']} features drifted "
                     f"(dataset drift at {policy.drift_share:.0%} or more)")
        columns = sorted(drift["columns"], key=lambda c: -c["score"] if c["method"] != "ks" else c["score"])
        drifted = [c for c in columns if c["drifted"]]
        if drifted:
            lines.append("  drifted columns   " + _column(drifted[0]))
            lines += ["                    " + _column(c) for c in drifted[1:]]
        else:
            closest = ", ".join(_column(c) for c in columns[:2])
            lines.append(f"  drifted columns   none (highest: {closest})")
        prediction = summary.get("prediction_drift")
        if prediction:
            lines.append(f"  prediction drift  {'DRIFTED' if prediction['drifted'] else 'none'}: "
                         + _column(prediction["columns"][0]))
            lines += ["                    " + _column(c) for c in prediction["columns"][1:]]
        else:
            lines.append(f"  prediction drift  not computed: {summary.get('prediction_drift_note')}")
        scores = summary.get("performance")
        if scores:
            figures = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
            lines.append(f"  labelled rows     {figures}")
    if decision["fire"]:
        lines.append("  decision          RETRAIN: the policy fired")
        lines += [f"                    {r}" for r in decision["reasons"]]
    elif decision["signals"]:
        lines.append(f"  decision          no retrain: signals on ({', '.join(decision['signals'])}) but blocked")
        lines += [f"                    {r}" for r in decision["reasons"] + decision["blocked"]]
    elif decision["blocked"]:
        lines.append("  decision          no retrain: " + "; ".join(decision["blocked"]))
    else:
        lines.append(f"  decision          no retrain: no signal on (signals {', '.join(policy.signals)}; "
                     f"dataset drift needs {policy.drift_share:.0%} of the features)")
    retrain = summary.get("retrain") or {}
    if retrain:
        run = f", run {retrain['run_id']}" if retrain.get("run_id") else ""
        lines.append(f"  retraining        {retrain['status']}{run}" + (f": {retrain['error']}" if retrain.get("error") else ""))
        if retrain.get("rows"):
            lines.append(f"  fresh data        {retrain['rows']:,} rows (training data + the window's labelled rows): {retrain['source']}")
        if (Path(config.output_dir) / "pipeline.log").exists():
            lines.append(f"  pipeline log      {Path(config.output_dir) / 'pipeline.log'}")
    lines.append(f"  reports           {summary['reports']['html']}")
    lines += [f"                    {p}" for k, p in summary["reports"].items() if k != "html"]
    return lines


def _column(c: dict[str, Any]) -> str:
    relation = ">=" if c["score"] >= c["threshold"] else "<"
    return f"{c['column']:<15} {c['method']} {c['score']:.3f} ({relation} {c['threshold']:g})"


def _gates(training: PipelineConfig, version: str) -> dict[str, Any]:
    """A version's gate verdicts (validate from its run's validation.json, evaluate and fairness from
    its tags), its aliases and its deploy status."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from kfmlops.register import DEPLOY_STATUS_TAG, TAG_PREFIX, aliases
    from kfmlops.tracking import tracking_uri

    cfg = training.settings.mlflow
    uri = tracking_uri(cfg)
    mv = MlflowClient(uri).get_model_version(cfg.model_name, version)
    mlflow.set_tracking_uri(uri)
    gates = {"validate": bool(mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/validation.json")["passed"])}
    prefix, suffix = TAG_PREFIX + "gate.", ".passed"
    gates |= {k[len(prefix):-len(suffix)]: v == "true" for k, v in sorted(mv.tags.items())
              if k.startswith(prefix) and k.endswith(suffix)}
    return {"gates": gates, "aliases": sorted(a for a, v in aliases(cfg).items() if v == str(version)),
            "deploy": mv.tags.get(DEPLOY_STATUS_TAG)}


# ---------------------------------------------------------------- quiet kfp.local

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_DONE = re.compile(r"Task '?([\w.-]+)'? finished with status (\w+)")


class _TaskLog(io.TextIOBase):
    """Where kfp.local's output goes while a pipeline runs: everything to ``path`` (opened on the
    first write), one progress line per finished task to the terminal."""

    def __init__(self, path: Path, say: _Progress):
        self.path, self.say = path, say
        self._file = None
        self._line = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(text)
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            done = _TASK_DONE.search(_ANSI.sub("", line))
            if done:
                self.say(f"  kfp.local task {done[1]}: {done[2]}")
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:  # a stray later write reopens the file: never an error on a closed stream
        if self._file is not None:
            self._file.close()
            self._file = None


@contextlib.contextmanager
def _pipeline_output_to(path: Path, say: _Progress):
    """Send stdout and stderr (kfp.local's task logs, MLflow's progress bars) to ``path`` meanwhile."""
    sink = _TaskLog(path, say)
    real = sys.stdout
    say.out = real
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        say.out = None
        sink.close()


# ---------------------------------------------------------------- the demo


def run_demo(args: argparse.Namespace) -> int:
    """The demo (see the module docstring); 0 when phase 2 started a retraining run that registered a version."""
    import httpx

    from kfmlops import run_summary
    from kfmlops.monitoring.drift import run as drift_run
    from kfmlops.monitoring.store import InferenceLog, import_ground_truth
    from kfmlops.monitoring.trigger import submitter_for
    from kfmlops.serving.process import PredictorProcess
    from kfmlops.tracking import kfmlops_home, tracking_uri

    say = _Progress()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per replayed request
    home = kfmlops_home()
    base = DriftConfig.from_yaml(args.drift_config)
    if base.window is None:
        raise ConfigError(f"{args.drift_config}: the demo needs a window of the inference log (log_root and window)")
    training = PipelineConfig.from_yaml(base.training_config)
    cfg = training.settings.mlflow
    model = base.model_name
    log_root = home / "inference-log"
    base = base.model_copy(update={"log_root": str(log_root)})
    ledger_dir = Path(base.trigger.ledger_dir or home / "drift" / "ledger")
    h1 = first_hour(base, ledger_dir, args.start)
    h2 = h1 + HOUR
    settle = timedelta(minutes=base.window.settle_minutes)
    demo_dir = home / "drift" / "demo" / h1.strftime("%Y%m%dT%H")
    demo_dir.mkdir(parents=True, exist_ok=True)
    later = " (simulated hours, after the earlier demo's)" if h1 > datetime.now(timezone.utc) - 2 * HOUR else ""
    say(f"KFMLOPS_HOME {home}; drift config {args.drift_config}")
    say(f"phase 1's traffic is timestamped in hour {h1:%Y-%m-%d %H:00} UTC, phase 2's in {h2:%H:00}{later}")

    with _pipeline_output_to(demo_dir / "training.log", say):
        version = ensure_champion(training, say, demo_dir / "training.log")
    test, task = served_test_split(training, demo_dir)
    shifted = shifted_sample(test, args.rows, args.seed)
    phases = [
        ("phase-1", f"Phase 1: the served model's test split as it is ({_name(training.data.test_source)})", test, h1),
        ("phase-2", "Phase 2: a shifted population (older, longer hours, more managers and professionals)", shifted, h2),
    ]
    submit = submitter_for(base.trigger)
    record: dict[str, Any] = {"model": model, "served_version": version, "inference_log": str(log_root),
                              "ledger": str(ledger_dir), "phases": []}
    summaries: list[tuple[dict[str, Any], DriftConfig]] = []
    predictor = PredictorProcess(f"models:/{cfg.model_name}/{version}", model_name=model, tracking_uri=tracking_uri(cfg),
                                 log_path=demo_dir / "predictor.log")
    say(f"starting the KServe predictor (kfmlops serve) for {cfg.model_name} v{version} on 127.0.0.1 ...")
    predictor.start()
    record["predictor_url"] = predictor.url
    try:
        say(f"predictor ready at {predictor.url} (log {predictor.log_path})")
        say("the predictor does not log its traffic: the demo posts V1 requests and writes each request/response pair "
            f"as KServe's logger + kfmlops sink would (sink.records_for), into the inference log {log_root}")
        with InferenceLog(InferenceLogConfig(root=str(log_root))) as inference_log, \
                httpx.Client(base_url=predictor.url, timeout=60.0) as http:
            for i, (name, title, frame, hour) in enumerate(phases):
                out = demo_dir / name
                config = phase_config(base, log_root, out)
                print(f"\n{title}: {len(frame):,} rows in hour {hour:%Y-%m-%d %H:00} UTC", flush=True)
                print(f"  population        {_describe_population(frame, task)}", flush=True)
                t = time.monotonic()
                requests, truth = replay(http, model, version, frame, task.label, hour, inference_log, args.batch_rows)
                inference_log.flush()
                say(f"{name}: {len(frame):,} rows sent in {requests} V1 requests of up to {args.batch_rows} rows "
                    f"({time.monotonic() - t:.1f} s), {len(truth):,} predictions logged")
                truth.to_parquet(out / "labels.parquet", index=False)
                labelled = import_ground_truth(log_root, str(out / "labels.parquet"))
                say(f"{name}: imported {labelled:,} ground-truth labels (request id, row -> label)")
                if i == len(phases) - 1:  # a retrain runs its own processes: free the cores
                    predictor.stop()
                    say("predictor stopped")
                now = hour + HOUR + settle
                say(f"{name}: running the drift job as of {now:%Y-%m-%d %H:%M} UTC ...")
                if i == len(phases) - 1:
                    say(f"  when the policy fires it runs the training pipeline through kfp.local (a minute or two); "
                        f"task logs: {out / 'pipeline.log'}")
                with _pipeline_output_to(out / "pipeline.log", say):
                    summary = drift_run(config, now, submit)
                print("\n".join(describe(summary, config)), flush=True)
                summaries.append((summary, config))
                record["phases"].append({
                    "name": name, "hour": hour.isoformat(), "now": now.isoformat(), "rows": len(frame),
                    "requests": requests, "config": str(out / "drift.yaml"), "summary": str(out / "summary.json"),
                    "fired": summary["decision"]["fire"], "retrain": summary.get("retrain") or {},
                })
    finally:
        predictor.stop()

    retrain = record["phases"][-1]["retrain"]
    code, new = 0, None
    if retrain.get("submitted"):
        new = version_trained_on(training, retrain["source"])
        root = home / "pipeline_root" / retrain["run_id"]
        record["retrain"] = {"run_id": retrain["run_id"], "version": new, "pipeline_root": str(root)}
        print(f"\nThe retraining run {retrain['run_id']} (local submitter: kfp.local), on the fresh data\n", flush=True)
        if new is None:
            print(f"  no model version was registered from {retrain['source']}; see {demo_dir / 'phase-2' / 'pipeline.log'}")
            code = 1
        else:
            seconds = summaries[-1][0]["timings_s"].get("retrain", 0.0)
            with _pipeline_output_to(demo_dir / "phase-2" / "pipeline.log", say):  # MLflow's download progress bars
                summary = run_summary.collect(training.settings.mlflow, new, seconds=seconds, steps=[],
                                              run_dir=root, logs=None)
                text = run_summary.render(summary)
            print(text, flush=True)
            with _pipeline_output_to(demo_dir / "phase-2" / "pipeline.log", say):
                record["retrain"] |= _gates(training, new)
    elif retrain.get("status") == "failed":
        code = 1
    (demo_dir / "demo.json").write_text(json.dumps(record, indent=1, default=str))

    print("\nDrift demo: what happened", flush=True)
    for (summary, config), phase in zip(summaries, record["phases"]):
        drift, decision = summary.get("drift") or {}, summary["decision"]
        share = "n/a" if drift.get("share") is None else f"{drift['share']:.0%}"
        prediction = summary.get("prediction_drift") or {}
        verdict = ("RETRAIN (" + ", ".join(decision["signals"]) + ")") if decision["fire"] else (
            "no retrain" + (f" (blocked: {'; '.join(decision['blocked'])})" if decision["blocked"] else ": no signal"))
        print(f"  {phase['name']}  {summary['rows']:>6,} rows, {share} of features drifted, prediction drift "
              f"{'yes' if prediction.get('drifted') else 'no'}: {verdict}")
    if new is not None:
        released = record["retrain"]
        verdicts = ", ".join(f"{g} {'PASS' if p else 'FAIL'}" for g, p in released["gates"].items())
        deploy = f"; deploy {released['deploy']}" if released["deploy"] else ""
        print(f"  retrained {cfg.model_name} v{new} (served: v{version}): gates {verdicts}; "
              f"aliases {', '.join(released['aliases']) or 'none'}{deploy}")
    elif retrain:
        print(f"  retraining: {retrain.get('status')} {retrain.get('error') or ''}".rstrip())
    else:
        print("  phase 2 started no retraining run (see its decision above)")
    phase2 = record["phases"][-1]
    print("\nWhere the drift demo's things are")
    print(f"  this demo           {demo_dir}")
    print("                      demo.json; per phase drift.yaml, summary.json, report.html, evidently*.html, pipeline.log")
    print(f"  inference log       {log_root}")
    print(f"  retraining ledger   {ledger_dir}")
    print("  rerun phase 2's drift job (the ledger refuses a second retrain for that window):")
    print(f"    kfmlops drift --config {phase2['config']} --now {phase2['now']}")
    say(f"done in {say.elapsed:.0f} s")
    return code


def main(argv: list[str] | None = None) -> int:
    """``python examples/drift_demo.py [--rows N] [--batch-rows N] [--seed N] [--start ISO-HOUR] [--drift-config PATH]``."""
    parser = argparse.ArgumentParser(prog="examples/drift_demo.py", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("--drift-config", default=str(DEFAULT_DRIFT_CONFIG),
                        help="drift YAML; its training_config is the served model's pipeline config (default: the Adult demo's)")
    parser.add_argument("--rows", type=int, default=4000, help="rows in phase 2's shifted sample (default 4000)")
    parser.add_argument("--batch-rows", type=int, default=100, help="rows per V1 request (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of phase 2's sample (default 0)")
    parser.add_argument("--start", type=datetime.fromisoformat, help="phase 1's hour, UTC (default: see the module docstring)")
    args = parser.parse_args(argv)
    from kfmlops.local_run import PipelineFailed
    from kfmlops.serving.process import PredictorStartError

    try:
        return run_demo(args)
    except (ConfigError, DemoError, PipelineFailed, PredictorStartError) as exc:
        print(f"drift demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
