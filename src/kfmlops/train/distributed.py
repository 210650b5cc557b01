"""Running the training loop as N ranks: a local launcher and the per-rank entry point.

``python -m kfmlops.train SPEC`` is what every rank runs, SPEC being a :class:`WorkerSpec` as a
JSON file's path or as the JSON itself (so a pod needs no ConfigMap). It is started either by
:func:`launch` (local processes rendezvousing through a file, gloo bound to loopback) or by
``torchrun [--nnodes ... --rdzv-backend c10d --max-restarts R] -m kfmlops.train SPEC`` in cluster
pods (``env://`` rendezvous through torchrun's store; NCCL on GPUs, gloo on CPUs), whose restarts
resume from the checkpoint. Only rank 0 logs to MLflow, writes the model and the result file.

A rank runs the bundle trainers: ``tabular-net`` on any number of ranks, ``gbdt`` on one (XGBoost
uses the node's cores, or its GPU, by itself). A user trainer (``package.module:fit``) runs in the
calling process only (:func:`kfmlops.train.train`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from kfmlops.config import MlflowConfig, TrainConfig
from kfmlops.tasks import Task
from kfmlops.train.common import TrainResult
from kfmlops.train.loop import Dist

BUNDLE_TRAINERS = ("tabular-net", "gbdt")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rank needs; travels as JSON. ``train_path`` is read with pandas (a local path or
    an fsspec URI); ``task`` is :meth:`Task.to_json`; ``model_dir`` receives the bundle;
    ``result_path``, when set, receives rank 0's :class:`TrainResult` as JSON."""

    train_path: str
    task: dict
    config: TrainConfig
    model_dir: str
    mlflow: MlflowConfig | None = None
    run_id: str | None = None
    result_path: str | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["config"] = self.config.model_dump(mode="json")
        data["mlflow"] = self.mlflow.model_dump(mode="json") if self.mlflow else None
        return data

    @classmethod
    def from_json(cls, raw: dict) -> "WorkerSpec":
        raw = dict(raw)
        raw["config"] = TrainConfig.model_validate(raw["config"])
        raw["mlflow"] = MlflowConfig.model_validate(raw["mlflow"]) if raw.get("mlflow") else None
        return cls(**raw)


def check_bundle_trainer(config: TrainConfig, world_size: int) -> None:
    """Refuse a trainer ranks cannot run: a user trainer, or gbdt on more than one rank."""
    if config.trainer not in BUNDLE_TRAINERS:
        raise ValueError(
            f"train.trainer {config.trainer!r} is a user trainer: it runs in the calling process "
            "(kfmlops.train.train), not as training ranks or a cluster job"
        )
    if config.trainer == "gbdt" and world_size > 1:
        raise ValueError(
            f"train.trainer 'gbdt' trains on one rank ({world_size} asked): XGBoost uses every core (train.gbdt.threads) "
            "or the GPU of its one process; set train.processes (or the job's nodes x procs_per_node) to 1"
        )


def run(spec: WorkerSpec, dist: Dist) -> TrainResult:
    """Train this rank's share of the job; rank 0 logs per-epoch (per-round) metrics when a run is given."""
    check_bundle_trainer(spec.config, dist.world_size)
    on_epoch = None
    if dist.is_main and spec.run_id and spec.mlflow:
        from kfmlops.tracking import epoch_logger

        on_epoch = epoch_logger(spec.mlflow, spec.run_id)
    return fit_bundle(pd.read_parquet(spec.train_path), Task.from_json(spec.task), spec.config, spec.model_dir,
                      on_epoch=on_epoch, dist=dist)


def fit_bundle(
    frame: pd.DataFrame,
    task: Task,
    config: TrainConfig,
    model_dir: str | Path,
    *,
    on_epoch=None,
    report=None,
    dist: Dist = Dist(),
) -> TrainResult:
    """This rank's fit of a bundle trainer (``gbdt`` or ``tabular-net``) on ``frame``: ``on_epoch``
    gets per-epoch (per-round) metrics, ``report(step, validation metric)`` stops it when it returns True."""
    if config.trainer == "gbdt":
        from kfmlops.train import gbdt

        return gbdt.fit(frame, task, config, model_dir, on_round=on_epoch, report=report)
    from kfmlops.train.loop import fit

    return fit(frame, task, config, model_dir, on_epoch=on_epoch, report=report, dist=dist)


def launch(spec: WorkerSpec, processes: int) -> TrainResult:
    """Run ``processes`` local ranks (gloo over loopback) and return rank 0's result.

    If any rank fails, the others are stopped and the error names the rank that failed first and
    ends with its stderr; the checkpoint directory keeps the last checkpoint, so a rerun resumes.
    """
    check_bundle_trainer(spec.config, processes)
    with tempfile.TemporaryDirectory(prefix="kfmlops-ddp-") as tmp, contextlib.ExitStack() as files:
        result_path = Path(tmp) / "result.json"
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(replace(spec, result_path=str(result_path)).to_json()))
        env_common = {
            **os.environ,
            "WORLD_SIZE": str(processes),
            "KFMLOPS_INIT_FILE": str(Path(tmp) / "rendezvous"),
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes))),
        }
        logs = [files.enter_context(open(Path(tmp) / f"rank{r}.log", "w+")) for r in range(processes)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "kfmlops.train", str(spec_path)],
                env={**env_common, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=logs[r] if r else None,
                stderr=logs[r],
            )
            for r in range(processes)
        ]
        failed = None  # the first rank seen failing (its peers fail after it, on the broken collective)
        while failed is None:
            codes = [p.poll() for p in procs]
            if all(code == 0 for code in codes):
                break
            failed = next((r for r, code in enumerate(codes) if code not in (None, 0)), None)
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if failed is not None:
            logs[failed].seek(0)
            tail = logs[failed].read()[-3000:]
            raise RuntimeError(f"training rank {failed} of {processes} failed (exit {procs[failed].returncode}):\n{tail}")
        return TrainResult(**json.loads(result_path.read_text()))


def read_spec(arg: str) -> WorkerSpec:
    """A :class:`WorkerSpec` from its JSON text (starting with ``{``) or from a JSON file's path."""
    text = arg if arg.lstrip().startswith("{") else Path(arg).read_text()
    return WorkerSpec.from_json(json.loads(text))


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as torch_dist

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kfmlops.train SPEC  (a WorkerSpec as JSON, or a JSON file's path)", file=sys.stderr)
        return 2
    spec = read_spec(argv[0])
    dist = Dist.from_env()
    logging.basicConfig(
        level=logging.INFO if dist.is_main else logging.WARNING,
        format=f"%(asctime)s rank {dist.rank}/{dist.world_size} %(levelname)s %(message)s",
    )
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if restarts:
        logging.getLogger(__name__).info("train: worker group restart %d; resuming from the checkpoint", restarts)
    if dist.world_size > 1:
        use_cuda = spec.config.device == "cuda" or (spec.config.device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(dist.local_rank)
        init_file = os.environ.get("KFMLOPS_INIT_FILE")
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"file://{init_file}" if init_file else "env://",
            rank=dist.rank,
            world_size=dist.world_size,
        )
    try:
        result = run(spec, dist)
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    if dist.is_main and spec.result_path:
        path = Path(spec.result_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(result)))
    return 0
