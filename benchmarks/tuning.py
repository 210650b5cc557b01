"""Tuning: gbdt with its default settings against gbdt tuned by :func:`kfmlops.tune.tune` within a
fixed time budget, on Adult (binary) and cps1988 (regression).

    .venv/bin/python benchmarks/tuning.py                       # both sets, 120 s each, 2 workers
    .venv/bin/python benchmarks/tuning.py --sets adult --budget 60

The splits are :mod:`benchmarks.quality`'s (ingest's: ``adult.test`` for Adult, else ingest's seeded
20% test split). The search space is the one in ``pipelines/configs/<set>.yaml`` (``tuning.space``),
searched on the validation slice of the train split with ``--parallelism`` workers until
``--budget`` seconds have passed (no trial starts after it; running ones finish). Both arms are then
fitted once more as the pipeline's train step would (all cores) and scored on the validation slice
and, once, on the test split: the test figure plays no part in the choice.

Prints one row per (data set, arm): the validation metric (ROC AUC; RMSE), the test ROC AUC or
RMSE, the seconds (the search's wall time for the tuned arm), and the trials run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality import ROOT, load, score_row  # noqa: E402  (the same splits and test scoring)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="adult,cps1988")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of search per data set")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-steps", type=int, help="tuning.pruner_warmup_steps (default: the config's)")
    parser.add_argument("--no-pruner", action="store_true", help="tuning.pruner: false")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kfmlops-tuning-bench-"))
    rows = []
    for name in args.sets.split(","):
        split = load(name, work, 0)
        print(f"{name}: {split.task.kind}, {len(split.train):,} train / {len(split.test):,} test rows", flush=True)
        search = {"parallelism": args.parallelism, "timeout_seconds": args.budget, "seed": args.seed,
                  **({"pruner": False} if args.no_pruner else {}),
                  **({"pruner_warmup_steps": args.warmup_steps} if args.warmup_steps is not None else {})}
        rows += compare(split, work, search)
    print("\n| data set | arm | validation metric | validation | test metric | test | seconds | trials |")
    print("|---|---|---|---:|---|---:|---:|---|")
    for row in rows:
        print(f"| {row['data']} | {row['arm']} | {row['val_metric']} | {row['val']:.4f} | {row['test_metric']} | "
              f"{row['test']:.4f} | {row['seconds']:.0f} | {row['trials']} |")
    return 0


def compare(split, work: Path, search: dict) -> list[dict]:
    from kfmlops.config import PipelineConfig, TrainConfig
    from kfmlops.tune import tune

    space = PipelineConfig.from_yaml(ROOT / "pipelines" / "configs" / f"{split.name}.yaml").settings.tuning
    train_path = work / f"{split.name}-train.parquet"
    split.train.to_parquet(train_path)
    default = TrainConfig()
    started = time.monotonic()
    result = tune(train_path, split.task, default, space.model_copy(update={"n_trials": 10_000, **search}),
        log_path=work / f"{split.name}-tune.log",
        on_trial=lambda t: print(f"  trial {t.number} {t.state} {t.value if t.value is not None else ''}", flush=True))
    searched = time.monotonic() - started
    trials = f"{len(result.trials)} ({result.count('complete')} complete, {result.count('pruned')} pruned)"
    print(f"  best trial {result.best_trial}: {result.best_params}", flush=True)
    rows = []
    for arm, config, seconds, count in [("default", default, None, "-"),
                                        ("tuned", result.apply(default), searched, trials)]:
        rows.append(fit_and_score(split, arm, config, work, seconds, count))
    return rows


def fit_and_score(split, arm: str, config, work: Path, seconds: float | None, trials: str) -> dict:
    from kfmlops.train import fit_frame, load_bundle

    started = time.monotonic()
    out = work / f"{split.name}-{arm}"
    fitted = fit_frame(split.train, split.task, config, out)
    fit_seconds = time.monotonic() - started
    bundle = load_bundle(out)
    scores = bundle.scores({c: split.test[c].to_numpy() for c in bundle.features})
    row = score_row(split, arm, scores, fit_seconds)
    test_metric = {"binary": "roc_auc", "multiclass": "macro_f1", "regression": "rmse"}[split.task.kind]
    return {"data": split.name, "arm": arm, "val_metric": fitted.metric, "val": fitted.val_score,
            "test_metric": test_metric, "test": row.primary, "seconds": seconds if seconds is not None else fit_seconds,
            "trials": trials}


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.exit(main())
