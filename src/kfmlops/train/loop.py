"""The training loop: one code path for a single process and for N DDP ranks.

Consumes the train split (a DataFrame with the label as ``0``/``1``) and a
:class:`~kfmlops.config.TrainConfig`; produces a :class:`~kfmlops.train.model.ModelBundle`
directory (written by rank 0) and a :class:`TrainResult`.

- **Batches.** Every epoch, every rank draws the same seeded permutation of the train rows, cuts it
  into global batches of ``batch_size`` rows and takes its slice of each (``batch[rank::world]``):
  a distributed sampler without a DataLoader. DDP averages the gradients and the loss is scaled so
  that the average is the global batch's mean, so N ranks follow one process's optimisation path.
- **Data on the device.** The encoded columns live in tensors on the training device when they fit
  (on a GPU: half its free memory), so a step is an index gather, never a host-to-device copy;
  otherwise they stay on the host and each batch is copied over.
- **GPU speed.** bf16 autocast (bf16 has float32's exponent range, so no loss scaler is needed),
  fused AdamW, optional ``torch.compile``; the peak learning rate follows the batch size
  (``lr_scaling``) under a one-cycle schedule with warm-up.
- **Fault tolerance.** Rank 0 writes a checkpoint (atomic rename) after every epoch and every
  ``checkpoint_every_steps`` steps: model, optimizer and schedule state, the position (epoch, step:
  an epoch's permutation is a function of seed and epoch), the epoch's loss so far, the best weights
  and the history. Dropout is reseeded every step from (seed, epoch, step, rank), so no random state
  needs saving. A restarted run (a rerun, or ``torchrun --max-restarts``) resumes there and ends
  with the model an uninterrupted run ends with; a checkpoint of a run with other settings or
  other data is refused.
- Rank 0 reports per-epoch metrics through ``on_epoch``; the train loss is summed over all ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
from sklearn.metrics import log_loss, roc_auc_score

from kfmlops.config import TrainConfig
from kfmlops.durable import atomic_path
from kfmlops.train.model import ModelBundle, NetSpec, TabularNet
from kfmlops.train.preprocess import Preprocessor

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
# Settings that leave the optimisation path unchanged: a checkpoint written under other values of
# these still resumes (a job restarted on fewer ranks, or on another device, carries on).
RESUMABLE_ACROSS = {"processes", "device", "checkpoint_dir", "checkpoint_every_steps", "compile", "cpu_threads"}
PREDICT_CHUNK = 65_536


class TrainDataError(ValueError):
    """The train split cannot be trained on; the message names the column or class at fault."""


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
    """What one call of :func:`fit` did. ``samples_per_second`` counts the rows all ranks trained on
    per second of the step loop (set-up and validation excluded); ``seconds`` is the whole call.
    ``resumed_from_epoch``/``resumed_from_step``: where a resumed run picked up (None: a fresh start)."""

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
    resumed_from_step: int | None = None
    history: list[dict] = field(default_factory=list)


def pick_device(choice: str, dist: Dist) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def peak_learning_rate(config: TrainConfig) -> float:
    """``learning_rate`` scaled from ``lr_base_batch_size`` to ``batch_size`` by ``lr_scaling``."""
    ratio = config.batch_size / config.lr_base_batch_size
    return config.learning_rate * {"sqrt": ratio**0.5, "linear": ratio, "none": 1.0}[config.lr_scaling]


def feature_columns(frame: pd.DataFrame, label: str, exclude: list[str]) -> list[str]:
    unknown = [c for c in exclude if c not in frame.columns]
    if unknown:
        raise TrainDataError(
            f"train.exclude_features names columns that are not in the data: {unknown}; it has {list(frame.columns)}"
        )
    if label not in frame.columns:
        raise TrainDataError(f"label column {label!r} is not in the train split; columns: {list(frame.columns)}")
    features = [c for c in frame.columns if c != label and c not in exclude]
    if not features:
        raise TrainDataError("no feature columns left to train on: train.exclude_features excludes them all")
    return features


def validation_split(labels: np.ndarray, fraction: float, seed: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (validation rows, training rows) of a 0/1 label column: each class gives
    ``round(n * fraction)`` rows, at least 1 and at most ``n - 1``, to the validation slice. A class
    with fewer than 2 rows is a TrainDataError naming it."""
    rng = np.random.default_rng(seed)
    val, fit_rows = [], []
    for cls, name in ((1, "positive"), (0, "negative")):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        if len(rows) < 2:
            raise TrainDataError(
                f"label {label!r}: class {name} ({cls}) has {len(rows)} row(s) in the train split of {len(labels)}; "
                "training needs at least 2 of each class (one to fit, one to validate): add rows of that class"
            )
        n = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        val.append(rows[:n])
        fit_rows.append(rows[n:])
    return rng.permutation(np.concatenate(val)), rng.permutation(np.concatenate(fit_rows))


