"""Windows judged before their labels arrived: which lack labelled performance, and which were re-evaluated.

A drift run over the inference log whose window has fewer than ``policy.min_labelled_rows``
labelled rows cannot judge the served model's labelled performance. When ``performance`` is one of
the policy's signals (:func:`awaits_labels`), the drift job records the window as a
:class:`LateWindow` (its bounds, the served model's task and the reference it was compared with) in
:class:`LateLabels`, a directory of records beside the retrain ledger. Every later run looks at the
windows still ``awaiting_labels``: once the labels imported for one number ``min_labelled_rows``,
the run measures its labelled performance under the recorded task and hands the figures to the
same policy as drift (:func:`~kfmlops.monitoring.policy.decide` with the performance signal only:
``min_performance``, cool-down, daily cap, and the ledger under :func:`late_window_id`, so a
window's late-label retrain is claimed once however often the job runs); the record is then
marked ``evaluated``, with the figures and the decision, and never evaluated again, whatever
labels arrive later. A window still short of labels ``policy.label_wait_hours`` after it was
judged is marked ``expired``. A run that may not submit (``--dry-run``, ``trigger.submitter:
none``) leaves a window whose policy fired awaiting, so a later run that can submit still does.

Records are created once (a retried run of the same window keeps the first record) and replaced
atomically (:class:`~kfmlops.monitoring.records.Records`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfmlops.monitoring.config import PolicyConfig
from kfmlops.monitoring.policy import window_id
from kfmlops.monitoring.records import Records

AWAITING, EVALUATED, EXPIRED = "awaiting_labels", "evaluated", "expired"
DIRECTORY = "late-labels"


@dataclass(frozen=True)
class LateWindow:
    """A window of the log judged without enough labels, and what became of it."""

    window_id: str  # the drift window's id
    model: str
    start: str  # ISO times, the window's [start, end)
    end: str
    task: dict[str, Any]  # the served model's task (Task.to_json())
    reference_uri: str  # the served version's training data the window was compared with
    judged_at: float  # epoch seconds
    labelled_rows: int  # when judged; when evaluated, the rows evaluated
    status: str = AWAITING
    evaluated_at: float | None = None
    performance: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None

    @property
    def identity(self) -> dict[str, str]:
        return {"model": self.model, "start": self.start, "end": self.end}


class LateLabels(Records[LateWindow]):
    """The :class:`LateWindow` records of every model, in ``directory``."""

    def __init__(self, directory: str | Path):
        super().__init__(directory, LateWindow)

    def awaiting(self, model: str) -> list[LateWindow]:
        """``model``'s windows still awaiting labels, oldest first."""
        return sorted((w for w in self.all() if w.model == model and w.status == AWAITING), key=lambda w: w.start)


def awaits_labels(policy: PolicyConfig, from_log: bool, judged: bool, labelled_rows: int) -> bool:
    """Whether a judged window is recorded to be re-evaluated when its labels arrive: a window of
    the log (a dataset given instead carries its labels already) with fewer labelled rows than the
    performance signal needs, under a policy that has that signal."""
    return from_log and judged and "performance" in policy.signals and labelled_rows < policy.min_labelled_rows


def late_window_id(identity: dict[str, Any]) -> str:
    """The ledger id of a window's late-label evaluation: distinct from the window's own (drift) id,
    so a window that already retrained on drift can still be judged on its labels, once."""
    return window_id({**identity, "evaluation": "labelled_performance"})


def expired(window: LateWindow, policy: PolicyConfig, now: float) -> bool:
    return now - window.judged_at > policy.label_wait_hours * 3600
