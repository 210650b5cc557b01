"""Compaction of the inference log: the small files of closed hours merged into larger ones, with
no row lost or counted twice, whatever is killed when.

Consumes the log's root and a :class:`~kfmlops.monitoring.config.CompactionConfig`; produces, in
every hour partition that ended at least ``settle_minutes`` ago, files of up to
``target_file_bytes`` in place of the smaller ones, and a :class:`Compaction` saying what it did.
New rows may keep arriving in any hour (the current one, or a closed one by a late event): a file
committed after the compactor listed the hour is simply not among its inputs.

One hour is compacted under an exclusive ``flock`` on its ``_compaction.lock`` (a second compactor,
another sink replica, skips the hour). After recovering what a killed compactor left (below), the
committed files smaller than the target are grouped (each group at most the target), and each
group of two or more goes through these steps, named as ``KFMLOPS_COMPACTION_PAUSE_AT`` names them:

1. ``manifest``: ``_compaction-<uuid>.json`` lists the inputs and the output's name; written to a
   temporary file, fsync'd and renamed (atomic);
2. ``temporary``: the inputs are streamed, one at a time under their unified schema, into the
   output under a dot-prefixed temporary name, which is fsync'd;
3. ``output``: it is renamed to ``part-<newest input's ns>-<uuid>.compacted.parquet`` (the name
   the sink's replay reads commit times from) and the directory fsync'd: the output is published;
4. ``input`` (after the first) and ``inputs`` (after the last): the inputs are removed, the
   directory fsync'd;
5. the manifest is removed.

The invariant readers rely on (:func:`kfmlops.monitoring.store.hour_files`): a manifest lists the
output's inputs from before the output is visible until after the last input is gone, and a
reader leaves out the inputs of every manifest whose output it sees. So between steps 3 and 5
readers count the output and skip the inputs still there; before step 3 they count the inputs;
a reader whose listing changed while it read reads again
(:func:`~kfmlops.monitoring.store.read_consistently`). Recovery, the first thing the next
compaction of the hour does: a manifest whose output exists is finished (steps 4 and 5); one
whose output does not is rolled back (its temporary and the manifest removed, the inputs kept).

``KFMLOPS_COMPACTION_PAUSE_AT=<step>`` makes the compactor stop after that step, say so on stderr
and wait until it is killed: the crash tests kill it at each step.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kfmlops.durable import atomic_path, fsync_path, write_text_atomically
from kfmlops.monitoring.config import CompactionConfig
from kfmlops.monitoring.store import COMPACTED_SUFFIX, MANIFEST_PREFIX, PREDICTIONS, hour_files

log = logging.getLogger(__name__)

PAUSE_ENV = "KFMLOPS_COMPACTION_PAUSE_AT"
LOCK = "_compaction.lock"


@dataclass(frozen=True)
class Compaction:
    """What one compaction did: hour partitions compacted, files merged and written, their rows,
    leftovers of killed compactors recovered, and hours skipped because another compactor held them."""

    hours: int = 0
    inputs: int = 0
    outputs: int = 0
    rows: int = 0
    recovered: int = 0
    busy: int = 0

    def __add__(self, other: "Compaction") -> "Compaction":
        return Compaction(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))


def compact(root: str | os.PathLike, config: CompactionConfig, compression: str = "zstd",
            now: datetime | None = None) -> Compaction:
    """Compact every closed hour partition of every model under ``root`` (see the module docstring)."""
    now = now or datetime.now(timezone.utc)
    done = Compaction()
    for hour_dir in sorted((Path(root) / PREDICTIONS).glob("model=*/hour=*")):
        if _closed(hour_dir, now, config.settle_minutes):
            done += compact_hour(hour_dir, config.target_file_bytes, compression)
    return done


def compact_hour(hour_dir: Path, target_bytes: int, compression: str = "zstd") -> Compaction:
    """Recover, then merge the small files of one hour partition, holding its lock; a partition
    whose lock another compactor holds is skipped (``busy``)."""
    with open(hour_dir / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return Compaction(busy=1)
        recovered = recover(hour_dir)
        done = Compaction(hours=1, recovered=recovered)
        for group in _groups(hour_files(hour_dir)[0], target_bytes):
            done += _merge(hour_dir, group, compression)
        return done


def recover(hour_dir: Path) -> int:
    """Finish (output published) or roll back (not published) each compaction a killed compactor
    left in ``hour_dir``; the caller holds the hour's lock. Returns how many there were."""
    for temporary in hour_dir.glob(f".{MANIFEST_PREFIX}*.tmp"):  # a manifest that was never published
        temporary.unlink(missing_ok=True)
    manifests = sorted(hour_dir.glob(f"{MANIFEST_PREFIX}*.json"))
    for path in manifests:
        manifest = json.loads(path.read_text())
        published = (hour_dir / manifest["output"]).exists()
        if published:
            _remove(hour_dir, manifest["inputs"])
        else:
            for temporary in hour_dir.glob(f".{manifest['output']}.*.tmp"):
                temporary.unlink()
        path.unlink()
        fsync_path(hour_dir)
        log.info("compaction: %s in %s %s", path.name, hour_dir, "finished" if published else "rolled back")
    return len(manifests)


def _merge(hour_dir: Path, inputs: list[Path], compression: str) -> Compaction:
    newest = max(int(p.name.split("-")[1]) for p in inputs)
    output = f"part-{newest:020d}-{uuid.uuid4().hex}{COMPACTED_SUFFIX}"
    manifest = hour_dir / f"{MANIFEST_PREFIX}{uuid.uuid4().hex}.json"
    write_text_atomically(manifest, json.dumps({"inputs": [p.name for p in inputs], "output": output}))
    _pause("manifest")
    schema = pa.unify_schemas([pq.read_schema(p) for p in inputs], promote_options="permissive").remove_metadata()
    rows = 0
    with atomic_path(hour_dir / output) as temporary:
        with pq.ParquetWriter(temporary, schema, compression=compression) as writer:
            for path in inputs:
                table = _conform(pq.read_table(path), schema)
                writer.write_table(table)
                rows += table.num_rows
        _pause("temporary")
    _pause("output")
    _remove(hour_dir, [p.name for p in inputs])
    _pause("inputs")
    manifest.unlink()
    fsync_path(hour_dir)
    return Compaction(inputs=len(inputs), outputs=1, rows=rows)


def _remove(hour_dir: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (hour_dir / name).unlink(missing_ok=True)
        if i == 0:
            _pause("input")
    fsync_path(hour_dir)


def _groups(files: list[Path], target_bytes: int) -> list[list[Path]]:
    """The files smaller than ``target_bytes`` in groups of at most that many bytes, in commit
    order; only groups of two or more files."""
    groups: list[list[Path]] = []
    group, size = [], 0
    for path in files:
        try:
            bytes_ = path.stat().st_size
        except FileNotFoundError:
            continue
        if bytes_ >= target_bytes:
            continue
        if group and size + bytes_ > target_bytes:
            groups.append(group)
            group, size = [], 0
        group.append(path)
        size += bytes_
    groups.append(group)
    return [g for g in groups if len(g) > 1]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` under ``schema``: its columns cast to the unified types, the ones it lacks null."""
    columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _closed(hour_dir: Path, now: datetime, settle_minutes: float) -> bool:
    try:
        start = datetime.strptime(hour_dir.name.removeprefix("hour="), "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
    except ValueError:
        return False
    return start + timedelta(hours=1, minutes=settle_minutes) <= now


def _pause(step: str) -> None:
    if os.environ.get(PAUSE_ENV) == step:
        print(f"compaction paused at {step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
