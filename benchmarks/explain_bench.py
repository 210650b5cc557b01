"""Explain benchmark: the explain step's cost on the Adult test split, and the predictor's `:explain` latency.

The models are `serving.py`'s (:func:`serving.build_models`: Adult ingested, a gbdt bundle with the
default settings and a tabular-net of 2 epochs, each registered and signed). Then:

- the explain stage (:func:`kfmlops.explain.explain`) with the default `ExplainConfig` (1000 test
  rows, 3 repeats), sensitive columns sex and race and `fairness.min_group_size` 500 as in
  `pipelines/configs/adult.yaml`: wall seconds, for each model;
- each model behind our predictor on 127.0.0.1: `POST :explain` with 1 and 64 rows (the default
  `explain.serving_max_rows`), sequential requests, p50/p99 latency; `:predict` with 1 row beside it.

    .venv/bin/python benchmarks/explain_bench.py [--requests 100]

Prints a table and writes it as JSON. Numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import build_models  # noqa: E402  (the sibling benchmark's models)

KINDS = ("gbdt", "tabular-net")
SENSITIVE = ["sex", "race"]
MIN_GROUP_SIZE = 500


def explain_seconds(model_dir: Path, test: pd.DataFrame, task) -> tuple[float, dict]:
    from kfmlops import model_contract
    from kfmlops.config import EvaluateConfig, ExplainConfig
    from kfmlops.evaluate import primary_metric
    from kfmlops.explain import explain

    started = time.perf_counter()
    result = explain(model_contract.load(model_dir, task), test, task, primary_metric(task, EvaluateConfig()),
                     ExplainConfig(), SENSITIVE, MIN_GROUP_SIZE)
    return time.perf_counter() - started, result.to_json()


def latency(client: httpx.Client, path: str, body: bytes, requests: int) -> dict[str, float]:
    """p50/p99 milliseconds of ``requests`` sequential POSTs (after 5 warm-up requests)."""
    times = []
    for i in range(requests + 5):
        started = time.perf_counter()
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:300]}")
        if i >= 5:
            times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="timed requests per scenario")
    parser.add_argument("--out", default="explain_bench.json")
    args = parser.parse_args(argv)

    from kfmlops.serving.predictor import records
    from kfmlops.serving.process import PredictorProcess

    work = Path(tempfile.mkdtemp(prefix="kfmlops-explain-bench-"))
    uri, task, features, public, refs = build_models(work)
    test = pd.read_parquet(work / "test.parquet")
    results = []
    for kind in KINDS:
        seconds, document = explain_seconds(work / kind, test, task)
        top = ", ".join(f"{f['feature']} {f['importance']:.4f}" for f in document["features"][:3])
        results.append({"model": kind, "scenario": "explain step (1000 rows, 3 repeats, sex + race)",
                        "seconds": seconds, "top": top, "attributions": document["attributions"]["method"]})
        with PredictorProcess(f"models:/adult-{kind}/{refs[kind].version}", model_name="m", tracking_uri=uri,
                              verify_key=public) as p, httpx.Client(base_url=p.url, timeout=60) as client:
            for verb, rows in ((":predict", 1), (":explain", 1), (":explain", 64)):
                body = orjson.dumps({"instances": records(features.head(rows))})
                results.append({"model": kind, "scenario": f"{verb} {rows} row(s)",
                                **latency(client, f"/v1/models/m{verb}", body, args.requests)})
    print("| model | scenario | seconds | p50 ms | p99 ms |\n|---|---|---:|---:|---:|")
    for r in results:
        cells = [f"{r[k]:.2f}" if k in r else "" for k in ("seconds", "p50_ms", "p99_ms")]
        print(f"| {r['model']} | {r['scenario']} | " + " | ".join(cells) + " |")
    for r in results:
        if "top" in r:
            print(f"{r['model']}: top importances {r['top']}; attributions {r['attributions']}")
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
