"""Time the training pipeline on UCI Adult, stage by stage, and the whole local kfp.local run.

    .venv/bin/python benchmarks/pipeline_stages.py

Prints seconds per stage (the stage functions in-process, after imports), the kfp.local run's wall
time (each task a subprocess: interpreter start and imports included), the test ROC AUC, and peak
RSS of this process and of the largest task subprocess. Uses a throwaway KFMLOPS_HOME.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="kfmlops-bench-"))
    os.environ["KFMLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    import mlflow
    import pandas as pd

    from kfmlops import evaluate, fairness, register, tracking, validate
    from kfmlops.config import PipelineConfig
    from kfmlops.ingest import ingest
    from kfmlops.local_run import run_pipeline
    from kfmlops.train import ModelBundle, train

    config = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / "adult.yaml")
    s = config.settings
    imports = time.monotonic() - started
    times: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t = time.monotonic()
        out = fn(*args, **kwargs)
        times[name] = time.monotonic() - t
        return out

    data = timed("ingest", ingest, config.data, s.ingest, home / "train.parquet", home / "test.parquet")
    train_df, test_df = pd.read_parquet(data.train_path), pd.read_parquet(data.test_path)
    timed("validate", validate.validate, {"train": train_df, "test": test_df}, s.validate_, data.label)
    result = timed("train", train, data.train_path, data.label, s.train, home / "model")
    features = test_df.drop(columns=[data.label])
    proba = timed("evaluate", lambda: ModelBundle.load(home / "model").predict_proba(
        {c: features[c].to_numpy() for c in features.columns}))
    scores = evaluate.score(test_df[data.label].to_numpy(), proba)
    timed("fairness", fairness.assess, test_df[data.label].to_numpy(), (proba >= 0.5).astype(int),
          test_df[["sex", "race"]], s.fairness)
    tracking.use(s.mlflow)
    with mlflow.start_run() as run:
        pass
    lineage = register.Lineage(data.fingerprint, s.digest(), config.data.source)
    timed("register", register.register, home / "model", run.info.run_id, s.mlflow, lineage, features.head(5))

    t = time.monotonic()
    local = run_pipeline(config.pipeline_arguments(), pipeline_root=home / "pipeline_root")
    pipeline_wall = time.monotonic() - t

    print(f"kfmlops pipeline on UCI Adult ({data.train_rows} train / {data.test_rows} test rows), {os.cpu_count()} cores")
    print(f"  imports                    {imports:6.2f} s")
    for name, seconds in times.items():
        print(f"  stage {name:<20} {seconds:6.2f} s")
    print(f"  stages total               {sum(times.values()):6.2f} s")
    print(f"  train: {result.samples_per_second:,.0f} samples/s, {s.train.epochs} epochs, best epoch {result.best_epoch + 1}")
    print(f"  test ROC AUC               {scores.roc_auc:.4f}")
    print(f"  kfp.local pipeline run     {pipeline_wall:6.2f} s (7 tasks, version {local.version})")
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  peak RSS: this process {self_rss:.0f} MiB, largest task subprocess {child_rss:.0f} MiB")


if __name__ == "__main__":
    main()
