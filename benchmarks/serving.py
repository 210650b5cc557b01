"""Serving benchmark: our KServe predictor (V1, V2) on each kind of model, against `mlflow models serve` and MLServer.

The models are built here on Adult (binary): ingest, then a tabular-net bundle (2 epochs), a gbdt
bundle and a scikit-learn pipeline (one-hot + logistic regression, the "any MLflow model" path),
each registered (signed) as its own model and promoted. All servers run on 127.0.0.1, one at a
time, and take the same load from `wrk` (Debian's package) with a fixed request body per scenario:

- 1 row per request at concurrency 1 and 16;
- 100 rows per request at concurrency 4.

Our predictor serves every kind (V1; V2 and micro-batching for tabular-net); `mlflow models serve`
and MLServer (mlserver-mlflow) serve the tabular-net model. Each server's answer is checked
against the model's own scores (:func:`kfmlops.model_contract.load`) before it is loaded. Prints a
table (requests/s, rows/s, p50/p99 latency, non-2xx answers) and writes it as JSON.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--mlserver-venv /tmp/mlserver-venv]

MLServer lives in its own virtualenv (it pins uvloop and pandas apart from this project):

    python3.11 -m venv /tmp/mlserver-venv
    /tmp/mlserver-venv/bin/pip install mlserver==1.7.1 mlserver-mlflow==1.7.1 uvloop==0.21.0 \
        "pandas>=2.2,<3" mlflow==3.17.2 torch==2.13.0 "pyarrow>=25,<26"
    /tmp/mlserver-venv/bin/pip install --no-deps .   # the model's pyfunc imports kfmlops

Without that venv the MLServer rows are skipped, and the table says so. Numbers depend on the
machine and on what else runs on it: the load generator shares the cores with the server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [(1, 1), (1, 16), (100, 4)]  # (rows per request, concurrency)
KINDS = ("tabular-net", "gbdt", "sklearn")


def build_models(work: Path):
    """Ingest Adult; train and register one model of each kind (``adult-<kind>``), each promoted."""
    from kfmlops.config import DataSpec, IngestConfig, MlflowConfig, TrainConfig
    from kfmlops.ingest import ingest
    from kfmlops.provenance import generate_keypair
    from kfmlops.register import GateVerdict, Lineage, promote, register
    from kfmlops.tasks import Task
    from kfmlops.tracking import start_run
    from kfmlops.train import train

    spec = DataSpec(
        source=str(ROOT / "data/adult/adult.data.gz"),
        test_source=str(ROOT / "data/adult/adult.test.gz"),
        label="Y",
        positive_labels=[">50K", ">50K."],
        sensitive_features=["sex", "race"],
    )
    done = ingest(spec, IngestConfig(format="csv", na_values=["?"]), work / "train.parquet", work / "test.parquet")
    task = Task.from_json(done.task)
    features = pd.read_parquet(work / "test.parquet").drop(columns=[task.label])
    private, public = generate_keypair()
    lineage = Lineage("bench", "bench", "adult", gates={"bench": GateVerdict(True, ["benchmark model"])})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    refs = {}
    for kind in KINDS:
        out = work / kind
        if kind == "sklearn":
            sklearn_model(work / "train.parquet", task, out)
        else:
            train(work / "train.parquet", task, TrainConfig(trainer=kind, epochs=2), out)
        config = MlflowConfig(tracking_uri=uri, experiment="bench", model_name=f"adult-{kind}")
        refs[kind] = register(out, start_run(config, kind, {}), config, lineage, features, task=task, signing_key=private)
        promote(config, refs[kind].version)
    return uri, task, features, public, refs


def sklearn_model(train_path: Path, task, out: Path) -> None:
    """One-hot categories and scaled numbers into a logistic regression, saved as an MLflow sklearn model."""
    from sklearn.compose import make_column_selector, make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from kfmlops.model_contract import ModelInfo, save_estimator

    frame = pd.read_parquet(train_path)
    x = frame.drop(columns=[task.label])
    encode = make_column_transformer(
        (StandardScaler(), make_column_selector(dtype_include="number")),
        (make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")),
         make_column_selector(dtype_exclude="number")),
    )
    estimator = make_pipeline(encode, LogisticRegression(max_iter=1000)).fit(x, frame[task.label])
    save_estimator(estimator, out, ModelInfo(task, list(x.columns), "sklearn"), x)


def wrk(url: str, body: bytes, concurrency: int, duration: int, work: Path) -> dict:
    """One wrk run: a POST of ``body`` in a loop; returns req/s, p50/p99 (ms) and non-2xx count."""
    body_path = work / f"body-{len(body)}.json"
    body_path.write_bytes(body)
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_path}", "rb"); wrk.body = f:read("*a"); f:close()\n'
    )
    threads = min(2, concurrency)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def wait_http(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def v2_inputs(frame: pd.DataFrame, string_parameters: bool) -> list[dict]:
    inputs = []
    for column in frame.columns:
        text = frame[column].dtype == object
        tensor = {
            "name": column,
            "shape": [len(frame)],
            "datatype": "BYTES" if text else "INT64",
            "data": frame[column].tolist(),
        }
        if text and string_parameters:
            tensor["parameters"] = {"content_type": "str"}
        inputs.append(tensor)
    return inputs


def bodies(rows: pd.DataFrame) -> dict[str, bytes]:
    """One request body per protocol for ``rows``."""
    from kfmlops.serving.predictor import records

    return {
        "v1": orjson.dumps({"instances": records(rows)}),
        "v2": orjson.dumps({"inputs": v2_inputs(rows, False)}),
        "mlflow": orjson.dumps({"dataframe_records": records(rows)}),
        "mlserver": orjson.dumps({"parameters": {"content_type": "pd"}, "inputs": v2_inputs(rows, True)}),
    }


def predictions(kind: str, body: dict, positive: str) -> list[float]:
    """P(positive) per row from each server's answer (MLflow's pyfunc answers ``proba:<class>`` columns)."""
    if kind == "v1":
        return body["predictions"]
    if kind == "mlflow":
        return [row[f"proba:{positive}"] for row in body["predictions"]]
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    return outputs.get("probability") or outputs[f"proba:{positive}"]


def run_server(name, kind, start, url, ready_url, rows_by_n, expected, positive, duration, work, results):
    process = start()
    try:
        wait_http(ready_url, process)
        check = httpx.post(url, content=bodies(rows_by_n[100])[kind], headers={"content-type": "application/json"}, timeout=60)
        check.raise_for_status()
        diff = float(np.max(np.abs(np.asarray(predictions(kind, check.json(), positive), dtype=float) - expected)))
        print(f"{name}: ready; max |prediction - pyfunc| on 100 rows = {diff:.2g}", flush=True)
        wrk(url, bodies(rows_by_n[1])[kind], 4, 2, work)  # warm-up
        for n, concurrency in SCENARIOS:
            figures = wrk(url, bodies(rows_by_n[n])[kind], concurrency, duration, work)
            figures |= {"server": name, "rows_per_request": n, "concurrency": concurrency,
                        "rows_per_s": figures["requests_per_s"] * n, "max_abs_diff": diff}
            results.append(figures)
            print(f"  {n:>3} rows c={concurrency:<2} {figures['requests_per_s']:8.1f} req/s "
                  f"{figures['rows_per_s']:9.0f} rows/s p50 {figures['p50_ms']:7.2f} ms p99 {figures['p99_ms']:7.2f} ms "
                  f"non-2xx {figures['non_2xx']}", flush=True)
    finally:
        stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--mlserver-venv", default="/tmp/mlserver-venv")
    parser.add_argument("--out", default="benchmarks/serving-results.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "ours-batching", "mlflow", "mlserver", *KINDS])
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    from kfmlops.serving.process import free_port

    work = Path(tempfile.mkdtemp(prefix="kfmlops-serving-bench-"))
    tracking_uri, task, features, public_key, refs = build_models(work)
    complete = features.dropna().reset_index(drop=True)  # every server's codec takes these rows
    rows_by_n = {1: complete.head(1), 100: complete.head(100)}
    from kfmlops import model_contract

    expected = {kind: model_contract.load(ref.model_uri).scores(rows_by_n[100])[:, 1] for kind, ref in refs.items()}
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "KFMLOPS_VERIFY_KEY": public_key.decode(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow execs uvicorn
    results: list[dict] = []
    skipped: list[str] = []
    positive = task.positive

    def ours(model: str, batching: bool):
        port = free_port()
        serving = json.dumps({"micro_batching": batching})
        command = [sys.executable, "-m", "kfmlops.serving.server", "--model-uri", f"models:/{model}@champion",
                   "--tracking-uri", tracking_uri, "--http-port", str(port), "--serving", serving]
        start = lambda: subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: E731
        return port, start

    for kind, batching in (("tabular-net", False), ("tabular-net", True), ("gbdt", False), ("sklearn", False)):
        label = "ours-batching" if batching else "ours"
        if label in args.skip or kind in args.skip:
            continue
        model = refs[kind].name
        port, start = ours(model, batching)
        base = f"http://127.0.0.1:{port}"
        suffix = " + micro-batching" if batching else ""
        ready = f"{base}/v2/models/{model}/ready"
        run_server(f"kfmlops {kind} V1{suffix}", "v1", start, f"{base}/v1/models/{model}:predict", ready, rows_by_n,
                   expected[kind], positive, args.duration, work, results)
        if kind == "tabular-net" and not batching:
            run_server(f"kfmlops {kind} V2", "v2", start, f"{base}/v2/models/{model}/infer", ready, rows_by_n,
                       expected[kind], positive, args.duration, work, results)

    net = refs["tabular-net"]
    if "mlflow" not in args.skip:
        port = free_port()
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", net.model_uri, "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(port)]
        start = lambda: subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: E731
        base = f"http://127.0.0.1:{port}"
        run_server("mlflow models serve (tabular-net)", "mlflow", start, f"{base}/invocations", f"{base}/ping", rows_by_n,
                   expected["tabular-net"], positive, args.duration, work, results)

    mlserver = Path(args.mlserver_venv) / "bin" / "mlserver"
    if "mlserver" in args.skip:
        pass
    elif not mlserver.exists():
        skipped.append(f"MLServer: no {mlserver} (see the module docstring to install it)")
    else:
        import mlflow.artifacts

        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=net.model_uri, dst_path=str(work / "mlserver-model"), tracking_uri=tracking_uri))
        repo = work / "mlserver"
        (repo / net.name).mkdir(parents=True)
        port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        (repo / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        }))
        (repo / net.name / "model-settings.json").write_text(json.dumps({
            "name": net.name, "implementation": "mlserver_mlflow.MLflowRuntime", "parameters": {"uri": str(model_dir)},
        }))
        start = lambda: subprocess.Popen([str(mlserver), "start", str(repo)], env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: E731
        base = f"http://127.0.0.1:{port}"
        run_server("MLServer (mlserver-mlflow, tabular-net)", "mlserver", start, f"{base}/v2/models/{net.name}/infer",
                   f"{base}/v2/models/{net.name}/ready", rows_by_n, expected["tabular-net"], positive, args.duration, work,
                   results)

    print("\n| server | rows/req | concurrency | req/s | rows/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['server']} | {r['rows_per_request']} | {r['concurrency']} | {r['requests_per_s']:.0f} | "
              f"{r['rows_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} |")
    for line in skipped:
        print(f"skipped: {line}")
    Path(args.out).write_text(json.dumps({"duration_s": args.duration, "results": results, "skipped": skipped}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
