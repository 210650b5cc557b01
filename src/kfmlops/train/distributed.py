"""Running the training loop as N ranks: a local launcher and the per-rank entry point.

``python -m kfmlops.train SPEC.json`` is what every rank runs, whether started by
:func:`launch` (local processes rendezvousing through a file, gloo bound to loopback) or by
``torchrun --nproc_per_node N -m kfmlops.train SPEC.json`` in a cluster pod (``env://``
rendezvous; NCCL on GPUs, gloo on CPUs). Only rank 0 logs to MLflow, writes the model and the
result file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from kfmlops.config import MlflowConfig, TrainConfig
from kfmlops.train.loop import Dist, TrainResult, fit


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rank needs, as JSON on disk."""

    train_path: str
    label: str
    config: TrainConfig
    model_dir: str
    mlflow: MlflowConfig | None = None
    run_id: str | None = None

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


def run(spec: WorkerSpec, dist: Dist) -> TrainResult:
    """Train this rank's share of the job; rank 0 logs per-epoch metrics when a run is given."""
    on_epoch = None
    if dist.is_main and spec.run_id and spec.mlflow:
        from kfmlops.tracking import epoch_logger

        on_epoch = epoch_logger(spec.mlflow, spec.run_id)
    frame = pd.read_parquet(spec.train_path)
    return fit(frame, spec.label, spec.config, spec.model_dir, on_epoch=on_epoch, dist=dist)


def launch(spec: WorkerSpec, processes: int, *, timeout_s: float | None = None) -> TrainResult:
    """Run ``processes`` local ranks (gloo over loopback) and return rank 0's result.

    If any rank fails, the others are stopped and the error names the rank and ends with its
    stderr; the checkpoint directory keeps the last finished epoch, so a rerun resumes.
    """
    with tempfile.TemporaryDirectory(prefix="kfmlops-ddp-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec.to_json()))
        env_common = {
            **os.environ,
            "WORLD_SIZE": str(processes),
            "KFMLOPS_INIT_FILE": str(Path(tmp) / "rendezvous"),
            "KFMLOPS_RESULT_FILE": str(Path(tmp) / "result.json"),
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes))),
        }
        logs = [open(Path(tmp) / f"rank{r}.log", "w+") for r in range(processes)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "kfmlops.train", str(spec_path)],
                env={**env_common, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=logs[r] if r else None,
                stderr=logs[r],
            )
            for r in range(processes)
        ]
        deadline = time.monotonic() + timeout_s if timeout_s else None
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((r for r, p in enumerate(procs) if p.returncode not in (None, 0)), None)
            if deadline and time.monotonic() > deadline:
                failed = -1
            time.sleep(0.05)
        failed = failed if failed is not None else next((r for r, p in enumerate(procs) if p.returncode != 0), None)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if failed is not None:
            if failed == -1:
                raise TimeoutError(f"distributed training did not finish in {timeout_s} s")
            logs[failed].seek(0)
            tail = logs[failed].read()[-3000:]
            raise RuntimeError(f"training rank {failed} of {processes} failed (exit {procs[failed].returncode}):\n{tail}")
        return TrainResult(**json.loads(Path(env_common["KFMLOPS_RESULT_FILE"]).read_text()))


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as torch_dist

    argv = sys.argv[1:] if argv is None else argv
    spec = WorkerSpec.from_json(json.loads(Path(argv[0]).read_text()))
    dist = Dist.from_env()
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
    if dist.is_main and os.environ.get("KFMLOPS_RESULT_FILE"):
        Path(os.environ["KFMLOPS_RESULT_FILE"]).write_text(json.dumps(asdict(result)))
    return 0
