"""Compaction of the inference log: small files of closed hours merged without losing or
duplicating a row, beside concurrent writers and readers, and after a kill -9 at every step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kfmlops.monitoring.compaction import PAUSE_ENV, compact
from kfmlops.monitoring.config import CompactionConfig, InferenceLogConfig
from kfmlops.monitoring.store import (
    COMPACTED_SUFFIX,
    MANIFEST_PREFIX,
    InferenceLog,
    PredictionRecord,
    committed_request_ids,
    read_window,
    window_files,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=5, minutes=30)  # hours 09..12 are closed, 14 is the current one
CLOSED = (T0, T0 + timedelta(hours=4))
SMALL = CompactionConfig(target_file_bytes=1 << 20)


def _records(writer: str, n: int, hour: int, start: int = 0, float_inputs: bool = False,
             base: datetime = T0) -> list[PredictionRecord]:
    return [PredictionRecord(model="m", request_id=f"{writer}-{i}", output=i / (n + start + 1),
                             inputs={"x": float(i) if float_inputs else i, "g": "a" if i % 2 else "b"},
                             timestamp=base + timedelta(hours=hour, seconds=i % 3600))
            for i in range(start, start + n)]


def _commit_small_files(root: Path, files: int, rows: int, hours: int = 3, base: datetime = T0) -> int:
    """``files`` commits of ``rows`` rows, spread over ``hours`` hours from ``base``; returns the rows."""
    with InferenceLog(InferenceLogConfig(root=str(root), flush_interval_s=3600)) as log:
        for k in range(files):
            log.append(_records(f"f{k}", rows, hour=k % hours, float_inputs=k % 3 == 0, base=base))
            log.flush()
    return files * rows


def _ids(root: Path, start=CLOSED[0], end=CLOSED[1]) -> list[str]:
    return read_window(root, "m", start, end)["request_id"].to_pylist()


def _exact(root: Path, expected: int, start=CLOSED[0], end=CLOSED[1]) -> None:
    ids = _ids(root, start, end)
    assert len(ids) == len(set(ids)) == expected


def test_compaction_merges_small_files_of_closed_hours(tmp_path):
    rows = _commit_small_files(tmp_path, 30, 40)
    with InferenceLog(InferenceLogConfig(root=str(tmp_path))) as log:  # the current hour: left alone
        log.append(_records("now", 10, hour=5))
    before = read_window(tmp_path, "m", *CLOSED).sort_by([("request_id", "ascending"), ("row_index", "ascending")])
    assert len(window_files(tmp_path, "m", *CLOSED)) == 30

    done = compact(tmp_path, SMALL, now=NOW)
    assert (done.hours, done.inputs, done.outputs, done.rows, done.recovered) == (3, 30, 3, rows, 0)
    files = window_files(tmp_path, "m", *CLOSED)
    assert len(files) == 3 and all(f.name.endswith(COMPACTED_SUFFIX) for f in files)
    after = read_window(tmp_path, "m", *CLOSED).sort_by([("request_id", "ascending"), ("row_index", "ascending")])
    assert after.num_rows == rows and after["input.x"].type == "double"  # int and float inputs unified
    assert after.select(before.column_names).cast(before.schema).equals(before)
    assert len(window_files(tmp_path, "m", T0 + timedelta(hours=5), NOW)) == 1  # the current hour untouched
    assert compact(tmp_path, SMALL, now=NOW).outputs == 0  # nothing left to merge
    assert not list(tmp_path.rglob(f"{MANIFEST_PREFIX}*")) and not list(tmp_path.rglob(".*.tmp"))
    # a file at the target size stays as it is; the sink's replay still finds every request id
    assert compact(tmp_path, CompactionConfig(target_file_bytes=1024), now=NOW).outputs == 0
    assert len(committed_request_ids(tmp_path, 0)) == rows // 40 * 40 + 10


def test_concurrent_writes_and_reads_while_compacting(tmp_path):
    """Writers commit to the current hour and, late, to closed hours; readers count the closed
    hours throughout; compaction runs over and over: every row is counted once at every read."""
    stop = threading.Event()
    committed = {"late": 0, "reads": 0}
    lock = threading.Lock()
    failures: list[str] = []

    def write(name: str, hour: int) -> None:
        with InferenceLog(InferenceLogConfig(root=str(tmp_path), flush_interval_s=3600)) as log:
            for i in range(0, 40 * 25, 25):
                log.append(_records(name, 25, hour=hour, start=i))
                log.flush()
                with lock:
                    committed[name] = i + 25
                time.sleep(0.01)

    def read() -> None:
        while not stop.is_set():
            with lock:
                low = committed["late"]
            try:
                ids = _ids(tmp_path)
            except Exception as exc:  # noqa: BLE001 (reported below)
                failures.append(repr(exc))
                return
            with lock:
                high = committed["late"]
                committed["reads"] += 1
            if len(ids) != len(set(ids)) or not base + low <= len(ids) <= base + high:
                failures.append(f"{len(ids)} rows, {len(set(ids))} distinct, expected {base + low}..{base + high}")

    base = _commit_small_files(tmp_path, 24, 30)
    writers = [threading.Thread(target=write, args=("current", 5)), threading.Thread(target=write, args=("late", 1))]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in writers + readers:
        t.start()
    merged = runs = 0
    while any(t.is_alive() for t in writers) or runs < 3:
        merged += compact(tmp_path, SMALL, now=NOW).inputs
        runs += 1
        time.sleep(0.02)
    stop.set()
    for t in writers + readers:
        t.join()
    assert failures == []
    assert merged > 24 and committed["reads"] > 3  # late files were merged too, while they arrived and were read
    _exact(tmp_path, base + committed["late"])
    current = _ids(tmp_path, T0 + timedelta(hours=5), T0 + timedelta(hours=6))
    assert len(current) == len(set(current)) == committed["current"] == 1000


_COMPACT = [sys.executable, "-m", "kfmlops.cli", "sink", "compact", "--root"]


@pytest.mark.parametrize("step", ["manifest", "temporary", "output", "input", "inputs"])
def test_kill_at_any_step_loses_and_duplicates_nothing(tmp_path, step):
    base = (datetime.now(timezone.utc) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    window = (base, base + timedelta(hours=1))  # a closed hour by the real clock, which the command uses
    root = tmp_path / "log"
    rows = _commit_small_files(root, 12, 50, hours=1, base=base)
    hour = window_files(root, "m", *window)[0].parent
    env = {**os.environ, PAUSE_ENV: step, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([*_COMPACT, str(root)], env=env, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if f"compaction paused at {step}" in line:
            break
    else:
        pytest.fail(f"the compactor ended without pausing at {step}: exit {process.wait()}")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()

    assert len(list(hour.glob(f"{MANIFEST_PREFIX}*.json"))) == 1  # killed mid-way
    _exact(root, rows, *window)  # readers count either the inputs or the output, never both
    assert len(committed_request_ids(root, 0)) == rows

    done = compact(root, SMALL)
    assert done.recovered == 1 and done.inputs == (0 if step in ("output", "input", "inputs") else 12)
    _exact(root, rows, *window)
    assert [p.name.endswith(COMPACTED_SUFFIX) for p in hour.glob("*.parquet")] == [True]
    assert not list(hour.glob(f"{MANIFEST_PREFIX}*")) and not list(hour.glob(".*"))
