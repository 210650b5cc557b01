"""The ``tabular-net`` training loop: one code path for a single process and for N DDP ranks.

Consumes the train split (a DataFrame with canonical labels), its :class:`~kfmlops.tasks.Task`
and a :class:`~kfmlops.config.TrainConfig`; produces a :class:`~kfmlops.train.model.ModelBundle`
directory (written by rank 0) and a :class:`~kfmlops.train.common.TrainResult`.

- **Objective per task.** Multiclass: K logits and cross-entropy; binary: one logit and binary
  cross-entropy; regression: the target standardised on the fit rows (mean and std kept in the
  bundle) and squared error. With ``class_weight: balanced`` each row's loss is weighted by its
  class's inverse frequency (:func:`~kfmlops.train.common.sample_weights`), so a rare class is not
  traded for a constant prediction.
- **Validation and early stopping.** A seeded validation slice (stratified for classification)
  is held out. After every epoch the validation loss (the same weighted objective) is measured;
  training stops once ``patience`` epochs have passed without a better one and at least
  ``min_steps`` optimizer steps are done, or after ``epochs`` epochs, and the best epoch's
  weights are kept.
- **Sizes that fit the data.** The batch is ``batch_size`` rows, but at most an eighth of the
  fit rows (so an epoch has at least 8 steps) and never fewer than 32 (nor more than the fit rows).
  The peak learning rate follows that batch (``lr_scaling``); it is reached by a linear warm-up
  over the first :func:`warmup_steps` steps, then held, and halved after every
  :func:`plateau_epochs` epochs in a row without a better validation loss.
- **Batches.** Every epoch, every rank draws the same seeded permutation of the fit rows, cuts it
  into global batches and takes its slice of each (``batch[rank::world]``): a distributed sampler
  without a DataLoader. DDP averages the gradients and the loss is scaled so that the average is
  the global batch's mean, so N ranks follow one process's optimisation path.
- **Data on the device.** The encoded columns live in tensors on the training device when they fit
  (on a GPU: half its free memory), so a step is an index gather, never a host-to-device copy;
  otherwise they stay on the host and each batch is copied over.
- **GPU speed.** bf16 autocast (bf16 has float32's exponent range, so no loss scaler is needed),
  fused AdamW, optional ``torch.compile``.
- **Fault tolerance.** Rank 0 writes a checkpoint (atomic rename) after every epoch and every
  ``checkpoint_every_steps`` steps: model and optimizer state, the position (epoch, step:
  an epoch's permutation is a function of seed and epoch), the epoch's loss so far, the best weights
  and the history. Dropout is reseeded every step from (seed, epoch, step, rank), so no random state
  needs saving. A restarted run (a rerun, or ``torchrun --max-restarts``) resumes there and ends
  with the model an uninterrupted run ends with (the stopping rule is a function of the history);
  a checkpoint of a run with other settings or other data is refused.
- Rank 0 reports per-epoch metrics through ``on_epoch``; a single rank also passes its validation
  metric to ``report(epoch, value)``, and stops when it returns True (a tuner pruning the trial); its validation loss is broadcast, so
  every rank stops and decays the learning rate at the same epoch; the train loss is summed over
  all ranks.
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
import torch.nn.functional as F

from kfmlops.config import TrainConfig
from kfmlops.durable import atomic_path
from kfmlops.tasks import Task
from kfmlops.train.common import (
    METRIC,
    TrainResult,
    encoded_labels,
    feature_columns,
    sample_weights,
    validation_metric,
    validation_split,
)
from kfmlops.train.model import KIND, ModelBundle, NetSpec, TabularNet, TargetScale, outputs_for, scores_from_outputs
from kfmlops.train.preprocess import Preprocessor

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
# Settings that leave the optimisation path unchanged: a checkpoint written under other values of
# these still resumes (a job restarted on fewer ranks, or on another device, carries on).
RESUMABLE_ACROSS = {"processes", "device", "checkpoint_dir", "checkpoint_every_steps", "compile", "cpu_threads"}
PREDICT_CHUNK = 65_536
MIN_BATCH = 32
MIN_STEPS_PER_EPOCH = 8


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


def pick_device(choice: str, dist: Dist) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def batch_rows(config: TrainConfig, fit_rows: int) -> int:
    """The global batch: ``batch_size``, at most ``fit_rows / 8`` but at least 32, at most ``fit_rows``."""
    return max(1, min(config.batch_size, max(MIN_BATCH, fit_rows // MIN_STEPS_PER_EPOCH), fit_rows))


def peak_learning_rate(config: TrainConfig, batch_size: int | None = None) -> float:
    """``learning_rate`` scaled from ``lr_base_batch_size`` to ``batch_size`` (default: the configured
    one) by ``lr_scaling``."""
    ratio = (batch_size or config.batch_size) / config.lr_base_batch_size
    return config.learning_rate * {"sqrt": ratio**0.5, "linear": ratio, "none": 1.0}[config.lr_scaling]


def warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """Steps of the linear learning-rate warm-up: a third of ``min_steps``, but at most a third of
    ``epochs`` epochs and 1,000 steps, and at least 1."""
    return max(1, min(config.min_steps // 3, steps_per_epoch * config.epochs // 3, 1000))


def plateau_epochs(config: TrainConfig) -> int:
    """Epochs without a better validation loss after which the learning rate halves: half the patience."""
    return max(1, config.patience // 2)


def learning_rate_at(peak: float, warmup: int, step: int, decays: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based, counted over the whole run)."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5**decays


def fit(
    frame: pd.DataFrame,
    task: Task,
    config: TrainConfig,
    model_dir: str | Path,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    report: Callable[[int, float], bool] | None = None,
    dist: Dist = Dist(),
) -> TrainResult:
    """Train on ``frame`` as rank ``dist.rank`` of ``dist.world_size`` (the process group, when
    there is more than one rank, is already initialised); rank 0 writes the bundle to ``model_dir``.
    ``report(epoch, validation metric)`` (one rank only) stops the training when it returns True."""
    if report and dist.world_size > 1:
        raise ValueError("report stops one rank's training: it needs world_size 1")
    device = pick_device(config.device, dist)
    with _cpu_threads(config.cpu_threads if device.type == "cpu" else None):
        return _fit(frame, task, config, Path(model_dir), device, on_epoch, report, dist)


def _fit(frame, task: Task, config: TrainConfig, model_dir: Path, device, on_epoch, report, dist: Dist) -> TrainResult:
    started = time.monotonic()
    features = feature_columns(frame, task.label, config.exclude_features)
    y = encoded_labels(frame, task)
    val_idx, train_idx = validation_split(y, task, config.validation_fraction, config.seed)
    n_train, n_val = len(train_idx), len(val_idx)

    pre = Preprocessor.fit(frame.iloc[train_idx], features, config.min_category_count)
    scale = TargetScale.fit(y[train_idx]) if task.kind == "regression" else TargetScale()
    spec = NetSpec.for_data(pre, config.hidden_units, config.max_embedding_dim, config.dropout, outputs_for(task))
    codes, numbers = (torch.from_numpy(a) for a in pre.transform({c: frame[c] for c in features}))
    target = torch.from_numpy(_target(task, y, scale))
    weight = torch.from_numpy(sample_weights(y, task, train_idx, config.class_weight))
    # What the data looks like to the model (fitted preprocessing, labels in order): a checkpoint
    # of a run on other data is refused.
    data_digest = hashlib.sha256(json.dumps(pre.to_json()).encode() + target.numpy().tobytes()).hexdigest()
    home = _data_home(device, codes, numbers, target, weight)
    codes, numbers, target, weight = codes.to(home), numbers.to(home), target.to(home), weight.to(home)
    train_rows, val_rows = torch.from_numpy(train_idx).to(home), torch.from_numpy(val_idx).to(home)

    torch.manual_seed(config.seed)
    net = TabularNet(spec).to(device)
    batch_size = batch_rows(config, n_train)
    steps_per_epoch = n_train // batch_size
    lr = peak_learning_rate(config, batch_size)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=lr, weight_decay=config.weight_decay, fused=device.type == "cuda"
    )
    warmup = warmup_steps(config, steps_per_epoch)

    progress = _Progress()
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_FILE if config.checkpoint_dir else None
    fingerprint = {**config.model_dump(mode="json", exclude=RESUMABLE_ACROSS), "data": data_digest, "task": task.to_json()}
    if checkpoint and checkpoint.is_file():
        progress = _Progress.restore(checkpoint, fingerprint, net, optimizer)
        log.info("train: resuming at epoch %d step %d from %s", progress.epoch, progress.step, checkpoint)
    _check_same_position(progress, dist, device)
    resumed = (progress.epoch, progress.step) if (progress.epoch, progress.step) != (0, 0) else (None, None)

    model = net
    if dist.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    row_loss = _row_loss(task)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    every = config.checkpoint_every_steps if checkpoint else None
    dropout_rng = torch.cuda.default_generators[device.index] if device.type == "cuda" else torch.default_generator
    trained, step_seconds = 0, 0.0
    metric = METRIC[task.kind]

    while progress.epoch < config.epochs and not _stopped(progress, config, steps_per_epoch):
        epoch = progress.epoch
        epoch_started = time.monotonic()
        first_step = progress.step
        model.train()
        shuffle = torch.randperm(n_train, generator=torch.Generator(home).manual_seed(config.seed + epoch), device=home)
        loss_sum = torch.zeros((), device=device)  # this rank's, since the last all-reduce
        decays = progress.lr_decays(plateau_epochs(config))
        for step in range(first_step, steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(lr, warmup, epoch * steps_per_epoch + step, decays)
            dropout_rng.manual_seed(_dropout_seed(config.seed, epoch, step, dist.rank))
            rows = train_rows[shuffle[step * batch_size : (step + 1) * batch_size]][dist.rank :: dist.world_size]
            with autocast:
                outputs = model(codes[rows].to(device), numbers[rows].to(device))
            loss = (row_loss(outputs.float(), target[rows].to(device)) * weight[rows].to(device)).sum()
            optimizer.zero_grad(set_to_none=True)
            (loss * (dist.world_size / batch_size)).backward()
            optimizer.step()
            loss_sum += loss.detach()
            if every and (step + 1) % every == 0 and step + 1 < steps_per_epoch:
                progress.add_steps(step + 1, _sum_over_ranks(loss_sum, dist))
                loss_sum.zero_()
                if dist.is_main:
                    progress.save(checkpoint, fingerprint, net, optimizer)
        progress.add_steps(steps_per_epoch, _sum_over_ranks(loss_sum, dist))  # the all-reduce waits for the GPU
        seconds = time.monotonic() - epoch_started
        trained += (steps_per_epoch - first_step) * batch_size
        step_seconds += seconds

        outputs = _predict(net, codes, numbers, val_rows, device)
        val_weight = weight[val_rows].to(device)
        val_loss = _from_rank0((row_loss(outputs, target[val_rows].to(device)) * val_weight).sum() / val_weight.sum(), dist)
        scores = scores_from_outputs(task, outputs.cpu().numpy(), scale)
        metrics = {
            "train_loss": progress.epoch_loss / (steps_per_epoch * batch_size),
            "val_loss": val_loss,
            f"val_{metric}": validation_metric(task, y[val_idx], scores),
            "epoch_seconds": time.monotonic() - epoch_started,
            "samples_per_second": (steps_per_epoch - first_step) * batch_size / seconds,
        }
        progress.end_epoch(metrics, net)
        log.info("train: epoch %d/%d %s", epoch + 1, config.epochs, {k: round(v, 4) for k, v in metrics.items()})
        if dist.is_main:
            if checkpoint:
                progress.save(checkpoint, fingerprint, net, optimizer)
            if on_epoch:
                on_epoch(epoch, metrics)
        if report and report(epoch, metrics[f"val_{metric}"]):
            break

    net.load_state_dict(progress.best_weights)
    if dist.is_main:
        ModelBundle(task, features, pre, spec, net.cpu(), scale).save(model_dir)
    if dist.world_size > 1:
        torch_dist.barrier()
    best = progress.history[progress.best_epoch]
    return TrainResult(
        trainer=KIND,
        framework="pytorch",
        task=task.kind,
        metric=metric,
        val_score=best[f"val_{metric}"],
        val_loss=best["val_loss"],
        best_iteration=progress.best_epoch,
        iterations=progress.epoch,
        train_rows=n_train,
        val_rows=n_val,
        features=features,
        model_dir=str(model_dir),
        device=str(device),
        world_size=dist.world_size,
        seconds=time.monotonic() - started,
        samples_per_second=trained / step_seconds if step_seconds else 0.0,
        resumed_from_epoch=resumed[0],
        resumed_from_step=resumed[1],
        history=progress.history,
    )


def _target(task: Task, y: np.ndarray, scale: TargetScale) -> np.ndarray:
    """What the network is trained towards: class codes (multiclass), 0/1 (binary), standardised values."""
    if task.kind == "multiclass":
        return y.astype(np.int64)
    if task.kind == "binary":
        return y.astype(np.float32)
    return ((y - scale.mean) / scale.std).astype(np.float32)


def _row_loss(task: Task) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Each row's loss, ``(outputs [n, outputs], target [n]) -> [n]``."""
    if task.kind == "multiclass":
        return lambda outputs, target: F.cross_entropy(outputs, target, reduction="none")
    if task.kind == "binary":
        return lambda outputs, target: F.binary_cross_entropy_with_logits(outputs[:, 0], target, reduction="none")
    return lambda outputs, target: (outputs[:, 0] - target) ** 2


