"""Benchmark: the drift job vs a plain ``Report([DataDriftPreset()]).run(current, reference)``.

Builds an inference log of N rows resampled from UCI Adult (a shifted mix: older people and longer
hours weighted up, so some columns drift and others do not), with P(>50K) from a logistic
regression fitted on the train split as the logged predictions (the binary served output), and a
reference (the train split with the same model's predictions dataset columns: the predicted class
and the class probabilities). Then, each in a fresh process so peak RSS is its own:

- ``job``: ``kfmlops.monitoring.drift.run`` end to end (imports Evidently, reads the log window
  and the reference, drift on every row, quality, performance, Evidently sample reports,
  summary, metrics file);
- ``plain``: the same window and reference as pandas frames (features, the predicted class and
  P(>50K)), then
  ``Report([DataDriftPreset()]).run(current, reference)``; that call is the figure compared (the
  time with imports and loading is printed beside it).

Each is run ``--repeat`` times, interleaved, and the fastest run is reported (the machines are
shared). Prints wall times, peak RSS and the per-column verdict comparison; writes ``results.json``.

    .venv/bin/python benchmarks/drift_bench.py --rows 100000 1000000 --work /tmp/drift-bench
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "adult"
TASK = {"kind": "binary", "label": "y", "classes": ["<=50K", ">50K"]}  # kfmlops.tasks.Task.to_json()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)  # windows end at 12:00, logged rows fall in 00:00-12:00


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(work: Path, rows: int) -> Path:
    """The log, reference and configs for one size; returns the drift config path."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    from kfmlops.config import DataSpec, IngestConfig
    from kfmlops.ingest import ingest
    from kfmlops.model_contract import predictions
    from kfmlops.monitoring.lineage import TASK_KEY
    from kfmlops.tasks import Task
    from kfmlops.monitoring.store import INPUT_PREFIX, TIMESTAMP, commit_table, hour_key, import_ground_truth, partition_dir

    base = work / f"rows-{rows}"
    if (base / "drift.yaml").exists():
        return base / "drift.yaml"
    base.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(source=str(ROOT / "data/adult/adult.data.gz"), test_source=str(ROOT / "data/adult/adult.test.gz"),
                    label="Y", positive_labels=[">50K", ">50K."], sensitive_features=["sex", "race"])
    ingest(spec, IngestConfig(format="csv", na_values=["?"]), base / "train.parquet", base / "test.parquet")
    train, test = pd.read_parquet(base / "train.parquet"), pd.read_parquet(base / "test.parquet")
    features = [c for c in train.columns if c != "y"]
    cats = [c for c in features if train[c].dtype == object]

    def design(frame):
        x = pd.get_dummies(frame[features].fillna({c: "?" for c in cats}), columns=cats, dtype=float)
        return x.reindex(columns=columns, fill_value=0.0)

    columns = list(pd.get_dummies(train[features].fillna({c: "?" for c in cats}), columns=cats, dtype=float).columns)
    x = design(train)
    mean, std = x.mean(), x.std() + 1e-9
    model = LogisticRegression(max_iter=500).fit((x - mean) / std, train["y"])

    scores = model.predict_proba((x - mean) / std)  # classes_ in sorted order: TASK's
    reference = pa.Table.from_pandas(pd.concat([train, predictions(Task.from_json(TASK), scores)], axis=1),
                                     preserve_index=False)
    pq.write_table(reference.replace_schema_metadata({TASK_KEY: json.dumps(TASK).encode()}),
                   base / "reference.parquet")

    pool = pd.concat([train, test], ignore_index=True)
    weights = np.where(pool.age > 50, 6.0, 1.0) * np.where(pool.hours_per_week > 45, 3.0, 1.0)
    rng = np.random.default_rng(rows)
    sample = pool.iloc[rng.choice(len(pool), rows, p=weights / weights.sum())].reset_index(drop=True)
    probabilities = np.empty(rows)
    for lo in range(0, rows, 200_000):
        chunk = sample.iloc[lo:lo + 200_000]
        probabilities[lo:lo + len(chunk)] = model.predict_proba((design(chunk) - mean) / std)[:, 1]
    seconds = rng.uniform(0, 12 * 3600, rows)
    timestamps = (pd.Timestamp(NOW - timedelta(hours=12)) + pd.to_timedelta(np.sort(seconds), unit="s")).floor("us")
    labelled = rng.random(rows) < 0.3  # ground truth for 30% of the rows
    table = pa.table({
        "request_id": pa.array([f"req-{i:08d}" for i in range(rows)]),
        "row_index": pa.array(np.zeros(rows, np.int32)),
        "timestamp": pa.array(timestamps, TIMESTAMP),
        "model_version": pa.array(["1"] * rows),
        "endpoint": pa.array(["default"] * rows),
        "prediction": pa.array(probabilities),
        "output_json": pa.nulls(rows, pa.string()),
        **{INPUT_PREFIX + c: pa.Array.from_pandas(sample[c]) for c in features},
    })
    hour_of_row = timestamps.floor("h")
    for start in hour_of_row.unique():
        part = table.filter(pa.array(np.asarray(hour_of_row == start)))
        for lo in range(0, part.num_rows, 20_000):  # one file per sink commit of 20k rows
            commit_table(part.slice(lo, 20_000), partition_dir(base / "log", MODEL, hour_key(start.to_pydatetime())))
    truth = pd.DataFrame({"request_id": table["request_id"].to_pandas()[labelled], "label": sample["y"][labelled]})
    truth.to_csv(base / "ground_truth.csv", index=False)
    import_ground_truth(base / "log", str(base / "ground_truth.csv"))
    (base / "training.yaml").write_text(json.dumps({
        "data": spec.model_dump(mode="json"), "ingest": {"format": "csv", "na_values": ["?"]},
    }))
    (base / "drift.yaml").write_text(json.dumps({
        "training_config": "training.yaml", "log_root": "log",
        "window": {"model": MODEL, "hours": 12, "settle_minutes": 0},
        "output_dir": "out", "reference": {"uri": "reference.parquet"},
        "policy": {"min_rows": 1000}, "metrics": {"textfile": "out/drift.prom"},
        "trigger": {"ledger_dir": "ledger", "data_dir": "fresh"},
    }))
    return base / "drift.yaml"


