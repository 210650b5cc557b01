"""The glue every KFP component repeats, in one place: a component body is ``with step(...) as s:``.

:func:`step` parses the settings, refuses any URI outside the residency policy before anything
is read, points MLflow at the configured store, and marks the pipeline's MLflow run FAILED (with
the error) if the body raises. The :class:`Step` it yields writes JSON/HTML artifacts, logs
figures to both the KFP ``Metrics`` artifact and the MLflow run, and records gate verdicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfmlops.config import Settings
from kfmlops.residency import ResidencyVerdict, enforce, residency_record
from kfmlops.tracking import failed_on_error, log_to_run, tracking_uri, use


@dataclass
class Step:
    """One component run: its parsed settings, the MLflow run it records into, residency verdicts."""

    settings: Settings
    run_id: str | None
    verdicts: list[ResidencyVerdict] = field(default_factory=list)

    def enforce(self, **locations: Any) -> None:
        """Residency for locations known only once the settings are parsed or MLflow is pointed at the
        store (a checkpoint folder, the run's artifact store): refused before the body uses them."""
        self.verdicts += enforce(locations, self.settings.residency)

    def residency_record(self) -> dict[str, Any]:
        """The policy and every verdict of this step, for a provenance record."""
        return residency_record(self.settings.residency, self.verdicts)

    def write_json(self, artifact: Any, document: Any, **metadata: Any) -> None:
        """``document`` as indented JSON at the artifact's path; ``metadata`` onto the artifact."""
        Path(artifact.path).write_text(json.dumps(document, indent=1, default=str))
        artifact.metadata.update(metadata)

    def write_html(self, artifact: Any, html: str) -> None:
        Path(artifact.path).write_text(html)

    def log(
        self,
        *,
        kfp_metrics: Any = None,
        metrics: dict[str, float] | None = None,
        prefix: str = "",
        params: dict[str, object] | None = None,
        documents: dict[str, object] | None = None,
        texts: dict[str, str] | None = None,
        gate: tuple[str, bool] | None = None,
    ) -> None:
        """``metrics`` to the KFP Metrics artifact (as named) and to the MLflow run (``prefix`` + name);
        ``documents`` (JSON) and ``texts`` to the run's artifacts by path; ``gate=(name, passed)`` tags the
        run with the gate's verdict."""
        from kfmlops.register import gate_tags

        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        if kfp_metrics is not None:
            for name, value in metrics.items():
                kfp_metrics.log_metric(name, value)
        if self.run_id:
            log_to_run(self.settings.mlflow, self.run_id, metrics={prefix + k: v for k, v in metrics.items()},
                       params=params, documents=documents, texts=texts, tags=gate_tags(*gate) if gate else None)


@contextmanager
def step(settings: dict, run_id: str | None = None, *, read: Any = (), write: Any = (), **locations: Any) -> Iterator[Step]:
    """Parse ``settings``, enforce residency on ``read``/``write`` (and any named ``locations``) and the
    MLflow store, point MLflow at the store, and record a failure of the body on ``run_id``."""
    cfg = Settings.parse(settings)

    def body() -> Step:
        verdicts = enforce({"read": read, "write": write, "mlflow": tracking_uri(cfg.mlflow), **locations},
                           cfg.residency)
        use(cfg.mlflow)
        return Step(cfg, run_id, verdicts)

    if run_id is None:
        yield body()
        return
    with failed_on_error(cfg.mlflow, run_id):
        yield body()
