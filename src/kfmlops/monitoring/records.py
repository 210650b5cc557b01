"""Durable JSON records in a directory, one file per key: created exclusively, replaced atomically.

Consumes a directory (local disk or mounted volume) and a dataclass type; produces and reads its
instances. A record is created by writing a temporary file, fsync'ing it and hard-linking it to its
final name, which fails when the name exists: two processes creating the same key admit one, and
a crash never leaves half a record. A replacement is written the same way and renamed over the
record. The retrain :class:`~kfmlops.monitoring.policy.Ledger` and the
:class:`~kfmlops.monitoring.late_labels.LateLabels` state are such directories.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Generic, TypeVar

from kfmlops.durable import fsync_path

R = TypeVar("R")


class Records(Generic[R]):
    """Records of type ``kind`` (a dataclass) in ``directory``, keyed by their ``key`` field."""

    def __init__(self, directory: str | os.PathLike, kind: type[R], key: str = "window_id"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kind, self.key = kind, key

    def get(self, key: str) -> R | None:
        try:
            return self.kind(**json.loads(self._path(key).read_text()))
        except FileNotFoundError:
            return None

    def all(self) -> list[R]:
        found = []
        for path in self.directory.glob("*.json"):
            try:
                found.append(self.kind(**json.loads(path.read_text())))
            except FileNotFoundError:
                continue
        return found

    def create(self, record: R) -> bool:
        """Write ``record`` unless its key has one; True when this call created it."""
        temporary = self._write_temporary(record)
        try:
            os.link(temporary, self._path(self._key(record)))
        except FileExistsError:
            return False
        finally:
            temporary.unlink()
        fsync_path(self.directory)
        return True

    def replace(self, record: R) -> None:
        """Atomically replace the record of ``record``'s key."""
        os.replace(self._write_temporary(record), self._path(self._key(record)))
        fsync_path(self.directory)

    def _key(self, record: R) -> str:
        return getattr(record, self.key)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def _write_temporary(self, record: R) -> Path:
        temporary = self.directory / f".{self._key(record)}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "w") as handle:
            json.dump(asdict(record), handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        return temporary