def measure_job(config_path: Path) -> dict:
    entered = time.perf_counter()
    from kfmlops.monitoring.config import DriftConfig
    from kfmlops.monitoring.drift import run

    started = time.perf_counter()
    summary = run(DriftConfig.from_yaml(config_path), NOW)
    wall = time.perf_counter() - started
    verdicts = {c["column"]: [c["method"], c["score"], c["drifted"]] for c in summary["drift"]["columns"]}
    for p in summary["prediction_drift"]["columns"]:
        verdicts[p["column"]] = [p["method"], p["score"], p["drifted"]]
    return {"wall_s": wall, "process_s": time.perf_counter() - entered, "peak_rss_mib": _peak_rss_mib(),
            "timings_s": summary["timings_s"], "verdicts": verdicts, "rows": summary["rows"]}


def measure_plain(config_path: Path) -> dict:
    entered = time.perf_counter()
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from kfmlops.monitoring.store import read_window
    from kfmlops.monitoring.window import current_from_log
    from kfmlops.tasks import Task

    base = config_path.parent
    reference = pd.read_parquet(base / "reference.parquet").drop(columns=["y", "proba:<=50K"])
    window = current_from_log(read_window(base / "log", MODEL, NOW - timedelta(hours=12), NOW), Task.from_json(TASK), 0.5)
    current = window.select(list(reference.columns)).to_pandas()
    del window
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current, reference)
    wall = time.perf_counter() - started
    metrics = json.loads(snapshot.json())["metrics"]
    verdicts = {
        m["config"]["column"]: [m["config"]["method"], m["value"], m["value"] >= m["config"]["threshold"]]
        for m in metrics if m["metric_name"].startswith("ValueDrift")
    }
    return {"wall_s": wall, "process_s": time.perf_counter() - entered, "peak_rss_mib": _peak_rss_mib(),
            "verdicts": verdicts, "rows": len(current)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kfmlops-drift-bench"))
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process runs of each; the fastest is reported")
    parser.add_argument("--measure", choices=["job", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        result = (measure_job if args.measure == "job" else measure_plain)(args.config)
        print(json.dumps(result))
        return 0

    results = {}
    for rows in args.rows:
        config = prepare(args.work, rows)
        runs = {"job": [], "plain": []}
        for _ in range(args.repeat):  # interleaved, so load from other processes hits both alike
            for what in runs:
                out = subprocess.run([sys.executable, __file__, "--measure", what, "--config", str(config)],
                                     capture_output=True, text=True, check=True)
                runs[what].append(json.loads(out.stdout.strip().splitlines()[-1]))
        job, plain = (min(runs[what], key=lambda r: r["wall_s"]) for what in ("job", "plain"))
        for what, result in (("job", job), ("plain", plain)):
            result["all_wall_s"] = [round(r["wall_s"], 2) for r in runs[what]]
        agree = {c: job["verdicts"][c][2] == plain["verdicts"][c][2] for c in plain["verdicts"]}
        max_score_diff = max(abs(job["verdicts"][c][1] - plain["verdicts"][c][1]) for c in plain["verdicts"])
        results[rows] = {"job": job, "plain": plain, "verdicts_agree": all(agree.values()),
                         "max_abs_score_difference": max_score_diff, "speedup": plain["wall_s"] / job["wall_s"]}
        print(f"\n{rows:,} logged rows (job read {job['rows']:,})")
        print(f"  job   : {job['wall_s']:6.2f} s (runs {job['all_wall_s']})  peak RSS {job['peak_rss_mib']:5.0f} MiB  "
              f"end to end in a fresh process: {job['timings_s']}")
        print(f"  plain : {plain['wall_s']:6.2f} s (runs {plain['all_wall_s']})  peak RSS {plain['peak_rss_mib']:5.0f} MiB  "
              f"(the DataDriftPreset call alone; {plain['process_s']:.1f} s with imports and loading the frames)")
        print(f"  speed-up {plain['wall_s'] / job['wall_s']:.1f}x; verdicts agree on {sum(agree.values())}/{len(agree)} "
              f"columns; max |score difference| {max_score_diff:.2e}")
        print(f"  {'column':<16} {'method':<14} {'job score':>11} {'plain score':>11}  job  plain")
        for column, (method, score, drifted) in plain["verdicts"].items():
            j = job["verdicts"][column]
            print(f"  {column:<16} {j[0]:<14} {j[1]:11.6f} {score:11.6f}  {'D' if j[2] else '-':>3}  {'D' if drifted else '-':>5}")
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
