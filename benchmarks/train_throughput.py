"""Training throughput and time to a target test AUC: a plain PyTorch DataLoader loop against our engine.

    .venv/bin/python benchmarks/train_throughput.py                      # CPU: 1M rows
    .venv/bin/python benchmarks/train_throughput.py --device cuda --rows 10000000 --batch-size 65536 --compile

Data: UCI Adult ingested as the demo does (train/test Parquet); the train split is resampled with
replacement to ``--rows`` rows ("Adult-shaped data, scaled up"); the test split is ``adult.test``.
Both contenders use the same preprocessing (:class:`~kfmlops.train.preprocess.Preprocessor`, fitted
on the resampled rows) and the same network (:class:`~kfmlops.train.model.TabularNet`, embeddings
+ ``--hidden`` MLP).

- **baseline**: what a user would write: ``TensorDataset`` + ``DataLoader(batch_size=1024,
  shuffle=True)``, each batch moved to the device, AdamW at a constant 1e-3, float32. Test AUC is
  checked every tenth of an epoch (that time is not counted).
- **engine**: :func:`kfmlops.train.loop.fit` (data resident on the device, global batches sliced
  per rank, bf16 autocast on CUDA, one-cycle schedule with the learning rate scaled to the batch,
  optional ``torch.compile``). A run is trained for each epoch count of ``--epochs`` in turn (early
  stopping off: every epoch is run); the first whose model reaches the target is the time to target
  (a whole run: set-up, preprocessing, validation and the final save included).

Prints samples/s (rows trained per second of the step loop), time to ``--target-auc`` and the
test AUC reached, then the engine/baseline ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="train rows after resampling")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=8192, help="the engine's global batch")
    parser.add_argument("--epochs", default="1,2,4", help="the engine's epoch counts to try, in order")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the engine")
    parser.add_argument("--hidden", default="256,256", help="hidden layer widths")
    parser.add_argument("--target-auc", type=float, default=0.90)
    parser.add_argument("--baseline-batch-size", type=int, default=1024)
    parser.add_argument("--baseline-epochs", type=float, default=2.0, help="the most the baseline trains")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    from kfmlops.config import DataSpec, IngestConfig, TrainConfig

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    work = Path(tempfile.mkdtemp(prefix="kfmlops-train-bench-"))
    train, test, task = load_adult(work, args.rows, DataSpec, IngestConfig)
    print(f"device {device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"{len(train):,} train rows (Adult resampled), {len(test):,} test rows (adult.test); MLP {hidden}")

    rows = []
    if not args.skip_baseline:
        rows.append(baseline(train, test, task, hidden, device, args))
    base = TrainConfig(hidden_units=hidden, batch_size=args.batch_size, device=device.type, compile=args.compile,
                       cpu_threads=args.threads)
    rows.append(engine(train, test, task, base, [int(e) for e in args.epochs.split(",")], work, args.target_auc))

    print(f"\n{'':9} {'device':6} {'batch':>6} {'samples/s':>12} {'to AUC ' + str(args.target_auc):>14} "
          f"{'test AUC':>9}  notes")
    for r in rows:
        reached = f"{r['time_to_target']:.1f} s" if r["time_to_target"] is not None else "not reached"
        print(f"{r['name']:9} {device.type:6} {r['batch']:>6} {r['samples_per_second']:>12,.0f} {reached:>14} "
              f"{r['test_auc']:>9.4f}  {r['notes']}")
    if len(rows) == 2:
        b, e = rows
        print(f"\nengine / baseline: {e['samples_per_second'] / b['samples_per_second']:.1f}x samples/s", end="")
        if b["time_to_target"] and e["time_to_target"]:
            print(f", {b['time_to_target'] / e['time_to_target']:.1f}x faster to AUC {args.target_auc}", end="")
        print()
    shutil.rmtree(work, ignore_errors=True)


def load_adult(work: Path, rows: int, DataSpec, IngestConfig):
    """(train resampled to ``rows``, test, task)."""
    from kfmlops.ingest import ingest
    from kfmlops.tasks import Task

    adult = ROOT / "data" / "adult"
    spec = DataSpec(source=str(adult / "adult.data.gz"), test_source=str(adult / "adult.test.gz"), label="Y",
                    positive_labels=[">50K", ">50K."])
    data = ingest(spec, IngestConfig(format="csv", na_values=["?"]), work / "train.parquet", work / "test.parquet")
    train = pd.read_parquet(data.train_path)
    train = train.sample(n=rows, replace=True, random_state=0, ignore_index=True)
    return train, pd.read_parquet(data.test_path), Task.from_json(data.task)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def baseline(train: pd.DataFrame, test: pd.DataFrame, task, hidden: list[int], device: torch.device, args) -> dict:
    from torch.utils.data import DataLoader, TensorDataset

    from kfmlops.train.model import NetSpec, TabularNet
    from kfmlops.train.preprocess import Preprocessor

    started = time.monotonic()
    features = [c for c in train.columns if c != "y"]
    pre = Preprocessor.fit(train, features, 5)
    spec = NetSpec.for_data(pre, hidden, 16, 0.1)
    codes, numbers = pre.transform({c: train[c] for c in features})
    dataset = TensorDataset(torch.from_numpy(codes), torch.from_numpy(numbers),
                            torch.from_numpy(task.encode(train["y"]).astype(np.float32)))
    loader = DataLoader(dataset, batch_size=args.baseline_batch_size, shuffle=True)
    torch.manual_seed(0)
    net = TabularNet(spec).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    logit = lambda c, x: net(c, x)[:, 0]  # noqa: E731 - the network's one output column
    test_codes, test_numbers = (torch.from_numpy(a).to(device) for a in pre.transform({c: test[c] for c in features}))
    test_y = task.encode(test["y"])

    @torch.inference_mode()
    def evaluate() -> float:
        net.eval()
        proba = torch.sigmoid(logit(test_codes, test_numbers)).cpu().numpy()
        net.train()
        return float(roc_auc_score(test_y, proba))

    check_every = max(1, len(loader) // 10)
    budget = int(args.baseline_epochs * len(loader))
    evaluating = step_seconds = 0.0
    trained = steps = 0
    time_to_target = None
    auc = float("nan")
    while steps < budget and time_to_target is None:
        net.train()
        tick = time.monotonic()
        for c, x, y in loader:
            c, x, y = c.to(device), x.to(device), y.to(device)
            loss = loss_fn(logit(c, x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trained += len(y)
            steps += 1
            if steps % check_every == 0 or steps == budget:
                loss.item()  # wait for the device before reading the clock
                step_seconds += time.monotonic() - tick
                paused = time.monotonic()
                auc = evaluate()
                evaluating += time.monotonic() - paused
                if auc >= args.target_auc:
                    time_to_target = time.monotonic() - started - evaluating
                    break
                if steps == budget:
                    break
                tick = time.monotonic()
    return {"name": "baseline", "batch": args.baseline_batch_size, "samples_per_second": trained / step_seconds,
            "time_to_target": time_to_target, "test_auc": auc,
            "notes": f"DataLoader, fp32, {trained / len(train):.2f} epochs"}


def engine(train: pd.DataFrame, test: pd.DataFrame, task, base, epoch_counts: list[int], work: Path,
           target: float) -> dict:
    from kfmlops.train import load_bundle
    from kfmlops.train.loop import batch_rows, fit, peak_learning_rate

    best = None
    for epochs in epoch_counts:
        config = base.model_copy(update={"epochs": epochs, "patience": epochs, "min_steps": 0})
        result = fit(train, task, config, work / f"engine-{epochs}")
        auc = test_auc(load_bundle(work / f"engine-{epochs}"), test)
        steady = [h["samples_per_second"] for h in result.history[1:]] or [result.samples_per_second]
        print(f"  engine, {epochs} epoch(s): {result.seconds:.1f} s, test AUC {auc:.4f}, "
              f"{result.samples_per_second:,.0f} samples/s (after the first epoch {np.median(steady):,.0f})")
        best = {"name": "engine", "batch": config.batch_size, "samples_per_second": float(np.median(steady)),
                "time_to_target": result.seconds if auc >= target else None, "test_auc": auc,
                "notes": f"{'bf16, ' if result.device.startswith('cuda') else ''}"
                         f"{'compiled, ' if config.compile else ''}"
                         f"peak lr {peak_learning_rate(config, batch_rows(config, result.train_rows)):.4f}, "
                         f"{epochs} epoch(s)"}
        if auc >= target:
            break
    return best


def test_auc(bundle, test: pd.DataFrame) -> float:
    scores = bundle.scores({c: test[c].to_numpy() for c in bundle.features})
    return float(roc_auc_score(bundle.task.encode(test["y"]), scores[:, 1]))


if __name__ == "__main__":
    sys.exit(main())
