"""The training loop: one code path for a single process and for N DDP ranks.

Consumes the train split (a DataFrame with the label as ``0``/``1``) and a
:class:`~kfmlops.config.TrainConfig`; produces a :class:`~kfmlops.train.model.ModelBundle`
directory (written by rank 0) and a :class:`TrainResult`.

Every rank builds the same seeded global batches and takes an equal slice of each
(``batch[rank::world]``), so N ranks follow the same optimisation path as one process (DDP averages
the gradients); dropout is reseeded per epoch and rank, so a run resumed from a checkpoint ends
where an uninterrupted one would. The data lives in tensors on the training device, batches are
index slices (no DataLoader). Rank 0 checkpoints after every epoch (atomic rename) and reports
per-epoch metrics through ``on_epoch``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
from sklearn.metrics import log_loss, roc_auc_score

from kfmlops.config import TrainConfig
from kfmlops.train.model import ModelBundle, NetSpec, TabularNet
from kfmlops.train.preprocess import Preprocessor

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (torchrun's environment variables; 1 rank by default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainResult:
    model_dir: str
    best_epoch: int
    epochs: int
    val_roc_auc: float
    train_rows: int
    val_rows: int
    world_size: int
    device: str
    seconds: float
    samples_per_second: float
    resumed_from_epoch: int | None = None
    history: list[dict] = field(default_factory=list)


def pick_device(choice: str, dist: Dist) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def feature_columns(frame: pd.DataFrame, label: str, exclude: list[str]) -> list[str]:
    unknown = [c for c in exclude if c not in frame.columns]
    if unknown:
        raise ValueError(f"train.exclude_features names columns that are not in the data: {unknown}")
    if label not in frame.columns:
        raise ValueError(f"label column {label!r} is not in the train split; columns: {list(frame.columns)}")
    features = [c for c in frame.columns if c != label and c not in exclude]
    if not features:
        raise ValueError("no feature columns left to train on")
    return features


def fit(
    frame: pd.DataFrame,
    label: str,
    config: TrainConfig,
    model_dir: str | Path,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    dist: Dist = Dist(),
) -> TrainResult:
    started = time.monotonic()
    device = pick_device(config.device, dist)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(frame))
    n_val = max(1, int(len(frame) * config.validation_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]

    features = feature_columns(frame, label, config.exclude_features)
    pre = Preprocessor.fit(frame.iloc[train_idx], features, config.min_category_count)
    spec = NetSpec.for_data(pre, config.hidden_units, config.max_embedding_dim, config.dropout)
    codes, numbers = (torch.from_numpy(a).to(device) for a in pre.transform({c: frame[c] for c in features}))
    target = torch.from_numpy(frame[label].to_numpy(dtype=np.float32)).to(device)
    train_rows = torch.from_numpy(train_idx).to(device)
    y_val = frame[label].to_numpy()[val_idx]

    torch.manual_seed(config.seed)
    net = TabularNet(spec).to(device)
    model = net
    if dist.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = max(1, len(train_idx) // config.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=steps_per_epoch * config.epochs
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    state = _State()
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_FILE if config.checkpoint_dir else None
    if checkpoint and checkpoint.is_file():
        state = _State.restore(checkpoint, net, optimizer, schedule)
        log.info("train: resuming after epoch %d from %s", state.epoch, checkpoint)
    resumed_from = state.epoch if state.epoch >= 0 else None

    for epoch in range(state.epoch + 1, config.epochs):
        epoch_started = time.monotonic()
        model.train()
        torch.manual_seed(config.seed * 1_000_003 + epoch * 1009 + dist.rank)  # dropout stream per epoch and rank
        shuffle = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(config.seed + epoch))
        shuffle = shuffle.to(device)
        totals = torch.zeros(2, device=device)
        for step in range(steps_per_epoch):
            batch = train_rows[shuffle[step * config.batch_size : (step + 1) * config.batch_size]][dist.rank :: dist.world_size]
            with autocast:
                logits = model(codes[batch], numbers[batch])
            loss = loss_fn(logits.float(), target[batch])
            optimizer.zero_grad(set_to_none=True)
            (loss / len(batch)).backward()
            optimizer.step()
            schedule.step()
            totals += torch.stack([loss.detach(), torch.tensor(float(len(batch)), device=device)])
        if dist.world_size > 1:
            torch_dist.all_reduce(totals)
        proba = _predict(net, codes[val_idx], numbers[val_idx])
        metrics = {
            "train_loss": float(totals[0] / totals[1]),
            "val_roc_auc": float(roc_auc_score(y_val, proba)),
            "val_log_loss": float(log_loss(y_val, proba, labels=[0, 1])),
            "epoch_seconds": time.monotonic() - epoch_started,
        }
        state.record(epoch, metrics, net)
        log.info("train: epoch %d/%d %s", epoch + 1, config.epochs, {k: round(v, 4) for k, v in metrics.items()})
        if dist.is_main:
            if checkpoint:
                state.save(checkpoint, net, optimizer, schedule)
            if on_epoch:
                on_epoch(epoch, metrics)

    net.load_state_dict(state.best_weights)
    if dist.is_main:
        ModelBundle(pre, spec, net.cpu(), label).save(model_dir)
    if dist.world_size > 1:
        torch_dist.barrier()
    seconds = time.monotonic() - started
    epochs_run = config.epochs - (resumed_from + 1 if resumed_from is not None else 0)
    return TrainResult(
        model_dir=str(model_dir),
        best_epoch=state.best_epoch,
        epochs=config.epochs,
        val_roc_auc=state.best_auc,
        train_rows=len(train_idx),
        val_rows=n_val,
        world_size=dist.world_size,
        device=str(device),
        seconds=seconds,
        samples_per_second=epochs_run * steps_per_epoch * config.batch_size / seconds,
        resumed_from_epoch=resumed_from,
        history=state.history,
    )


@torch.inference_mode()
def _predict(net: TabularNet, codes: torch.Tensor, numbers: torch.Tensor) -> np.ndarray:
    net.eval()
    return torch.sigmoid(net(codes, numbers).float()).cpu().numpy().astype(np.float64)


@dataclass
class _State:
    """What survives between epochs and across a restart."""

    epoch: int = -1
    best_epoch: int = -1
    best_auc: float = float("-inf")
    best_weights: dict | None = None
    history: list[dict] = field(default_factory=list)

    def record(self, epoch: int, metrics: dict[str, float], net: TabularNet) -> None:
        self.epoch = epoch
        self.history.append({"epoch": epoch, **metrics})
        if metrics["val_roc_auc"] > self.best_auc:
            self.best_epoch, self.best_auc = epoch, metrics["val_roc_auc"]
            self.best_weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

    def save(self, path: Path, net: TabularNet, optimizer, schedule) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        payload = {
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_auc": self.best_auc,
            "best_weights": self.best_weights,
            "history": self.history,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
        }
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def restore(cls, path: Path, net: TabularNet, optimizer, schedule) -> "_State":
        payload = torch.load(path, weights_only=True, map_location="cpu")
        net.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
        return cls(payload["epoch"], payload["best_epoch"], payload["best_auc"], payload["best_weights"], payload["history"])