def _stopped(progress: "_Progress", config: TrainConfig, steps_per_epoch: int) -> bool:
    """Early stopping: ``patience`` epochs without a better validation loss, once ``min_steps`` are
    done (at an epoch's end: a checkpoint from within an epoch carries on)."""
    return progress.epoch - 1 - progress.best_epoch >= config.patience and \
        progress.epoch * steps_per_epoch >= config.min_steps and progress.step == 0


def _from_rank0(value: torch.Tensor, dist: Dist) -> float:
    """Rank 0's value of a scalar: the validation loss steers early stopping and the learning rate,
    so every rank must see the same one, to the last bit."""
    if dist.world_size > 1:
        value = value.clone().reshape(1)
        torch_dist.broadcast(value, src=0)
    return float(value)


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
def _predict(net: TabularNet, codes: torch.Tensor, numbers: torch.Tensor, rows: torch.Tensor, device) -> torch.Tensor:
    """The network's outputs ``[len(rows), outputs]`` (float32, on ``device``), in eval mode."""
    net.eval()
    return torch.cat([net(codes[r].to(device), numbers[r].to(device)).float() for r in rows.split(PREDICT_CHUNK)])


@dataclass
class _Progress:
    """Where the run is and what it has found so far: everything a checkpoint holds besides the
    model and optimizer state."""

    epoch: int = 0  # the epoch under way
    step: int = 0  # its steps done
    epoch_loss: float = 0.0  # summed over those steps and every rank
    best_epoch: int = -1
    best_loss: float = float("inf")
    best_weights: dict | None = None
    history: list[dict] = field(default_factory=list)

    def add_steps(self, step: int, loss: float) -> None:
        self.step, self.epoch_loss = step, self.epoch_loss + loss

    def end_epoch(self, metrics: dict[str, float], net: TabularNet) -> None:
        self.history.append({"epoch": self.epoch, **metrics})
        if metrics["val_loss"] < self.best_loss or self.best_weights is None:
            self.best_epoch, self.best_loss = self.epoch, metrics["val_loss"]
            self.best_weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        self.epoch, self.step, self.epoch_loss = self.epoch + 1, 0, 0.0

    def lr_decays(self, wait: int) -> int:
        """How many times the learning rate has been halved: once every ``wait`` epochs in a row
        without a better validation loss (a function of the history, so a resumed run agrees)."""
        decays, best, since = 0, float("inf"), 0
        for epoch in self.history:
            if epoch["val_loss"] < best:
                best, since = epoch["val_loss"], 0
                continue
            since += 1
            if since >= wait:
                decays, since = decays + 1, 0
        return decays

    def save(self, path: Path, fingerprint: dict, net: TabularNet, optimizer) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "fingerprint": fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "epoch_loss": self.epoch_loss,
            "best_epoch": self.best_epoch,
            "best_loss": self.best_loss,
            "best_weights": self.best_weights,
            "history": self.history,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
        }
        with atomic_path(path) as temporary:
            torch.save(payload, temporary)

    @classmethod
    def restore(cls, path: Path, fingerprint: dict, net: TabularNet, optimizer) -> "_Progress":
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
        return cls(
            payload["epoch"], payload["step"], payload["epoch_loss"], payload["best_epoch"], payload["best_loss"],
            payload["best_weights"], payload["history"],
        )
