"""What ``kfp.local`` prints, sorted into one log file per task and one progress line per step.

``kfp.local`` streams every task's output, and its own log lines, to ``sys.stdout``. While a
pipeline runs, :class:`TaskLogs` stands in for ``sys.stdout`` and ``sys.stderr``: each line goes to
``<log_dir>/<task>.log`` (lines outside a task to ``pipeline.log``), and when a task finishes one
line (name, status, seconds) goes to ``progress``. ``echo`` (``--verbose``) also gets every line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r" - INFO - Executing task '([^']+)'")
_FINISHED = re.compile(r" - (?:INFO|ERROR) - Task '([^']+)' finished with status (\w+)")
# The last line of a Python traceback: "pkg.module.SomeError: what went wrong".
_KFP_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - ")  # kfp.local's own lines: "17:36:41.539 - ERROR - ..."
_EXCEPTION = re.compile(r"^\s*(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Refused|Denied)): (.+)$")


@dataclass
class Step:
    """One task of the run: its name, status (RUNNING, SUCCESS, FAILURE), seconds and log file."""

    name: str
    log: Path
    started: float = field(default_factory=time.monotonic)
    status: str = "RUNNING"
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2), "log": str(self.log)}


def failure_reason(log: Path, *, max_detail_lines: int = 5) -> str | None:
    """The last exception a task's log records, as one line ``SomeError: message``; the lines of a
    multi-line message follow, joined with "; " (at most ``max_detail_lines``). None when there is none."""
    if not log.is_file():
        return None
    lines = log.read_text(errors="replace").splitlines()
    found = None
    for i, line in enumerate(lines):
        if match := _EXCEPTION.match(line):
            found = (i, f"{match[1]}: {match[2].strip()}")
    if found is None:
        return None
    start, reason = found
    detail = []
    for line in lines[start + 1:start + 1 + max_detail_lines]:
        if not line.strip() or _KFP_LINE.match(line):
            break
        detail.append(line.strip().lstrip("- "))
    return "; ".join([reason, *detail])


class TaskLogs(io.TextIOBase):
    """A text stream that routes ``kfp.local``'s output into per-task log files (see the module docstring)."""

    def __init__(self, log_dir: Path, *, progress: TextIO | None, echo: TextIO | None = None) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.steps: list[Step] = []
        self._progress, self._echo = progress, echo
        self._pipeline = open(log_dir / "pipeline.log", "a", encoding="utf-8")
        self._current: TextIO | None = None
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._echo is not None:
            self._echo.write(text)
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._line(line + "\n")
        return len(text)

    def flush(self) -> None:
        for stream in (self._current, self._pipeline, self._echo):
            if stream is not None and not stream.closed:
                stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        if self._pending:
            self._line(self._pending + "\n")
            self._pending = ""
        super().close()
        if self._current is not None:
            self._current.close()
        self._pipeline.close()

    @contextlib.contextmanager
    def capture(self) -> Iterator[TaskLogs]:
        """Route ``sys.stdout``, ``sys.stderr`` and the root logger here for the duration; close after."""
        root = logging.getLogger()
        handlers = root.handlers[:]
        root.handlers = [logging.StreamHandler(self)]
        try:
            with contextlib.redirect_stdout(self), contextlib.redirect_stderr(self):
                yield self
        finally:
            root.handlers = handlers
            self.close()

    def failed(self) -> Step | None:
        return next((s for s in self.steps if s.status == "FAILURE"), None)

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        if match := _EXECUTING.search(plain):
            self._start(match[1])
        (self._current or self._pipeline).write(plain)
        if (match := _FINISHED.search(plain)) and self.steps and self.steps[-1].name == match[1]:
            self._finish(self.steps[-1], match[2])

    def _start(self, name: str) -> None:
        if self._current is not None:
            self._current.close()
        taken = sum(s.name == name for s in self.steps)
        log = self.log_dir / (f"{name}.log" if not taken else f"{name}-{taken + 1}.log")
        self.steps.append(Step(name, log))
        self._current = open(log, "w", encoding="utf-8")

    def _finish(self, step: Step, status: str) -> None:
        step.status, step.seconds = status, time.monotonic() - step.started
        assert self._current is not None
        self._current.close()
        self._current = None
        if self._progress is not None:
            self._progress.write(f"  {step.name:<12} {step.status:<8} {step.seconds:6.1f} s\n")
            self._progress.flush()