def fit(
    frame: pd.DataFrame,
    label: str,
    config: TrainConfig,
    model_dir: str | Path,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    dist: Dist = Dist(),
) -> TrainResult:
    """Train on ``frame`` as rank ``dist.rank`` of ``dist.world_size`` (the process group, when
    there is more than one rank, is already initialised); rank 0 writes the bundle to ``model_dir``."""
    device = pick_device(config.device, dist)
    with _cpu_threads(config.cpu_threads if device.type == "cpu" else None):
        return _fit(frame, label, config, Path(model_dir), device, on_epoch, dist)


def _fit(frame, label, config, model_dir, device, on_epoch, dist) -> TrainResult:
    started = time.monotonic()
    features = feature_columns(frame, label, config.exclude_features)
    val_idx, train_idx = validation_split(frame[label].to_numpy(), config.validation_fraction, config.seed, label)
    n_train, n_val = len(train_idx), len(val_idx)

    pre = Preprocessor.fit(frame.iloc[train_idx], features, config.min_category_count)
    spec = NetSpec.for_data(pre, config.hidden_units, config.max_embedding_dim, config.dropout)
    codes, numbers = (torch.from_numpy(a) for a in pre.transform({c: frame[c] for c in features}))
    target = torch.from_numpy(frame[label].to_numpy(dtype=np.float32))
    # What the data looks like to the model (fitted preprocessing, labels in order): a checkpoint
    # of a run on other data is refused.
    data_digest = hashlib.sha256(json.dumps(pre.to_json()).encode() + target.numpy().tobytes()).hexdigest()
    home = _data_home(device, codes, numbers, target)
    codes, numbers, target = codes.to(home), numbers.to(home), target.to(home)
    train_rows, val_rows = torch.from_numpy(train_idx).to(home), torch.from_numpy(val_idx).to(home)
    y_val = frame[label].to_numpy()[val_idx]

    torch.manual_seed(config.seed)
    net = TabularNet(spec).to(device)
    lr = peak_learning_rate(config)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=lr, weight_decay=config.weight_decay, fused=device.type == "cuda"
    )
    batch_size = min(config.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps_per_epoch * config.epochs)

    progress = _Progress()
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_FILE if config.checkpoint_dir else None
    fingerprint = {**config.model_dump(mode="json", exclude=RESUMABLE_ACROSS), "data": data_digest}
    if checkpoint and checkpoint.is_file():
        progress = _Progress.restore(checkpoint, fingerprint, net, optimizer, schedule)
        log.info("train: resuming at epoch %d step %d from %s", progress.epoch, progress.step, checkpoint)
    _check_same_position(progress, dist, device)
    resumed = (progress.epoch, progress.step) if (progress.epoch, progress.step) != (0, 0) else (None, None)

    model = net
    if dist.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    every = config.checkpoint_every_steps if checkpoint else None
    dropout_rng = torch.cuda.default_generators[device.index] if device.type == "cuda" else torch.default_generator
    trained, step_seconds = 0, 0.0

    for epoch in range(progress.epoch, config.epochs):
        epoch_started = time.monotonic()
        first_step = progress.step
        model.train()
        shuffle = torch.randperm(n_train, generator=torch.Generator(home).manual_seed(config.seed + epoch), device=home)
        loss_sum = torch.zeros((), device=device)  # this rank's, since the last all-reduce
        for step in range(first_step, steps_per_epoch):
            dropout_rng.manual_seed(_dropout_seed(config.seed, epoch, step, dist.rank))
            rows = train_rows[shuffle[step * batch_size : (step + 1) * batch_size]][dist.rank :: dist.world_size]
            with autocast:
                logits = model(codes[rows].to(device), numbers[rows].to(device))
            loss = loss_fn(logits.float(), target[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            (loss * (dist.world_size / batch_size)).backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach()
            if every and (step + 1) % every == 0 and step + 1 < steps_per_epoch:
                progress.add_steps(step + 1, _sum_over_ranks(loss_sum, dist))
                loss_sum.zero_()
                if dist.is_main:
                    progress.save(checkpoint, fingerprint, net, optimizer, schedule)
        progress.add_steps(steps_per_epoch, _sum_over_ranks(loss_sum, dist))  # the all-reduce waits for the GPU
        seconds = time.monotonic() - epoch_started
        trained += (steps_per_epoch - first_step) * batch_size
        step_seconds += seconds

        proba = _predict(net, codes, numbers, val_rows, device)
        metrics = {
            "train_loss": progress.epoch_loss / (steps_per_epoch * batch_size),
            "val_roc_auc": float(roc_auc_score(y_val, proba)),
            "val_log_loss": float(log_loss(y_val, proba, labels=[0, 1])),
            "epoch_seconds": time.monotonic() - epoch_started,
            "samples_per_second": (steps_per_epoch - first_step) * batch_size / seconds,
        }
        progress.end_epoch(metrics, net)
        log.info("train: epoch %d/%d %s", epoch + 1, config.epochs, {k: round(v, 4) for k, v in metrics.items()})
        if dist.is_main:
            if checkpoint:
                progress.save(checkpoint, fingerprint, net, optimizer, schedule)
            if on_epoch:
                on_epoch(epoch, metrics)

    net.load_state_dict(progress.best_weights)
    if dist.is_main:
        ModelBundle(pre, spec, net.cpu(), label).save(model_dir)
    if dist.world_size > 1:
        torch_dist.barrier()
    return TrainResult(
        model_dir=str(model_dir),
        best_epoch=progress.best_epoch,
        epochs=config.epochs,
        val_roc_auc=progress.best_auc,
        train_rows=n_train,
        val_rows=n_val,
        world_size=dist.world_size,
        device=str(device),
        seconds=time.monotonic() - started,
        samples_per_second=trained / step_seconds if step_seconds else 0.0,
        resumed_from_epoch=resumed[0],
        resumed_from_step=resumed[1],
        history=progress.history,
    )


@contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _data_home(device: torch.device, *tensors: torch.Tensor) -> torch.device:
    """Where the encoded data lives: the training device when it fits in half its free memory."""
    if device.type != "cuda":
        return device
    needed = sum(t.nbytes for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    if needed <= free // 2:
        return device
    log.warning("train: %.1f GiB of data does not fit on %s (%.1f GiB free): batches are copied from the host",
                needed / 2**30, device, free / 2**30)
    return torch.device("cpu")


def _dropout_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (((seed * 1_000_003 + epoch) * 1_000_033 + step) * 1_009 + rank) % 2**63


def _sum_over_ranks(value: torch.Tensor, dist: Dist) -> float:
    if dist.world_size > 1:
        value = value.clone()
        torch_dist.all_reduce(value)
    return float(value)


def _check_same_position(progress: "_Progress", dist: Dist, device: torch.device) -> None:
    """Every rank must resume at the same place, or their collectives would not line up."""
    if dist.world_size == 1:
        return
    position = torch.tensor([progress.epoch, progress.step, -progress.epoch, -progress.step], device=device)
    torch_dist.all_reduce(position, op=torch_dist.ReduceOp.MAX)
    highest, lowest = position[:2].tolist(), (-position[2:]).tolist()
    if highest != lowest:
        raise RuntimeError(
            f"ranks start at different (epoch, step): from {lowest} to {highest}; train.checkpoint_dir must be "
            "on storage every rank sees"
        )


@torch.inference_mode()
def _predict(net: TabularNet, codes: torch.Tensor, numbers: torch.Tensor, rows: torch.Tensor, device) -> np.ndarray:
    net.eval()
    parts = [torch.sigmoid(net(codes[r].to(device), numbers[r].to(device)).float()) for r in rows.split(PREDICT_CHUNK)]
    return torch.cat(parts).cpu().numpy().astype(np.float64)


@dataclass
class _Progress:
    """Where the run is and what it has found so far: everything a checkpoint holds besides the
    model, optimizer and schedule state."""

    epoch: int = 0  # the epoch under way
    step: int = 0  # its steps done
    epoch_loss: float = 0.0  # summed over those steps and every rank
    best_epoch: int = -1
    best_auc: float = float("-inf")
    best_weights: dict | None = None
    history: list[dict] = field(default_factory=list)

    def add_steps(self, step: int, loss: float) -> None:
        self.step, self.epoch_loss = step, self.epoch_loss + loss

    def end_epoch(self, metrics: dict[str, float], net: TabularNet) -> None:
        self.history.append({"epoch": self.epoch, **metrics})
        if metrics["val_roc_auc"] > self.best_auc:
            self.best_epoch, self.best_auc = self.epoch, metrics["val_roc_auc"]
            self.best_weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        self.epoch, self.step, self.epoch_loss = self.epoch + 1, 0, 0.0

    def save(self, path: Path, fingerprint: dict, net: TabularNet, optimizer, schedule) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "fingerprint": fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "epoch_loss": self.epoch_loss,
            "best_epoch": self.best_epoch,
            "best_auc": self.best_auc,
            "best_weights": self.best_weights,
            "history": self.history,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
        }
        with atomic_path(path) as temporary:
            torch.save(payload, temporary)

    @classmethod
    def restore(cls, path: Path, fingerprint: dict, net: TabularNet, optimizer, schedule) -> "_Progress":
        payload = torch.load(path, weights_only=True, map_location="cpu")
        written_by = payload.get("fingerprint") or {}
        if written_by != fingerprint:
            differs = sorted(k for k in fingerprint.keys() | written_by.keys() if written_by.get(k) != fingerprint.get(k))
            raise ValueError(
                f"{path} is the checkpoint of a different run (differs in {differs}); delete it or set another "
                "train.checkpoint_dir"
            )
        net.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
        return cls(
            payload["epoch"], payload["step"], payload["epoch_loss"], payload["best_epoch"], payload["best_auc"],
            payload["best_weights"], payload["history"],
        )
