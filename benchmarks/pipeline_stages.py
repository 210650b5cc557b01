"""Time the training pipeline on UCI Adult: the whole local kfp.local run, then each stage in-process, per trainer.

    .venv/bin/python benchmarks/pipeline_stages.py [--trainers gbdt,tabular-net] [--pipeline-trainer gbdt]
                                                   [--threads N] [--no-pipeline]

With the settings of ``pipelines/configs/adult.yaml`` in a throwaway KFMLOPS_HOME:

1. the kfp.local run of the training pipeline with ``--pipeline-trainer`` (default: the config's
   ``train.trainer``), every task a subprocess (interpreter start and imports included): ingest,
   validate, train, predict, evaluate, fairness, register, then promote and deploy when both gates
   pass; its wall time, each task's seconds, the test score and the deploy outcome, and the peak
   RSS of the largest task;
2. in-process, after imports: ingest and validate once, then for each trainer of ``--trainers``
   (``train.trainer``: gbdt, tabular-net or a ``package.module:fit``) the stages the pipeline runs
   on its model: train, predict (the test split into the predictions dataset), evaluate (against
   the trivial baseline, the reference linear model, which it fits, and the champion, the version
   step 1 promoted), fairness (by sex and race) and register (signed); each stage's seconds, the trainer's
   validation score (``val_score``) and test figures, and this process's peak RSS.

``--threads N`` sets ``train.gbdt.threads`` and ``train.cpu_threads`` (default: every core). The load
average before and after is printed: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "adult.yaml"))
    parser.add_argument("--trainers", default="gbdt,tabular-net", help="comma-separated train.trainer values")
    parser.add_argument("--pipeline-trainer", default=None, help="the kfp.local run's trainer (default: the config's)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the kfp.local run")
    parser.add_argument("--threads", type=int, default=None,
                        help="train.gbdt.threads and train.cpu_threads (default: the config's, every core)")
    args = parser.parse_args()
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    load_before = os.getloadavg()

    home = Path(tempfile.mkdtemp(prefix="kfmlops-bench-"))
    os.environ["KFMLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from kfmlops.config import PipelineConfig

    config = PipelineConfig.from_yaml(args.config)
    s = config.settings
    if args.threads:
        threads = {"cpu_threads": args.threads, "gbdt": s.train.gbdt.model_copy(update={"threads": args.threads})}
        s = s.model_copy(update={"train": s.train.model_copy(update=threads)})

    # The kfp.local run first, while this process is small: a child's peak RSS counts its parent's
    # at the fork, so after the in-process stages every task would seem to need as much as they did.
    local, pipeline_trainer, parent_rss, child_rss = None, args.pipeline_trainer or s.train.trainer, 0.0, 0.0
    if not args.no_pipeline:
        from kfmlops.local_run import run_pipeline

        settings = s.model_copy(update={"train": s.train.model_copy(update={"trainer": pipeline_trainer})})
        arguments = config.model_copy(update={"settings": settings}).pipeline_arguments()
        parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        local = run_pipeline(arguments, pipeline_root=home / "pipeline_root", verbose=False)
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    started = time.monotonic()
    import pandas as pd

    from kfmlops import evaluate, fairness, register, validate
    from kfmlops.ingest import ingest, normalise_name
    from kfmlops.predict import predict
    from kfmlops.provenance import signing_key
    from kfmlops.tasks import Task
    from kfmlops.tracking import end_run, start_run, use
    from kfmlops.train import train

    imports = time.monotonic() - started
    use(s.mlflow)  # evaluate finds the champion in mlflow's current registry: this run's store
    sensitive = [normalise_name(c) for c in config.data.sensitive_features]  # adult.yaml: sex, race
    times: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t = time.monotonic()
        out = fn(*a, **kw)
        times[name] = time.monotonic() - t
        return out

    data = timed("ingest", ingest, config.data, s.ingest, home / "train.parquet", home / "test.parquet")
    task = Task.from_json(data.task)
    train_df, test_df = pd.read_parquet(data.train_path), pd.read_parquet(data.test_path)
    timed("validate", validate.validate, {"train": train_df, "test": test_df}, s.validate_, task).raise_for_errors()
    key = signing_key(s.provenance)
    outcomes = {}
    for trainer in trainers:
        cfg = s.train.model_copy(update={"trainer": trainer})
        result = timed(f"{trainer}: train", train, data.train_path, task, cfg, home / trainer / "model")
        scored = timed(f"{trainer}: predict", predict, result.model_dir, test_df, task, s.evaluate.decision_threshold)
        blessing = timed(f"{trainer}: evaluate", evaluate.evaluate, task, scored, train_df, test_df, s.evaluate,
                         model_name=s.mlflow.model_name, exclude=tuple(cfg.exclude_features))
        fair = timed(f"{trainer}: fairness", fairness.assess, task, scored, test_df[sensitive], s.fairness)
        run_id = start_run(s.mlflow, run_name=f"bench-{trainer}", tags={})
        lineage = register.Lineage(data.fingerprint, s.digest(), config.data.source,
                                   metrics=blessing.candidate.metrics, primary_metric=blessing.primary_metric,
                                   gates={"evaluate": register.GateVerdict(blessing.blessed, blessing.reasons),
                                          "fairness": register.GateVerdict(fair.passed, fair.reasons)})
        timed(f"{trainer}: register", register.register, result.model_dir, run_id, s.mlflow, lineage,
              test_df.drop(columns=[task.label]).head(5), task=task, signing_key=key)
        end_run(s.mlflow, run_id)
        outcomes[trainer] = (result, blessing, fair)

    threads = f"train.gbdt.threads {s.train.gbdt.threads}, train.cpu_threads {s.train.cpu_threads}"
    print(f"kfmlops pipeline on {Path(args.config).name} ({data.train_rows} train / {data.test_rows} test rows, "
          f"task {task.kind} {task.label!r}), {os.cpu_count()} cores, {threads}; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"  imports of the stages         {imports:6.2f} s")
    for name, seconds in times.items():
        print(f"  stage {name:<23} {seconds:6.2f} s")
    for trainer in trainers:
        total = times["ingest"] + times["validate"] + sum(v for k, v in times.items() if k.startswith(f"{trainer}: "))
        print(f"  stages total, {trainer:<15} {total:6.2f} s")
    for trainer, (result, blessing, fair) in outcomes.items():
        primary = blessing.primary_metric
        speed = f", {result.samples_per_second:,.0f} samples/s" if result.samples_per_second else ""
        print(f"  {trainer}: {result.iterations} {'epochs' if result.framework == 'pytorch' else 'rounds'} "
              f"(best {result.best_iteration + 1}){speed}; validation {result.metric} {result.val_score:.4f}")
        figures = [f"{name} {scores.metrics[primary]:.4f}" for name, scores in
                   (("reference linear", blessing.reference),
                    ("champion", blessing.champion.scores if blessing.champion else None)) if scores]
        metrics = blessing.candidate.metrics
        loss = f", log loss {metrics['log_loss']:.4f}" if "log_loss" in metrics else ""
        eod = [v for k, v in fair.figures().items() if k.endswith(".equalized_odds_difference")]
        gap = f" (largest equalized odds difference {max(eod):.3f})" if eod else ""
        print(f"    test {primary} {metrics[primary]:.4f} ({', '.join(figures) or 'no reference, no champion'}){loss}; "
              f"blessed {blessing.blessed}; fairness passed {fair.passed}{gap}")
    if local is not None:
        print(f"  kfp.local pipeline run, {pipeline_trainer:<9} {local.seconds:6.2f} s ({len(local.steps)} tasks, "
              f"version {local.version})")
        print("    " + ", ".join(f"{step.name} {step.seconds:.1f}" for step in local.steps))
        blessings = sorted(local.pipeline_root.rglob("evaluate/blessing"))
        if blessings:
            blessing = json.loads(blessings[-1].read_text())
            primary = blessing["primary_metric"]
            print(f"    test {primary} {blessing['candidate'][primary]:.4f}; blessed {blessing['blessed']}")
        rollouts = sorted(local.pipeline_root.rglob("deploy/rollout"))
        if rollouts:
            print(f"    deploy: {json.loads(rollouts[-1].read_text())['status']}")
        print(f"    peak RSS: largest task subprocess {child_rss:.0f} MiB (this process was {parent_rss:.0f} MiB "
              "when they started)")
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS of the in-process stages (this process): {self_rss:.0f} MiB")


if __name__ == "__main__":
    main()
